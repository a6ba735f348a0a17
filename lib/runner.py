"""The runbook engine: ordered steps, targets in parallel, verify after every step, records, resume.

Hypervisors run in parallel, each in its own thread with its own SSH sessions, lock and run records;
one failing host never hides another's results. Within a host, steps run in runbook order and a
step runs on all its targets at once. In a run that changes hosts the first failure stops that
host's run and names the command to resume; a read-only run (verify, plan) goes on with every
later step, so one run reports every difference.

Nothing escapes: any exception in gather, parse, plan, apply or verify becomes that target's failed
result (exit 4), its type and message on the terminal and in the records, its traceback in run.log.

Stopping: `Engine.stop` (set by tasks.py on SIGINT/SIGTERM) lets the command in flight finish, then
stops every host before its next command or wait; the step is recorded as interrupted (exit 130) and
`--resume` redoes it. Nothing is left half-written because every write is a rename (see the steps).

The engine only orders the work; each other job is its own unit: the shells of a host's run come
from a pool factory (lib/pool.py's ssh_pool, or a test's), a target's Shell records its evidence
(lib/recorded.py), plans' actions and convergence waits run in lib/actions.py, the host lock is
lib/lock.py's take(), resume is lib/resume.py, run.json and the journal are lib/records.py, and
every failure's wording is lib/failures.py.

The per-host run, for a caller running hypervisors itself (one worker per host, say):
`Engine(runbook, options, output, pools).run([loaded])` gives that host's HostRun, its records
written under options.runs_dir; `exit_code(runs)` and `failure_text(runs)` sum several up.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lib import lock
from lib.actions import Executor, NotYet, failed
from lib.errors import ToolError
from lib.failures import (
    describe,
    failure_text,
    host_failure,
    interrupted_target,
    not_converged,
    verification_failed,
    would_delete,
)
from lib.gather import first_commands, gather
from lib.inventory.load import LoadedHost
from lib.options import HostInputs, RunFlags
from lib.output import Output
from lib.planview import describe as describe_action
from lib.pool import ssh_pool
from lib.quickexit import skip_last_collection
from lib.readahead import ReadAhead
from lib.recorded import Recorded, SharedReads
from lib.records import RunMeta, RunRecords, last_run, new_run_id, read_journal
from lib.results import Check, HostRun, Status, StepResult
from lib.resume import resume_point
from lib.retry import Policies, Sleep
from lib.runbook import Runbook, RunbookError, select
from lib.shell import Command, public
from lib.sink import Sink
from lib.steps.base import Action, AnyStep, Mode, Plan, StepMismatch, Target
from lib.targets import hypervisor_endpoint, targets_for
from lib.transport import Endpoint, Log, Pool, Shell

# Re-exported: callers (tasks.py, tests, bench) import these from the engine.
__all__ = [
    "Engine",
    "Interrupted",
    "Mode",
    "PoolFactory",
    "RunOptions",
    "SharedReads",
    "describe",
    "exit_code",
    "failure_text",
]


@dataclass(frozen=True)
class RunOptions:
    mode: Mode = "apply"
    runs_dir: Path = Path(".runs")
    resume: bool = False
    from_step: str | None = None
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    flags: RunFlags = field(default_factory=RunFlags)  # what steps may honour, such as redefine, yes
    policies: Policies = field(default_factory=Policies)
    sleep: Sleep = time.sleep
    # How the operator runs this again from where it stopped, given the host name.
    resume_command: Callable[[str], str] = lambda host: f"invoke provision --host={host} --resume"


# Makes the shells of one host's run: (policies, sleep, log, remember_failure) -> Pool. The real one
# is lib/pool.py's ssh_pool; tests/harness/fakeshell.py's answers from a script, in-process.
PoolFactory = Callable[[Policies, Sleep, Log, bool], Pool]


class Interrupted(ToolError):
    """The operator stopped the run (SIGINT/SIGTERM): raised before the next command or wait."""

    exit_code = 130


@dataclass
class _HostRun:
    """What every target of one hypervisor's run shares."""

    loaded: LoadedHost
    run_id: str
    pool: Pool
    records: RunRecords
    inputs: HostInputs = field(default_factory=HostInputs)  # what the chosen steps read on this machine
    carried: dict[str, str] = field(default_factory=dict)  # --resume: step -> the run it verified in
    current: str = ""  # the step the run is at: named when the host fails outside any target
    shared: SharedReads = field(default_factory=SharedReads)
    locked: bool = False


