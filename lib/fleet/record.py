"""The fleet record: .runs/fleet/<run-id>/fleet.json beside the hosts' own run records.

One JSON file holds the wave plan and, per host, its wave, site, outcome, failed step and the path of
its own records. It is rewritten whole after every change, beside and renamed into place, so a crash
leaves the previous state or the next, never half of one; `fleet.status` reads it from any shell and
`--resume` continues from it. Every string passes lib.shell.mask() on its way to disk.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lib.errors import ToolError
from lib.fleet.hostrun import HostOutcome
from lib.records import masked, new_run_id

Outcome = Literal["pending", "running", "verified", "failed", "stopped"]
State = Literal["running", "paused", "soaking", "done", "stopped", "failed"]
FLEET_DIR = "fleet"


class FleetRecordError(ToolError):
    exit_code = 2


@dataclass
class HostEntry:
    wave: int
    site: str
    outcome: Outcome = "pending"
    exit_code: int = 0
    failed_step: str = ""
    error: str = ""
    records: str = ""
    details: str = ""  # a failed host's own failure text: expected, found, its records, its resume


@dataclass
class FleetState:
    run_id: str
    runbook: str
    engine: str
    waves: list[list[str]]
    max_fail: str
    per_site: int
    pause: bool
    soak: float
    hosts: dict[str, HostEntry]
    state: State = "running"
    wave: int = 0  # the wave under way (or the next, when paused)
    reason: str = ""  # why it stopped, or what it waits for
    resume: str = ""  # the command that continues it
    approved: list[int] = field(default_factory=list)  # waves an operator let start (--pause)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetState:
        hosts = {name: HostEntry(**entry) for name, entry in data["hosts"].items()}
        return cls(**{**data, "hosts": hosts})


class FleetRecord:
    """One fleet run's record; the rollout's threads share one instance."""

    def __init__(self, runs_dir: Path, state: FleetState) -> None:
        self.dir = runs_dir / FLEET_DIR / state.run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = state
        self._lock = threading.Lock()
        self.save()

    @property
    def file(self) -> Path:
        return self.dir / "fleet.json"

    def save(self) -> None:
        with self._lock:
            text = json.dumps(masked(self.state.to_json()), indent=2, ensure_ascii=False) + "\n"
            tmp = self.file.with_name(f".fleet.json.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.file)

    def hosts_started(self, hosts: list[str]) -> None:
        """These hosts start now: one rewrite for all of them (a wave of 100 once took 100 rewrites
        of a 100-host record, each before its host could start)."""
        for host in hosts:
            self.state.hosts[host].outcome = "running"
        if hosts:
            self.save()

    def host_done(self, done: HostOutcome, *, save: bool = True) -> None:
        """The host's outcome; save=False when the caller saves once after several hosts ended together."""
        entry = self.state.hosts[done.host]
        entry.outcome = "verified" if done.verified else "stopped" if done.stopped else "failed"
        entry.exit_code, entry.failed_step, entry.error, entry.records = (
            done.exit_code, done.failed_step, done.error, done.records)
        entry.details = done.details if not done.verified and not done.stopped else ""
        if save:
            self.save()

    def set(self, state: State, reason: str = "", wave: int | None = None) -> None:
        self.state.state, self.state.reason = state, reason
        if wave is not None:
            self.state.wave = wave
        self.save()


def new_fleet_id() -> str:
    return new_run_id()


def fleet_runs(runs_dir: Path) -> list[Path]:
    """Every fleet run's directory, oldest first (run ids sort in time order)."""
    root = runs_dir / FLEET_DIR
    return sorted(p for p in root.iterdir() if (p / "fleet.json").exists()) if root.is_dir() else []


def load(runs_dir: Path, run_id: str | None = None) -> FleetState:
    """A fleet run's state: the one named, or the latest."""
    runs = fleet_runs(runs_dir)
    if run_id is not None:
        chosen = runs_dir / FLEET_DIR / run_id
        if chosen not in runs:
            known = ", ".join(p.name for p in runs[-5:]) or "none"
            raise FleetRecordError(f"--run={run_id}: no fleet run of that id in {runs_dir / FLEET_DIR} "
                                   f"(latest: {known})")
    elif runs:
        chosen = runs[-1]
    else:
        raise FleetRecordError(f"no fleet run in {runs_dir / FLEET_DIR} yet")
    try:
        return FleetState.from_json(json.loads((chosen / "fleet.json").read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise FleetRecordError(f"{chosen / 'fleet.json'}: not a fleet record this version can read ({exc})") from None


def approve(runs_dir: Path, run_id: str | None) -> tuple[FleetState, int]:
    """The operator's go-ahead for the wave a paused rollout waits for: a file the rollout looks for."""
    state = load(runs_dir, run_id)
    if state.state != "paused":
        raise FleetRecordError(f"fleet run {state.run_id} is {state.state}, not paused before a wave; "
                               "nothing to approve")
    (runs_dir / FLEET_DIR / state.run_id / f"approve-wave-{state.wave}").touch()
    return state, state.wave


def approved(record: FleetRecord, wave: int) -> bool:
    return (record.dir / f"approve-wave-{wave}").exists()
