"""The one place fleets touch the per-host run: one host's runbook (or some of its steps) through the
Engine of lib/runner.py, and a typed outcome back.

Everything else in lib/fleet/ sees only HostRunner and HostOutcome, so when the engine changes shape
(issue #27: units, an injected session-pool factory, a typed step contract) only this file follows.

A fleet stops a host "after its current step" (the failure budget was exceeded elsewhere): the
Engine itself stops before the next *command*, so this adapter checks a drain event before each
*step* and records the host as stopped there, with exit 130 and the resume command, as Ctrl-C does.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.errors import ToolError
from lib.inventory.load import LoadedHost
from lib.options import RunFlags
from lib.output import Output
from lib.pool import ssh_pool
from lib.results import HostRun
from lib.retry import Policies, Sleep
from lib.runbook import Runbook
from lib.runner import Engine, PoolFactory, RunOptions, failure_text


class Drained(ToolError):
    """The fleet stopped this host between two steps: nothing is half-done, --resume redoes the step."""

    exit_code = 130


@dataclass(frozen=True)
class HostOutcome:
    """What a fleet needs to know about one host's run."""

    host: str
    exit_code: int  # the existing table: 0 verified, 3 mismatch, 4 step, 5 verification, 6 lock, 130 stopped
    failed_step: str = ""  # the first step that failed (or where the host was stopped)
    records: str = ""  # absolute path of the host's run records
    error: str = ""  # the first failure's message, one line
    details: str = ""  # the operator's full failure text: expected, found, records, resume
    stopped: bool = False  # stopped between steps by the fleet or the operator: not the host's failure

    @property
    def verified(self) -> bool:
        return self.exit_code == 0

    @property
    def outcome(self) -> str:
        return "verified" if self.verified else "stopped" if self.stopped else "failed"


class _Draining(Engine):
    """The Engine, checking before each step whether the fleet wants its hosts to stop."""

    def __init__(self, runbook: Runbook, options: RunOptions, output: Output, pools: PoolFactory,
                 drain: threading.Event, why: Callable[[], str]) -> None:
        super().__init__(runbook, options, output, pools)
        self._drain, self._why = drain, why

    def _run_step(self, step: Any, ctx: Any, run: HostRun) -> bool:
        if self._drain.is_set():
            raise Drained(f"{run.host}: stopped before step {step.name} ({self._why()}); nothing of it ran")
        return super()._run_step(step, ctx, run)


def outcome_of(run: HostRun) -> HostOutcome:
    failed = [r for r in run.results if r.status == "failed"]
    first = failed[0] if failed else None
    error = (first.error if first else run.error).splitlines()
    stopped = bool(failed) and all(r.exit_code == Drained.exit_code for r in failed)
    return HostOutcome(run.host, run.exit_code, first.step if first else "", run.records,
                       error[0] if error else "", failure_text([run]) if run.exit_code else "", stopped)


@dataclass
class HostRunner:
    """Runs hosts one at a time per call (call it from as many threads as hosts should run at once)."""

    runbook: Runbook
    runs_dir: Path
    policies: Policies = field(default_factory=Policies)
    flags: RunFlags = field(default_factory=RunFlags)
    resume_command: Callable[[str], str] = lambda host: f"invoke provision --host={host} --resume"
    sleep: Sleep = time.sleep
    pools: PoolFactory = ssh_pool  # a Temporal worker's pools keep a host's connection between its steps
    _live: set[Engine] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, loaded: LoadedHost, *, resume: bool = False, drain: threading.Event | None = None,
            why: Callable[[], str] = lambda: "the rollout stopped", only: Sequence[str] = ()) -> HostOutcome:
        """Change the host: the runbook (or only these steps), every step verified; resume continues
        after the last step its last run verified."""
        options = RunOptions(mode="apply", runs_dir=self.runs_dir, resume=resume, only=tuple(only),
                             flags=self.flags, policies=self.policies, sleep=self.sleep,
                             resume_command=self.resume_command)
        return self._run(_Draining(self.runbook, options, _quiet(), self.pools, drain or threading.Event(), why),
                         loaded)

    def verify(self, loaded: LoadedHost) -> HostOutcome:
        """Read-only: every step of the runbook verified against the host as it is now."""
        options = RunOptions(mode="verify", runs_dir=self.runs_dir, flags=self.flags, policies=self.policies,
                             sleep=self.sleep, resume_command=self.resume_command)
        return self._run(Engine(self.runbook, options, _quiet(), self.pools), loaded)

    def interrupt(self) -> None:
        """Ctrl-C: every host in flight stops after the commands in flight, as a single run does."""
        with self._lock:
            for engine in self._live:
                engine.interrupt()

    def _run(self, engine: Engine, loaded: LoadedHost) -> HostOutcome:
        with self._lock:
            self._live.add(engine)
        try:
            return outcome_of(engine.run([loaded])[0])
        finally:
            with self._lock:
                self._live.discard(engine)


def _quiet() -> Output:
    # The fleet prints its own line per host; a live line per host would fight over the terminal.
    return Output(io.StringIO(), tty=False)