class _TargetRun:
    """One step on one target in one of the four modes: its clock, the commands it ran, its result."""

    def __init__(self, step: AnyStep, target: Target, host: _HostRun, executor: Executor) -> None:
        self.step, self.target, self.host, self.executor = step, target, host, executor
        self.started = time.time()
        self.commands: list[str] = []
        self.where = f"{target.loaded.name}: {step.name} on {target.name}"

    def result(self, status: Status, **kw: Any) -> StepResult:
        verified = self.host.run_id if status in ("ok", "changed") and "planned" not in kw else ""
        return StepResult(self.target.loaded.name, self.step.name, self.target.name, status, self.started,
                          time.time(), commands=tuple(self.commands), verified_in=verified, **kw)

    def failed(self, exit_code: int, error: str, **kw: Any) -> StepResult:
        return self.result("failed", exit_code=exit_code, error=error, **kw)

    def planned(self, plan: Plan) -> StepResult:
        return self.result("changed" if plan.actions else "ok", reason=plan.reason,
                           planned=_planned(plan.actions, self.target.name), warnings=plan.warnings)

    def session(self) -> Shell:
        """The target's shell, recording each command's raw answer under the run's evidence."""
        shell = self.host.pool.shell(self.target.endpoint)
        keep = self.host.records.evidence_writer(self.step.name, self.target.name)
        return Recorded(shell, keep, self.target.endpoint, self.step.name, self.host.shared)

    # -- the four modes, one function each --------------------------------------------------
    def offline(self) -> StepResult:
        return self.planned(self.step.plan(self.target, None))

    def plan(self) -> StepResult:
        self.executor.check_stop()
        return self.planned(self.step.plan(self.target, gather(self.step, self.target, self.session())))

    def verify(self) -> StepResult:
        self.executor.check_stop()
        facts = gather(self.step, self.target, self.session())
        return self._verdict(self.step.verify(self.target, facts), changed=False)

    def apply(self, one_at_a_time: threading.Lock) -> StepResult:
        job, step, target = self, self.step, self.target
        self.executor.check_stop()
        session = job.session()
        facts = gather(step, target, session)
        plan = step.plan(target, facts)
        if step.destructive and plan.actions and not target.flags.yes:
            return job.failed(2, would_delete(job.where, plan.reason), planned=tuple(a.shown for a in plan.actions))
        with one_at_a_time if plan.exclusive else contextlib.nullcontext():
            self.executor.do(plan.actions, session, job.commands, target, job.host.shared)
            checks = self._fresh_checks(step, target, session, facts, job.host.shared, changed=bool(plan.actions))
        result = self._verdict(checks, changed=bool(plan.actions))
        return result if result.status == "failed" else replace(result, reason=plan.reason, warnings=plan.warnings)

    def _fresh_checks(self, step: AnyStep, target: Target, session: Shell, facts: object, shared: SharedReads, *,
                      changed: bool) -> list[Check]:
        # Fresh facts after a change; with nothing applied the facts just read are fresh, and a
        # convergence step only waits when they do not already hold.
        checks = [] if changed else step.verify(target, facts)
        if step.converge and (changed or failed(checks)):
            return self.executor.converge(step, target, session, shared)
        return step.verify(target, gather(step, target, session)) if changed else checks

    def _verdict(self, checks: list[Check], *, changed: bool) -> StepResult:
        job = self
        bad = failed(checks)
        if bad:
            return job.failed(job.step.mismatch_exit, verification_failed(
                job.target.loaded.name, job.step.name, job.target.name, len(bad), len(checks)), checks=tuple(checks))
        return job.result("changed" if changed else "ok", checks=tuple(checks))


def _names(loaded: LoadedHost) -> list[str]:
    """The host's and its VMs' names and the paths the inventory gives (disks, seeds, base images)."""
    names = [loaded.name, loaded.host.ssh.host, *loaded.host.storage_roots]
    for vm in loaded.host.vms:
        names += [vm.name, vm.disk_path, vm.cloud_init_iso_path, vm.base_image_path]
        names += [d.device or d.path for d in vm.disks]
    return names


