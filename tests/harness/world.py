"""One test's world: hosts/, runbooks/, a state dir and the run records, driven through the Engine."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from lib.inventory.load import LoadedHost, load_inventory
from lib.options import RunFlags
from lib.output import Output
from lib.results import HostRun
from lib.retry import Policies, Policy
from lib.runbook import load_runbook
from lib.runner import Engine, RunOptions
from lib.steps.base import AnyStep, Target

FAST = Policies(
    ssh_connect=Policy("ssh_connect", attempts=2, wait_initial=1, wait_max=1),
    # the shipped transient policy (its stderr marks included), with short waits and only exit code 75
    transient=replace(Policies().transient, wait_initial=1, wait_max=5, exit_codes=(75,)),
    converge=Policy("converge", attempts=0, wait_initial=1, wait_max=2, deadline=10),
)


@dataclass(frozen=True)
class WorldFlags(RunFlags):
    """The run's flags and the test steps' own (tests/engine_steps.py): where they keep their state,
    and whether they change something."""

    state: str = ""
    change: bool = False


def world_flags(target: Target) -> WorldFlags:
    """A test step's flags: a World's run always passes WorldFlags."""
    assert isinstance(target.flags, WorldFlags), target.flags
    return target.flags


class World:
    """A hosts dir, a runbooks dir, a state dir and the records dir of one test."""

    def __init__(self, tmp: Path, registry: Mapping[str, type[AnyStep]]) -> None:
        self.tmp = tmp
        self.registry = registry
        self.hosts = tmp / "hosts"
        self.runbooks = tmp / "runbooks"
        self.state = tmp / "state"
        self.runs = tmp / "runs"
        for d in (self.hosts, self.runbooks, self.state):
            d.mkdir(parents=True, exist_ok=True)
        self.sleeps: list[float] = []

    def runbook(self, *steps: str, name: str = "book") -> Path:
        path = self.runbooks / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"steps": list(steps)}))
        return path

    def loaded(self, *names: str) -> list[LoadedHost]:
        inv = load_inventory(self.hosts, list(names) or None)
        return list(inv.hosts.values())

    def run(self, *steps: str, hosts: tuple[str, ...] = (), sleep: Any = None,
            started: Callable[[Engine], None] | None = None, **opts: Any) -> list[HostRun]:
        """Run the steps; `started(engine)` is called before the run (to interrupt it from a timer)."""
        book = load_runbook(self.runbook(*steps), self.registry)
        options = RunOptions(runs_dir=self.runs, policies=opts.pop("policies", FAST), sleep=sleep or self.sleeps.append,
                             flags=WorldFlags(state=str(self.state), **opts.pop("flags", {})), **opts)
        self.out = io.StringIO()
        engine = Engine(book, options, Output(self.out, tty=False))
        if started:
            started(engine)
        return engine.run(self.loaded(*hosts))

    def state_file(self, target: str, kind: str) -> Path:
        return self.state / f"{target}.{kind}"


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Poll until condition() holds; past `limit` seconds (a safety net, not a timing assertion) fail."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)
