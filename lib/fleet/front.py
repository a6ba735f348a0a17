"""From flags to a rollout and back to the operator: the plan from the flags (or, on --resume, from the
fleet record), the local engine's run, and the recap. tasks.py stays a thin front over this."""

from __future__ import annotations

import resource
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lib.flags import FlagError, number
from lib.fleet.hostrun import HostRunner
from lib.fleet.local import LocalRollout, Waiting
from lib.fleet.plan import (
    NO_SITE,
    Between,
    Budget,
    RolloutPlan,
    in_flight_bound,
    parse_budget,
    parse_waves,
    rollout_plan,
    select,
    site_of,
)
from lib.fleet.record import FleetRecord, FleetState, HostEntry, load, new_fleet_id
from lib.inventory.load import LoadedHost


@dataclass(frozen=True)
class RolloutFlags:
    """The rollout's own flags as the operator gave them (None: not given)."""

    host: str | None = None
    all_: bool = False
    site: str | None = None
    waves: str | None = None
    max_fail: str | None = None
    per_site: str | None = None
    pause: bool = False
    soak: str | None = None

    def given(self) -> list[str]:
        shown = {"host": self.host, "all": self.all_, "site": self.site, "waves": self.waves,
                 "max-fail": self.max_fail, "per-site": self.per_site, "pause": self.pause, "soak": self.soak}
        return [f"--{k}" for k, v in shown.items() if v not in (None, False)]


def sites_of(hosts: Mapping[str, LoadedHost]) -> dict[str, str | None]:
    return {name: loaded.host.site for name, loaded in hosts.items()}


def names_of(host: str | None) -> list[str] | None:
    return [h.strip() for h in host.split(",") if h.strip()] if host is not None else None


def plan_from_flags(sites: Mapping[str, str | None], flags: RolloutFlags) -> RolloutPlan:
    chosen = select(sites, names_of(flags.host), flags.all_, flags.site)
    per_site = number("per-site", flags.per_site or "0", low=0, high=100_000)
    soak = number("soak", flags.soak or "0", low=0, high=86_400)
    if per_site != int(per_site):
        raise FlagError(f"--per-site={flags.per_site}: a whole number of hosts")
    return rollout_plan(sites, chosen, parse_waves(flags.waves or ""), parse_budget(flags.max_fail or "0"),
                        int(per_site), Between(pause=flags.pause, soak=soak))


def new_state(plan: RolloutPlan, runbook: str, engine: str) -> FleetState:
    run_id = new_fleet_id()
    hosts = {h: HostEntry(plan.wave_of(h), site_of(plan.sites, h)) for h in plan.hosts}
    return FleetState(run_id, runbook, engine, [list(w) for w in plan.waves], str(plan.budget.size), plan.per_site,
                      plan.between.pause, plan.between.soak, hosts, resume=resume_command(run_id, engine))


def resume_command(run_id: str, engine: str = "local") -> str:
    shown = "" if engine == "local" else f" --engine={engine}"
    return f"invoke fleet.provision{shown} --resume --run={run_id}"


def resumed(runs_dir: Path, run_id: str | None, flags: RolloutFlags) -> tuple[FleetState, RolloutPlan]:
    """The fleet run to continue, with its own plan: verified hosts stay, the rest runs again."""
    if flags.given():
        raise FlagError(f"--resume continues a fleet run with its own plan; leave out {', '.join(flags.given())}")
    state = load(runs_dir, run_id)
    for entry in state.hosts.values():
        if entry.outcome != "verified":
            entry.outcome = "pending"
    sites = {h: (None if e.site == NO_SITE else e.site) for h, e in state.hosts.items()}
    order = [h for wave in state.waves for h in wave]
    plan = RolloutPlan(tuple(order), sites, tuple(tuple(w) for w in state.waves), Budget(parse_budget(state.max_fail)),
                       state.per_site, Between(pause=state.pause, soak=state.soak))
    state.state, state.reason = "running", ""
    return state, plan


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_local(plan: RolloutPlan, state: FleetState, hosts: Mapping[str, LoadedHost], runner: HostRunner,
              runs_dir: Path, *, say: Callable[[str], None], parallel: int = 0, resume: bool = False,
              poll: float = 0.5, started: Callable[[LocalRollout], None] = lambda _r: None) -> FleetRecord:
    """Run (or continue) the rollout on this control node; the record says how it ended."""
    missing = sorted(set(plan.hosts) - set(hosts))
    if missing:
        raise FlagError(f"hosts of fleet run {state.run_id} are no longer in the inventory: {', '.join(missing)}; "
                        "nothing was done")
    record = FleetRecord(runs_dir, state)
    slots = in_flight_bound(fd_limit(), parallel)
    rollout = LocalRollout(plan, hosts, runner, record, slots=slots, say=say,
                           waiting=Waiting(threading.Event(), poll), resume=resume)
    started(rollout)
    say(f"fleet run {state.run_id}: {len(plan.hosts)} hosts, {len(plan.waves)} waves, at most {slots} at once; "
        f"record {record.file}")
    rollout.run()
    return record