class Engine:
    def __init__(self, runbook: Runbook, options: RunOptions, output: Sink | None = None,
                 pools: PoolFactory = ssh_pool) -> None:
        self.runbook, self.options = runbook, options
        self.output: Sink = output or Output()
        self.pools = pools
        self.stop = threading.Event()  # set by interrupt(): every host stops before its next command
        self.executor = Executor(options.policies.converge, self._sleep, self._check_stop, self.output)

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

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted("interrupted by the operator")

    @property
    def read_only(self) -> bool:
        return self.options.mode != "apply"

    def run(self, hosts: list[LoadedHost]) -> list[HostRun]:
        """The per-host run, each host in its own thread; one HostRun per host, in order, records written."""
        skip_last_collection()  # the process exits soon after its runs: lib/quickexit.py
        # What the run shows by name stays readable whatever a secret is (shell.mask).
        public(*self.runbook.names, *(name for loaded in hosts for name in _names(loaded)))
        # On the main thread, wake up now and then: a signal may be delivered to a worker thread, and
        # Python runs its handler (Ctrl-C -> interrupt()) only when the main thread executes again.
        # Elsewhere (a fleet's host, a Temporal activity) nothing is gained: 100 hosts polling ten
        # times a second cost the control node's CPU and the GIL for nothing.
        poll = 0.1 if threading.current_thread() is threading.main_thread() else None
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            futures = [pool.submit(self._run_host, host) for host in hosts]
            while wait(futures, timeout=poll).not_done:
                pass
            return [self._outcome(host, future.result) for host, future in zip(hosts, futures, strict=True)]

    def _outcome(self, host: LoadedHost, result: Callable[[], HostRun]) -> HostRun:
        try:
            return result()
        except Exception as exc:  # the records themselves could not be written (disk full, permissions)
            now = time.time()
            return HostRun(host.name, "", self.runbook.name, self.options.mode, now, now,
                           error=f"{host.name}: the run could not keep its records: {describe(exc)}", exit_code=4)

    # -- one hypervisor ----------------------------------------------------------------------
    def _run_host(self, loaded: LoadedHost) -> HostRun:
        """One hypervisor's run (the caller keeps failures of the records themselves: run())."""
        opts = self.options
        run_id = new_run_id()
        records = RunRecords(opts.runs_dir, loaded.name, run_id)
        run = HostRun(loaded.name, run_id, self.runbook.name, opts.mode, time.time(),
                      records=str(records.dir.resolve()))
        records.start(RunMeta(loaded.name, run_id, self.runbook.name, opts.mode, self._vm_filter))
        pool = self.pools(opts.policies, self._sleep, records.log, self.read_only)
        ctx = _HostRun(loaded, run_id, pool, records)
        try:
            chosen, left_out, ctx.carried = self._selection(loaded, run_id)
            ctx.shared = SharedReads(ReadAhead(lambda: reads_ahead(chosen, ctx, opts.flags, opts.mode),
                                               records.log))
            ctx.current = next((s.name for s in chosen if s.name not in left_out), "")
            self.output.host_started(loaded.name, len(self.runbook.steps))  # "(2/5)" on the live line
            if opts.mode == "apply":
                # The steps' local inputs (the cluster token, the airgap folder) checked on this machine as a
                # plan would, creating nothing: a weak token is refused before the host is contacted. The
                # reads that follow the lock in its round trip are planned with them (no read uses a token).
                for step in chosen:
                    ctx.inputs = ctx.inputs.merged(step.host_inputs(loaded, "plan"))
                ctx.locked = _take_lock(ctx, hypervisor_endpoint(loaded), self.output.message)
                ctx.inputs = HostInputs()
            for step in chosen:
                ctx.inputs = ctx.inputs.merged(step.host_inputs(loaded, opts.mode))
            self._run_steps(ctx, run, chosen, left_out)
        except Exception as exc:
            self._host_failed(ctx, run, exc)
        finally:
            self._finish(ctx, run)
        return run

    def _run_steps(self, ctx: _HostRun, run: HostRun, chosen: list[AnyStep], left_out: dict[str, str]) -> None:
        """Every step in runbook order; a run that changes hosts stops at its first failure."""
        host = ctx.loaded.name
        for step in self.runbook.steps:
            if step.name in ctx.carried:
                verified = ctx.carried[step.name]
                self._record(ctx.records, run, _skipped(host, step.name, f"verified in run {verified}", verified))
            elif step.name in left_out:
                self._record(ctx.records, run, _skipped(host, step.name, left_out[step.name]))
            elif step in chosen:
                ctx.current = step.name
                try:
                    ok = self._run_step(step, ctx, run)
                except Interrupted:
                    raise
                except Exception as exc:  # outside its targets (choosing them, say): this step failed
                    self._host_failed(ctx, run, exc)
                    ok = False
                if not ok and not self.read_only:
                    return

    def _finish(self, ctx: _HostRun, run: HostRun) -> None:
        if ctx.locked:
            try:
                ctx.pool.shell(hypervisor_endpoint(ctx.loaded)).run(lock.release(ctx.loaded.host.lock_path, ctx.run_id))
            except Exception as exc:
                ctx.records.log(f"could not release the lock: {describe(exc)}")
        ctx.pool.close_all()
        run.ended = time.time()
        failed = [r for r in run.results if r.status == "failed"]
        run.exit_code = min(r.exit_code for r in failed) if failed else 0
        if run.exit_code and self.options.mode == "apply":  # only a run that changes hosts has a point to resume
            run.resume_hint = self.options.resume_command(ctx.loaded.name)
        ctx.records.finish(run)

    def _host_failed(self, ctx: _HostRun, run: HostRun, exc: Exception) -> None:
        """A failure outside any target: journalled as a failed result, so every record shows it."""
        host, step = run.host, ctx.current
        ctx.records.log(f"{host}: {describe(exc)}\n{traceback.format_exc()}")
        error, exit_code = host_failure(host, step, exc, locked=ctx.locked, changing=self.options.mode == "apply",
                                        user=hypervisor_endpoint(ctx.loaded).user)
        run.error = error
        now = time.time()
        self._record(ctx.records, run, StepResult(host, step or "(run)", host, "failed", now, now, error=error,
                                                  exit_code=exit_code))

    def _record(self, records: RunRecords, run: HostRun, result: StepResult) -> None:
        run.results.append(result)
        records.journal(result)
        self.output.step_done(result)

    # -- which steps: --from, --only, --skip, --resume ---------------------------------------
    def _selection(self, loaded: LoadedHost, run_id: str) -> tuple[list[AnyStep], dict[str, str], dict[str, str]]:
        opts = self.options
        from_step = opts.from_step
        carried: dict[str, str] = {}
        if opts.resume:
            from_step, carried = self._resume_point(loaded.name, run_id)
        chosen, left_out = select(self.runbook, from_step=from_step, only=opts.only, skip=opts.skip)
        return chosen, left_out, carried

    @property
    def _vm_filter(self) -> tuple[str, ...]:
        return self.options.flags.vms

    def _resume_point(self, host: str, this_run: str) -> tuple[str | None, dict[str, str]]:
        """Start at the first step the last run of this runbook on this host did not verify."""
        last = last_run(self.options.runs_dir, host, self.runbook.name, self._vm_filter, before=this_run)
        if last is None:
            raise RunbookError(f"{host}: no earlier run of {self.runbook.name} in {self.options.runs_dir} to resume; "
                               "run without --resume")
        return resume_point(host, self.runbook.name, self.runbook.names, last.name, read_journal(last))

    # -- one step on its targets -------------------------------------------------------------
    def _run_step(self, step: AnyStep, ctx: _HostRun, run: HostRun) -> bool:
        """Run one step on all its targets and record each result; False when any failed."""
        host = ctx.loaded.name
        if self.stop.is_set():
            raise Interrupted(f"{host}: interrupted by the operator before step {step.name}, which had not started")
        ctx.records.log(f"{host}: step {step.name} started")
        targets = targets_for(step, ctx.loaded, self.options.flags, inputs=ctx.inputs, mode=self.options.mode,
                              run_id=ctx.run_id)
        if not targets:
            # Nothing to do and nothing to verify: verified, vacuously, so resume carries it.
            results = [_skipped(host, step.name, f"no {step.targets} targets on this host", ctx.run_id)]
        else:
            one_at_a_time = threading.Lock()  # for plans marked exclusive
            with ThreadPoolExecutor(max_workers=len(targets)) as threads:
                results = list(threads.map(lambda t: self._run_target(step, t, ctx, one_at_a_time), targets))
        for result in results:
            self._record(ctx.records, run, result)
        return all(r.status != "failed" for r in results)

    def _run_target(self, step: AnyStep, target: Target, ctx: _HostRun, one_at_a_time: threading.Lock) -> StepResult:
        self.output.step_started(target.loaded.name, step.name, target.name)
        job = _TargetRun(step, target, ctx, self.executor)
        modes: dict[Mode, Callable[[], StepResult]] = {
            "offline": job.offline, "plan": job.plan, "verify": job.verify,
            "apply": lambda: job.apply(one_at_a_time),
        }
        try:
            return modes[self.options.mode]()
        except StepMismatch as drift:
            return job.failed(drift.exit_code, f"{job.where}: {drift.message}", checks=tuple(drift.checks))
        except NotYet as late:
            return job.failed(4, not_converged(job.where, self.options.policies.converge.deadline),
                              checks=tuple(late.checks))
        except Interrupted:
            return job.failed(Interrupted.exit_code, interrupted_target(job.where, len(job.commands)))
        except Exception as exc:  # anything at all: this target failed, every other one goes on
            ctx.records.log(f"{job.where}: {describe(exc)}\n{traceback.format_exc()}")
            return job.failed(getattr(exc, "exit_code", 4) if isinstance(exc, ToolError) else 4,
                              f"{job.where}: {describe(exc)}")


