"""The runbook engine: ordered steps, targets in parallel, verify after every step, records, resume.

Hypervisors run in parallel, each in its own thread with its own SSH sessions, lock and run records;
one failing host never hides another's results. Within a host, steps run in runbook order and a
step runs on all its targets at once. The first failure stops that host's run and names the
command to resume.

Stopping: `Engine.stop` (set by tasks.py on SIGINT/SIGTERM) lets the command in flight finish, then
stops every host before its next command or wait; the step is recorded as interrupted (exit 130) and
`--resume` redoes it. Nothing is left half-written because every write is a rename (see the steps).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lib import lock
from lib.errors import ToolError
from lib.inventory.load import LoadedHost
from lib.output import Output
from lib.records import RunRecords, new_run_id, read_journal, runs_of
from lib.remote import CommandError, ConnectError, Session, SessionPool
from lib.results import Check, HostRun, StepResult
from lib.retry import Policies, Sleep, retrying
from lib.runbook import Runbook, RunbookError, select
from lib.steps.base import Await, OnPeer, Step, StepMismatch, Target, Upload
from lib.targets import hypervisor_endpoint, targets_for

Mode = Literal["apply", "plan", "offline", "verify"]


@dataclass(frozen=True)
class RunOptions:
    mode: Mode = "apply"
    runs_dir: Path = Path(".runs")
    resume: bool = False
    from_step: str | None = None
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    flags: dict[str, Any] = field(default_factory=dict)  # step options such as redefine, yes
    policies: Policies = field(default_factory=Policies)
    sleep: Sleep = time.sleep
    # How the operator runs this again from where it stopped, given the host name.
    resume_command: Callable[[str], str] = lambda host: f"invoke provision --host={host} --resume"


class Interrupted(ToolError):
    """The operator stopped the run (SIGINT/SIGTERM): raised before the next command or wait."""

    exit_code = 130


class _NotYet(Exception):
    def __init__(self, checks: list[Check]) -> None:
        super().__init__("not converged")
        self.checks = checks


def _failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]


class Engine:
    def __init__(self, runbook: Runbook, options: RunOptions, output: Output | None = None) -> None:
        self.runbook, self.options = runbook, options
        self.output = output or Output()
        self.stop = threading.Event()  # set by interrupt(): every host stops before its next command

    def interrupt(self) -> None:
        self.stop.set()

    def _sleep(self, seconds: float) -> None:
        """The policies' waits, cut short by interrupt()."""
        if self.options.sleep is time.sleep:
            self.stop.wait(seconds)
        else:  # tests inject a sleep that does not really wait
            self.options.sleep(seconds)
        if self.stop.is_set():
            raise Interrupted("interrupted by the operator while waiting")

    def run(self, hosts: list[LoadedHost]) -> list[HostRun]:
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            futures = [pool.submit(self._run_host, host) for host in hosts]
            # Wake up now and then: a signal may be delivered to a worker thread, and Python runs
            # its handler (Ctrl-C -> interrupt()) only when the main thread executes again.
            while wait(futures, timeout=0.1).not_done:
                pass
            return [future.result() for future in futures]

    # -- one hypervisor ----------------------------------------------------------------------
    def _run_host(self, loaded: LoadedHost) -> HostRun:
        opts = self.options
        run_id = new_run_id()
        records = RunRecords(opts.runs_dir, loaded.name, run_id)
        run = HostRun(loaded.name, run_id, self.runbook.name, opts.mode, time.time())
        (records.dir / "run.json").write_text(json.dumps(
            {"host": loaded.name, "run_id": run_id, "runbook": self.runbook.name, "mode": opts.mode}))
        pool = SessionPool(opts.policies, self._sleep, records.log)
        hv = hypervisor_endpoint(loaded)
        locked = False
        first = ""  # the step the run would start with: named when the host fails before it
        try:
            chosen, left_out = self._selection(loaded, run_id)
            first = next((s.name for s in chosen if s.name not in left_out), "")
            if opts.mode == "apply":
                locked = self._take_lock(pool.get(hv), loaded, run_id)
            self._run_steps(loaded, chosen, left_out, pool, records, run)
        except (ToolError, OSError) as exc:
            run.error = str(exc)
            if isinstance(exc, ConnectError | CommandError) and not locked and first:
                run.error = f"{loaded.name}: before step {first}, taking the host lock: {exc}"
            run.exit_code = getattr(exc, "exit_code", 4)
        finally:
            if locked:
                try:
                    pool.get(hv).run(lock.release(loaded.host.lock_path, run_id))
                except ToolError as exc:
                    records.log(f"could not release the lock: {exc}")
            pool.close_all()
            run.ended = time.time()
            if run.exit_code:
                run.resume_hint = opts.resume_command(loaded.name)
            records.finish(run)
        return run

    def _run_steps(self, loaded: LoadedHost, chosen: list[Step], left_out: dict[str, str], pool: SessionPool,
                   records: RunRecords, run: HostRun) -> None:
        flags = {**self.options.flags, "mode": self.options.mode}  # a step's plan may read how it will be used
        for step in chosen:
            flags.update(step.host_options(loaded, self.options.mode))
        for step in self.runbook.steps:
            if step.name in left_out:
                self._record(records, run, self._skipped(loaded.name, step.name, left_out[step.name]))
                continue
            if step not in chosen:
                continue
            if self.stop.is_set():
                raise Interrupted(f"{loaded.name}: interrupted by the operator before step {step.name}, which "
                                  "had not started")
            records.log(f"{loaded.name}: step {step.name} started")
            results = self._run_step(step, loaded, pool, flags)
            for result in results:
                self._record(records, run, result)
            failed = [r for r in results if r.status == "failed"]
            if failed:
                run.exit_code = failed[0].exit_code
                return

    def _record(self, records: RunRecords, run: HostRun, result: StepResult) -> None:
        run.results.append(result)
        records.journal(result)
        self.output.step_done(result)

    def _skipped(self, host: str, step: str, reason: str) -> StepResult:
        now = time.time()
        return StepResult(host, step, host, "skipped", now, now, reason=reason)

    def _selection(self, loaded: LoadedHost, run_id: str) -> tuple[list[Step], dict[str, str]]:
        opts = self.options
        from_step = opts.from_step
        carried: dict[str, str] = {}
        if opts.resume:
            from_step, carried = self._resume_point(loaded.name, run_id)
        chosen, left_out = select(self.runbook, from_step=from_step, only=opts.only, skip=opts.skip)
        left_out.update(carried)
        return chosen, left_out

    def _resume_point(self, host: str, this_run: str) -> tuple[str | None, dict[str, str]]:
        """Continue after the last verified step of the last run of this runbook on this host."""
        for run_dir in reversed(runs_of(self.options.runs_dir, host)):
            meta_file = run_dir / "run.json"
            if run_dir.name == this_run or not meta_file.exists():
                continue
            meta = json.loads(meta_file.read_text())
            if meta.get("runbook") != self.runbook.name or meta.get("mode") != "apply":
                continue
            results = read_journal(run_dir)
            verified: set[str] = set()
            for name in self.runbook.names:
                mine = [r for r in results if r.step == name]
                if mine and all(r.verified or r.reason.startswith("verified in run") for r in mine):
                    verified.add(name)
            last = max((i for i, n in enumerate(self.runbook.names) if n in verified), default=-1)
            if last + 1 >= len(self.runbook.names):
                raise RunbookError(f"{host}: every step of {self.runbook.name} was verified in run {run_dir.name}; "
                                   "nothing to resume (run without --resume to check again)")
            carried = {n: f"verified in run {run_dir.name}" for n in self.runbook.names[:last + 1]}
            return self.runbook.names[last + 1], carried
        raise RunbookError(f"{host}: no earlier run of {self.runbook.name} in {self.options.runs_dir} to resume; "
                           "run without --resume")

    def _take_lock(self, session: Session, loaded: LoadedHost, run_id: str) -> bool:
        path = loaded.host.lock_path
        state = lock.parse(session.run(lock.acquire(path, lock.holder_info(run_id))).stdout)
        if state.state == "stale":
            # Its holder's SSH session is gone, so that run is gone too (a run that reconnects points
            # the lock at its new session at once: refresh()). Breaking it is what resume after a
            # crash needs; the break only removes exactly the content seen, so it cannot race a new run.
            session.run(lock.break_stale(path, state.holder))
            self.output.message(f"{loaded.name}: broke a stale host lock of {state.describe()} (its SSH session "
                                "is gone)")
            state = lock.parse(session.run(lock.acquire(path, lock.holder_info(run_id))).stdout)
        if state.state != "acquired":
            raise lock.LockHeld(f"{loaded.name}: another run holds the host lock {path}: {state.describe()}; "
                                "nothing was done: wait for it to finish")

        def keep(again: Session) -> None:
            lost = lock.refreshed(again.run(lock.refresh(path, run_id)).stdout)
            if lost is not None:
                raise lock.LockHeld(f"{loaded.name}: lost the host lock {path} while reconnecting; it is now held "
                                    f"by {lost.describe() if lost.holder else 'nobody'}; stopped")

        session.on_reconnect = keep
        return True

    # -- one step on its targets -------------------------------------------------------------
    def _run_step(self, step: Step, loaded: LoadedHost, pool: SessionPool, flags: dict[str, Any]) -> list[StepResult]:
        targets = targets_for(step, loaded, flags)
        if not targets:
            return [self._skipped(loaded.name, step.name, f"no {step.targets} targets on this host")]
        one_at_a_time = threading.Lock()  # for plans marked exclusive
        with ThreadPoolExecutor(max_workers=len(targets)) as threads:
            return list(threads.map(lambda t: self._run_target(step, t, pool, one_at_a_time), targets))

    def _run_target(self, step: Step, target: Target, pool: SessionPool, one_at_a_time: threading.Lock) -> StepResult:
        host = target.loaded.name
        self.output.step_started(host, step.name, target.name)
        started = time.time()
        commands: list[str] = []

        def result(status: Any, **kw: Any) -> StepResult:
            return StepResult(host, step.name, target.name, status, started, time.time(),
                              commands=tuple(commands), **kw)

        mode = self.options.mode
        if mode == "offline":
            plan = step.plan(target, None)
            return result("changed" if plan.actions else "ok", reason=plan.reason,
                          planned=tuple(_shown(a) for a in plan.actions), warnings=plan.warnings)
        session = pool.get(target.endpoint)
        try:
            self._check_stop()
            facts = step.gather(target, session)
            if mode == "verify":
                checks = step.verify(target, facts)
                return self._verdict(step, target, checks, result, changed=False)
            try:
                plan = step.plan(target, facts)
            except StepMismatch as drift:
                return result("failed", checks=tuple(drift.checks), exit_code=drift.exit_code,
                              error=f"{host}: {step.name} on {target.name}: {drift.message}")
            if mode == "plan":
                return result("changed" if plan.actions else "ok", reason=plan.reason,
                              planned=tuple(_shown(a) for a in plan.actions), warnings=plan.warnings)
            if step.destructive and plan.actions and not target.options.get("yes"):
                return result("failed", exit_code=2, planned=tuple(_shown(a) for a in plan.actions),
                              error=f"{host}: {step.name} on {target.name} would delete: {plan.reason}; "
                                    "nothing was deleted: rerun with --yes to delete it")
            with one_at_a_time if plan.exclusive else contextlib.nullcontext():
                self._apply(plan.actions, session, commands, target, pool)
                # Fresh facts after a change; with nothing applied the facts just read are fresh, and
                # a convergence step only waits when they do not already hold.
                checks = [] if plan.actions else step.verify(target, facts)
                if step.converge and (plan.actions or _failed(checks)):
                    checks = self._converge(step, target, session)
                elif plan.actions:
                    checks = step.verify(target, step.gather(target, session))
            res = self._verdict(step, target, checks, result, changed=bool(plan.actions))
            return res if res.status == "failed" else _with(res, reason=plan.reason, warnings=plan.warnings)
        except _NotYet as late:
            return result("failed", checks=tuple(late.checks), exit_code=4,
                          error=f"{host}: {step.name} on {target.name}: did not converge within "
                                f"{self.options.policies.converge.deadline:g} s")
        except (CommandError, ConnectError) as exc:
            return result("failed", exit_code=exc.exit_code, error=f"{host}: {step.name} on {target.name}: {exc}")
        except Interrupted:
            done = f"after {len(commands)} of its commands" if commands else "before any of its commands"
            return result("failed", exit_code=Interrupted.exit_code,
                          error=f"{host}: {step.name} on {target.name}: interrupted by the operator {done} (the "
                                "command in flight finished); the step is redone on resume")

    def _apply(self, actions: tuple[Any, ...], session: Session, commands: list[str], target: Target,
               pool: SessionPool) -> None:
        for action in actions:
            self._check_stop()
            commands.append(_shown(action))
            if isinstance(action, Upload):
                session.put(action.source or action.data, action.path, action.mode)
            elif isinstance(action, OnPeer):
                (pool.get(target.peer) if target.peer else session).run(action.command)
            elif isinstance(action, Await):
                self._converge(action.step, target, session)
            else:
                session.run(action)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted("interrupted by the operator")

    def _verdict(self, step: Step, target: Target, checks: list[Check], result: Callable[..., StepResult],
                 *, changed: bool) -> StepResult:
        bad = _failed(checks)
        if bad:
            return result("failed", checks=tuple(checks), exit_code=step.mismatch_exit,
                          error=f"{target.loaded.name}: verification of {step.name} failed on {target.name}: "
                                f"{len(bad)} of {len(checks)} checks differ from the spec")
        return result("changed" if changed else "ok", checks=tuple(checks))

    def _converge(self, step: Step, target: Target, session: Session) -> list[Check]:
        last: list[Check] = []

        def attempt() -> list[Check]:
            nonlocal last
            try:
                checks = step.verify(target, step.gather(target, session))
            except (CommandError, ConnectError) as exc:
                checks = [Check("reachable", "yes", str(exc).splitlines()[0], False)]
            last = checks
            if _failed(checks):
                raise _NotYet(checks)
            return checks

        try:
            return retrying(self.options.policies.converge, lambda e: isinstance(e, _NotYet), self._sleep)(attempt)
        except _NotYet:
            raise _NotYet(last) from None


