"""Activities: one step on one host, run by the existing step code through lib/fleet/hostrun.py.

Each activity is one Engine run of one step (`--only` that step), with the host lock and run records
of any run. It heartbeats while the step works (a converge wait can take minutes), so a worker that
dies is noticed within the heartbeat timeout and the step is retried on another worker. That retry
is safe for the reasons a crash and `--resume` already are: the dead worker's SSH session is gone,
so its host lock is stale and the next run breaks it (lib/lock.py); every step is idempotent and
every file it writes is renamed into place.

The inventory, the runbook and every secret are read HERE, on the worker: only names cross Temporal,
and every text returned is masked with the secrets this worker knows.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import asdict
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from lib.fleet.hostrun import HostOutcome, HostRunner
from lib.fleet.kept import KeptConnections
from lib.fleet.temporal.shapes import NOT_RETRYABLE, RETRYABLE, StepInput, StepOutput
from lib.inventory.load import LoadedHost, load_inventory
from lib.retry import Policies
from lib.runbook import Runbook
from lib.shell import mask

# Exit codes a retry cannot change: bad inventory or flags, a host unlike its inventory, a step that
# failed after the tool's own retries, a verification that found the host different from the spec.
FINAL = (2, 3, 4, 5)


class StepActivities:
    def __init__(self, hosts_dir: Path, runs_dir: Path, books: dict[str, Runbook], policies: Policies,
                 heartbeat: float, kept: KeptConnections) -> None:
        self.hosts_dir, self.runs_dir, self.books = hosts_dir, runs_dir, books
        self.policies, self.heartbeat = policies, heartbeat
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.kept = kept

    def _host(self, name: str) -> LoadedHost:
        return load_inventory(self.hosts_dir, [name]).hosts[name]

    def _runner(self, runbook: str, run_id: str, keep: bool = False) -> HostRunner:
        """keep: the host's connection stays open for its next step on this worker (lib/fleet/kept.py)."""
        resume = f"invoke fleet.provision --engine=temporal --resume --run={run_id}"
        return HostRunner(self.books[runbook], self.runs_dir, self.policies, resume_command=lambda _h: resume,
                          pools=self.kept.pools(keep))

    def _beating(self, step: str, work: threading.Thread) -> None:
        """Heartbeat while the step's thread works: a dead worker stops beating, and Temporal retries."""
        work.start()
        while work.is_alive():
            activity.heartbeat(step)
            work.join(max(0.2, self.heartbeat / 3))

    def _output(self, step: str, done: HostOutcome) -> StepOutput:
        return StepOutput(done.host, done.failed_step or step, done.exit_code, done.records, mask(done.error),
                          mask(done.details), done.stopped, self.identity)

    @activity.defn(name="run_step")
    def run_step(self, inp: StepInput) -> StepOutput:
        loaded = self._host(inp.host)
        last = self.books[inp.runbook].steps[-1].name == inp.step
        runner = self._runner(inp.runbook, inp.run_id, keep=not last)
        found: list[HostOutcome] = []
        self._beating(inp.step, threading.Thread(target=lambda: found.append(runner.run(loaded, only=[inp.step]))))
        out = self._output(inp.step, found[0])
        if out.exit_code in FINAL:
            raise ApplicationError(out.error or f"{inp.host}: {inp.step} failed", asdict(out), type=NOT_RETRYABLE,
                                   non_retryable=True)
        if out.exit_code:  # 6: another run holds the lock; 130: this worker is stopping
            raise ApplicationError(out.error, asdict(out), type=RETRYABLE)
        return out

    @activity.defn(name="verify_host")
    def verify_host(self, inp: StepInput) -> StepOutput:
        loaded = self._host(inp.host)
        runner = self._runner(inp.runbook, inp.run_id)
        found: list[HostOutcome] = []
        self._beating("verify", threading.Thread(target=lambda: found.append(runner.verify(loaded))))
        return self._output("verify", found[0])