def _take_lock(ctx: _HostRun, endpoint: Endpoint, say: Callable[[str], None]) -> bool:
    """The host lock, sent at the head of the run's first contact with the hypervisor (lib/readahead.py)."""
    shell = ctx.pool.shell(endpoint)
    keep = lock.take(shell, ctx.loaded.host.lock_path, ctx.run_id, ctx.loaded.name, say,
                     first=lambda cmd: ctx.shared.ahead.lead(endpoint, shell, cmd))
    ctx.pool.on_reconnect(endpoint, keep)
    return True


def reads_ahead(chosen: list[AnyStep], ctx: _HostRun, flags: RunFlags, mode: Mode) -> dict[Endpoint, list[Command]]:
    """Per endpoint, the commands the chosen steps will read there from the current step on: each
    target's first round of declared reads (read at the run's first contact: lib/readahead.py).
    A step that cannot say is left to read alone."""
    names = [s.name for s in chosen]
    start = names.index(ctx.current) if ctx.current in names else 0
    reads: dict[Endpoint, list[Command]] = {}
    for step in chosen[start:]:
        if not step.read_ahead:
            continue
        try:
            for target in targets_for(step, ctx.loaded, flags, inputs=ctx.inputs, mode=mode, run_id=ctx.run_id):
                for endpoint, command in first_commands(step, target):
                    reads.setdefault(endpoint, []).append(command)
        except Exception as exc:  # an optimisation only: the step reads alone and reports its own errors
            ctx.records.log(f"{ctx.loaded.name}: {step.name} not read ahead: {describe(exc)}")
    return reads


def _skipped(host: str, step: str, reason: str, verified_in: str = "") -> StepResult:
    now = time.time()
    return StepResult(host, step, host, "skipped", now, now, reason=reason, verified_in=verified_in)


def _planned(actions: tuple[Action, ...], host: str) -> tuple[str, ...]:
    """Plan modes: each action as shown, with the bodies (or diffs) of the files it writes."""
    return tuple(describe_action(a, host) for a in actions)


def exit_code(runs: list[HostRun]) -> int:
    """The most fundamental failure wins: 2 inventory < 3 mismatch < 4 step < 5 verify < 6 lock < 130 stopped."""
    codes = [r.exit_code for r in runs if r.exit_code]
    return min(codes) if codes else 0
