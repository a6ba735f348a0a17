"""A rollout's world: N real sshd hypervisors over tuned sysroots (harness/fanout.py), each test on a
copy of their hosts/ files, and the fleet's record read back.

The runbook is runbooks/hypervisor.yaml (bios.check and host.tune, each applied then verified): the
sysroots are already tuned, so a good host verifies without a change, and a host whose sysroot has
another topology fails bios.check with exit 3, as a real mismatched box would.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lib.fleet.front import RolloutFlags, new_state, plan_from_flags, resumed, run_local, sites_of
from lib.fleet.hostrun import HostRunner
from lib.fleet.local import LocalRollout
from lib.fleet.record import FleetRecord
from lib.inventory.load import load_inventory
from lib.runbook import Runbook, load_runbook
from lib.steps.registry import REGISTRY
from tests.harness.fanout import TUNED, write_fleet
from tests.harness.sshd import SshdFarm, SshHost, start_hosts
from tests.harness.world import FAST
from tests.inventory_helpers import REPO

# One socket of 36 cores where the inventory says two of 18: bios.check fails (exit 3), nothing changes.
MISMATCHED = replace(TUNED, sockets=1, cores_per_socket=36)


def hypervisor_book() -> Runbook:
    return load_runbook(REPO / "runbooks" / "hypervisor.yaml", REGISTRY)


@dataclass
class FleetWorld:
    farm: SshdFarm
    ssh: dict[str, SshHost]  # inventory name -> its sshd
    template: Path  # hosts/*.yaml of every host; each test works on a copy

    @property
    def names(self) -> list[str]:
        return list(self.ssh)

    def copy(self, tmp: Path, sites: Callable[[str], str | None] = lambda _n: None) -> Path:
        """This test's hosts/: the template's files, each given the site `sites` names."""
        hosts = Path(shutil.copytree(self.template, tmp / "hosts"))
        for name in self.names:
            site = sites(name)
            if site:
                path = hosts / f"{name}.yaml"
                path.write_text(path.read_text() + f"site: {site}\n")
        return hosts

    def mismatch(self, hosts_dir: Path, tmp: Path, *names: str) -> None:
        """These hosts' machines no longer match their inventory (their own new sysroots)."""
        write_fleet([self.ssh[n] for n in names], hosts_dir, tmp / "bad-sysroots", list(names),
                    shape_of=lambda _n: MISMATCHED)

    def heal(self, hosts_dir: Path, tmp: Path, *names: str) -> None:
        write_fleet([self.ssh[n] for n in names], hosts_dir, tmp / "good-sysroots", list(names))


def fleet_world(farm: SshdFarm, base: Path, n: int, prefix: str) -> Iterator[FleetWorld]:
    names = [f"hv{i:02d}" for i in range(n)]
    ssh = start_hosts(farm, prefix, n)  # from the main thread: the farm is not thread-safe
    write_fleet(ssh, base / "hosts", base / "sysroots", names)
    yield FleetWorld(farm, dict(zip(names, ssh, strict=True)), base / "hosts")
    for host in ssh:
        if host.name in farm.hosts:
            farm.stop(host.name)


def rollout(hosts_dir: Path, runs_dir: Path, flags: RolloutFlags, *, parallel: int = 0, resume: bool = False,
            run_id: str | None = None, lines: list[str] | None = None, poll: float = 0.05,
            started: Callable[[LocalRollout], None] = lambda _r: None) -> FleetRecord:
    """What `invoke fleet.provision` does, in this process, with fast retry policies."""
    hosts = load_inventory(hosts_dir).hosts
    if resume:
        state, plan = resumed(runs_dir, run_id, RolloutFlags())
    else:
        plan = plan_from_flags(sites_of(hosts), flags)
        state = new_state(plan, "hypervisor", "local")
    runner = HostRunner(hypervisor_book(), runs_dir, FAST, sleep=lambda _s: None)
    said = lines if lines is not None else []
    return run_local(plan, state, hosts, runner, runs_dir, say=said.append, parallel=parallel, resume=resume,
                     poll=poll, started=started)


def fleet_json(record: FleetRecord) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(record.file.read_text())
    return data


def host_runs(runs_dir: Path, host: str) -> list[Path]:
    """The host's own run directories (a host the rollout never started has none)."""
    return sorted(p for p in (runs_dir / host).iterdir() if p.is_dir()) if (runs_dir / host).is_dir() else []


def journal(run_dir: Path) -> list[dict[str, Any]]:
    """The run's journal lines; none for a run killed before its first step ended."""
    if not (run_dir / "journal.jsonl").exists():
        return []
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