def _shown(action: Any) -> str:
    return str(action.shown)


def _with(result: StepResult, **changes: Any) -> StepResult:
    from dataclasses import replace

    return replace(result, **changes)


def exit_code(runs: list[HostRun]) -> int:
    """The most fundamental failure wins: 2 inventory < 3 mismatch < 4 step < 5 verify < 6 lock < 130 stopped."""
    codes = [r.exit_code for r in runs if r.exit_code]
    return min(codes) if codes else 0


def failure_text(runs: list[HostRun]) -> str:
    """For each host that failed: where, what was expected and found, and the command to resume."""
    from lib.output import verification_table

    blocks: list[str] = []
    for run in runs:
        if not run.exit_code:
            continue
        failed = next((r for r in run.results if r.status == "failed"), None)
        lines = [f"{run.host}: FAILED (exit {run.exit_code})"]
        if failed is None:
            lines.append(f"  {run.error}")
        else:
            lines.append(f"  step {failed.step} on {failed.target}")
            lines += [f"  {line}" for line in failed.error.splitlines()]
            if failed.checks:
                lines.append(verification_table(failed))
        if run.resume_hint and run.exit_code != 2:
            lines.append(f"  resume: {run.resume_hint}")
        lines.append(f"  records: {run.host}/{run.run_id} under the runs directory")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
