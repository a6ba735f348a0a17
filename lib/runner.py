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
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from lib import lock
from lib.errors import ToolError
from lib.inventory.load import LoadedHost
from lib.output import Output
from lib.records import RunRecords, new_run_id, read_journal, runs_of
from lib.remote import CmdResult, CommandError, ConnectError, Endpoint, Session, SessionPool
from lib.results import Check, HostRun, Status, StepResult
from lib.retry import Policies, Sleep, retrying
from lib.runbook import Runbook, RunbookError, select
from lib.shell import Command, public
from lib.steps.base import Await, OnPeer, Plan, Step, StepMismatch, Target, Upload
from lib.steps.preflight import sudo_refusal
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


def describe(exc: BaseException) -> str:
    """An exception as the operator reads it: our typed errors by their message, others by type too."""
    if isinstance(exc, ToolError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Answers:
    """Shared reads (Command.shared) of one host's run: asked once per step, by whichever of its
    targets asks first, while the others wait for that answer. Anything the run changes, and every
    convergence attempt, starts afresh: a shared answer is never older than the last change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, Endpoint, str], tuple[threading.Lock, list[CmdResult]]] = {}

    def forget(self) -> None:
        with self._lock:
            self._answers.clear()

    def get(self, key: tuple[str, Endpoint, str], read: Callable[[], CmdResult]) -> CmdResult:
        with self._lock:
            slot = self._answers.setdefault(key, (threading.Lock(), []))
        with slot[0]:  # the first asker reads; the others wait and take its answer
            if not slot[1]:
                slot[1].append(read())  # a failed read raises and is not kept: the next asker reads again
            return slot[1][0]


@dataclass
class _HostRun:
    """What every target of one hypervisor's run shares."""

    loaded: LoadedHost
    run_id: str
    pool: SessionPool
    records: RunRecords
    flags: dict[str, Any]
    carried: dict[str, str] = field(default_factory=dict)  # --resume: step -> the run it verified in
    current: str = ""  # the step the run is at: named when the host fails outside any target
    answers: Answers = field(default_factory=Answers)
    locked: bool = False


class _Recorded:
    """A target's view of a session: every command's answer is kept as raw evidence for its step.

    Sessions are shared (VM targets ride on the hypervisor's), so the recording is per target and
    step, not per session; everything else is the session's own.
    """

    def __init__(self, session: Session, keep: Callable[[CmdResult], None], pool: SessionPool,
                 endpoint: Endpoint, step: str, answers: Answers) -> None:
        self._session, self._keep, self._pool = session, keep, pool
        self._endpoint, self._step, self._answers = endpoint, step, answers

    def peer(self, endpoint: Endpoint, *, once: bool = False) -> Session:
        """Another target's session, lent by the run: its answers are kept as this step's evidence."""
        session = self._pool.get(endpoint)
        if once:
            session.connection(once=True)
        return cast(Session, _Recorded(session, self._keep, self._pool, endpoint, self._step, self._answers))

    def run(self, cmd: Command) -> CmdResult:
        try:
            if cmd.shared:
                result = self._answers.get((self._step, self._endpoint, cmd.real), lambda: self._session.run(cmd))
            else:
                result = self._session.run(cmd)
        except CommandError as exc:
            self._keep(exc.result)
            raise
        self._keep(result)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class _TargetRun:
    """One step on one target: its clock, the commands it ran, and how its result is built."""

    def __init__(self, step: Step, target: Target, host: _HostRun) -> None:
        self.step, self.target, self.host = step, target, host
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

    def session(self) -> Session:
        """The target's session, recording each command's raw answer under the run's evidence."""
        session = self.host.pool.get(self.target.endpoint)
        keep = self.host.records.evidence_writer(self.step.name, self.target.name)
        return cast(Session, _Recorded(session, keep, self.host.pool, self.target.endpoint, self.step.name,
                                       self.host.answers))


def _names(loaded: LoadedHost) -> list[str]:
    """The host's and its VMs' names and the paths the inventory gives (disks, seeds, base images)."""
    names = [loaded.name, loaded.host.ssh.host, *loaded.host.storage_roots]
    for vm in loaded.host.vms:
        names += [vm.name, vm.disk_path, vm.cloud_init_iso_path, vm.base_image_path]
        names += [d.device or d.path for d in vm.disks]
    return names


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

    @property
    def read_only(self) -> bool:
        return self.options.mode != "apply"

    def run(self, hosts: list[LoadedHost]) -> list[HostRun]:
        # What the run shows by name stays readable whatever a secret is (shell.mask).
        public(*self.runbook.names, *(name for loaded in hosts for name in _names(loaded)))
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            futures = [pool.submit(self._run_host, host) for host in hosts]
            # Wake up now and then: a signal may be delivered to a worker thread, and Python runs
            # its handler (Ctrl-C -> interrupt()) only when the main thread executes again.
            while wait(futures, timeout=0.1).not_done:
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
        opts = self.options
        run_id = new_run_id()
        records = RunRecords(opts.runs_dir, loaded.name, run_id)
        run = HostRun(loaded.name, run_id, self.runbook.name, opts.mode, time.time(),
                      records=str(records.dir.resolve()))
        (records.dir / "run.json").write_text(json.dumps(
            {"host": loaded.name, "run_id": run_id, "runbook": self.runbook.name, "mode": opts.mode,
             "vm_filter": list(opts.flags.get("vms") or ())}))  # --vm: which VMs this run was limited to
        pool = SessionPool(opts.policies, self._sleep, records.log, remember_failure=self.read_only)
        ctx = _HostRun(loaded, run_id, pool, records, {**opts.flags, "mode": opts.mode})
        try:
            chosen, left_out, ctx.carried = self._selection(loaded, run_id)
            ctx.current = next((s.name for s in chosen if s.name not in left_out), "")
            self.output.host_started(loaded.name, len(self.runbook.steps))  # "(2/5)" on the live line
            if opts.mode == "apply":
                # The steps' options (the cluster token, the airgap folder) checked on this machine as a
                # plan would, creating nothing: a weak token is refused before the host is contacted.
                for step in chosen:
                    step.host_options(loaded, "plan")
                ctx.locked = self._take_lock(pool.get(hypervisor_endpoint(loaded)), loaded, run_id)
            for step in chosen:
                ctx.flags.update(step.host_options(loaded, opts.mode))
            self._run_steps(ctx, run, chosen, left_out)
        except Exception as exc:
            self._host_failed(ctx, run, exc)
        finally:
            self._finish(ctx, run)
        return run

    def _run_steps(self, ctx: _HostRun, run: HostRun, chosen: list[Step], left_out: dict[str, str]) -> None:
        """Every step in runbook order; a run that changes hosts stops at its first failure."""
        host = ctx.loaded.name
        for step in self.runbook.steps:
            if step.name in ctx.carried:
                verified = ctx.carried[step.name]
                self._record(ctx.records, run, self._skipped(host, step.name, f"verified in run {verified}", verified))
            elif step.name in left_out:
                self._record(ctx.records, run, self._skipped(host, step.name, left_out[step.name]))
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
                ctx.pool.get(hypervisor_endpoint(ctx.loaded)).run(lock.release(ctx.loaded.host.lock_path, ctx.run_id))
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
        error = describe(exc)
        exit_code = getattr(exc, "exit_code", 4)
        refused = None if ctx.locked else sudo_refusal(host, hypervisor_endpoint(ctx.loaded).user, exc)
        if refused:  # the lock is the first thing that needs sudo: say what preflight would
            error, exit_code = f"{refused}; nothing was changed", 3
        elif isinstance(exc, ConnectError | CommandError) and not ctx.locked and step and self.options.mode == "apply":
            error = f"{host}: before step {step}, taking the host lock: {exc}"
        elif not error.startswith(f"{host}:"):
            error = f"{host}: {error}"
        run.error = error
        now = time.time()
        self._record(ctx.records, run, StepResult(host, step or "(run)", host, "failed", now, now, error=error,
                                                  exit_code=exit_code))

    def _record(self, records: RunRecords, run: HostRun, result: StepResult) -> None:
        run.results.append(result)
        records.journal(result)
        self.output.step_done(result)

    def _skipped(self, host: str, step: str, reason: str, verified_in: str = "") -> StepResult:
        now = time.time()
        return StepResult(host, step, host, "skipped", now, now, reason=reason, verified_in=verified_in)

    # -- which steps: --from, --only, --skip, --resume ---------------------------------------
    def _selection(self, loaded: LoadedHost, run_id: str) -> tuple[list[Step], dict[str, str], dict[str, str]]:
        opts = self.options
        from_step = opts.from_step
        carried: dict[str, str] = {}
        if opts.resume:
            from_step, carried = self._resume_point(loaded.name, run_id)
        chosen, left_out = select(self.runbook, from_step=from_step, only=opts.only, skip=opts.skip)
        return chosen, left_out, carried

    def _resume_point(self, host: str, this_run: str) -> tuple[str | None, dict[str, str]]:
        """Start at the first step the last run of this runbook on this host did not verify.

        Read from the journal's structured fields (status, verified_in), never from reason text: a
        step that was skipped, failed or never reached is run again, whatever its reason says.
        """
        for run_dir in reversed(runs_of(self.options.runs_dir, host)):
            meta_file = run_dir / "run.json"
            if run_dir.name == this_run or not meta_file.exists():
                continue
            meta = json.loads(meta_file.read_text())
            if meta.get("runbook") != self.runbook.name or meta.get("mode") != "apply":
                continue
            if meta.get("vm_filter", []) != list(self.options.flags.get("vms") or ()):
                continue  # a run limited by --vm verified its steps on those VMs only
            results = read_journal(run_dir)
            verified_in: dict[str, str] = {}
            for name in self.runbook.names:
                runs = {r.verified_in for r in results if r.step == name}
                if not runs or "" in runs:
                    break
                verified_in[name] = sorted(runs)[0]
            if len(verified_in) == len(self.runbook.names):
                raise RunbookError(f"{host}: every step of {self.runbook.name} was verified in run {run_dir.name}; "
                                   "nothing to resume (run without --resume to check again)")
            return self.runbook.names[len(verified_in)], verified_in
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
    def _run_step(self, step: Step, ctx: _HostRun, run: HostRun) -> bool:
        """Run one step on all its targets and record each result; False when any failed."""
        host = ctx.loaded.name
        if self.stop.is_set():
            raise Interrupted(f"{host}: interrupted by the operator before step {step.name}, which had not started")
        ctx.records.log(f"{host}: step {step.name} started")
        targets = targets_for(step, ctx.loaded, ctx.flags)
        if not targets:
            # Nothing to do and nothing to verify: verified, vacuously, so resume carries it.
            results = [self._skipped(host, step.name, f"no {step.targets} targets on this host", ctx.run_id)]
        else:
            one_at_a_time = threading.Lock()  # for plans marked exclusive
            with ThreadPoolExecutor(max_workers=len(targets)) as threads:
                results = list(threads.map(lambda t: self._run_target(step, t, ctx, one_at_a_time), targets))
        for result in results:
            self._record(ctx.records, run, result)
        return all(r.status != "failed" for r in results)

    def _run_target(self, step: Step, target: Target, ctx: _HostRun, one_at_a_time: threading.Lock) -> StepResult:
        self.output.step_started(target.loaded.name, step.name, target.name)
        job = _TargetRun(step, target, ctx)
        modes: dict[Mode, Callable[[_TargetRun], StepResult]] = {
            "offline": self._offline, "plan": self._plan, "verify": self._verify,
            "apply": lambda j: self._apply(j, one_at_a_time),
        }
        try:
            return modes[self.options.mode](job)
        except StepMismatch as drift:
            return job.failed(drift.exit_code, f"{job.where}: {drift.message}", checks=tuple(drift.checks))
        except _NotYet as late:
            return job.failed(4, f"{job.where}: did not converge within {self.options.policies.converge.deadline:g} s",
                              checks=tuple(late.checks))
        except Interrupted:
            done = f"after {len(job.commands)} of its commands" if job.commands else "before any of its commands"
            return job.failed(Interrupted.exit_code, f"{job.where}: interrupted by the operator {done} (the command "
                                                     "in flight finished); the step is redone on resume")
        except Exception as exc:  # anything at all: this target failed, every other one goes on
            ctx.records.log(f"{job.where}: {describe(exc)}\n{traceback.format_exc()}")
            return job.failed(getattr(exc, "exit_code", 4) if isinstance(exc, ToolError) else 4,
                              f"{job.where}: {describe(exc)}")

    # -- the four modes, one function each --------------------------------------------------
    def _offline(self, job: _TargetRun) -> StepResult:
        return job.planned(job.step.plan(job.target, None))

    def _plan(self, job: _TargetRun) -> StepResult:
        self._check_stop()
        return job.planned(job.step.plan(job.target, job.step.gather(job.target, job.session())))

    def _verify(self, job: _TargetRun) -> StepResult:
        self._check_stop()
        facts = job.step.gather(job.target, job.session())
        return self._verdict(job, job.step.verify(job.target, facts), changed=False)

    def _apply(self, job: _TargetRun, one_at_a_time: threading.Lock) -> StepResult:
        step, target = job.step, job.target
        self._check_stop()
        session = job.session()
        facts = step.gather(target, session)
        plan = step.plan(target, facts)
        if step.destructive and plan.actions and not target.options.get("yes"):
            return job.failed(2, f"{job.where} would delete: {plan.reason}; nothing was deleted: rerun with --yes "
                                 "to delete it", planned=tuple(_shown(a) for a in plan.actions))
        with one_at_a_time if plan.exclusive else contextlib.nullcontext():
            self._do(plan.actions, session, job.commands, target, job.host.answers)
            checks = self._fresh_checks(step, target, session, facts, job.host.answers, changed=bool(plan.actions))
        result = self._verdict(job, checks, changed=bool(plan.actions))
        return result if result.status == "failed" else replace(result, reason=plan.reason, warnings=plan.warnings)

    def _fresh_checks(self, step: Step, target: Target, session: Session, facts: Any, answers: Answers, *,
                      changed: bool) -> list[Check]:
        # Fresh facts after a change; with nothing applied the facts just read are fresh, and a
        # convergence step only waits when they do not already hold.
        checks = [] if changed else step.verify(target, facts)
        if step.converge and (changed or _failed(checks)):
            return self._converge(step, target, session, answers)
        return step.verify(target, step.gather(target, session)) if changed else checks

    def _do(self, actions: tuple[Any, ...], session: Session, commands: list[str], target: Target,
            answers: Answers) -> None:
        for action in actions:
            self._check_stop()
            commands.append(_shown(action))
            answers.forget()  # a change: no shared read from before it serves anyone after it
            if isinstance(action, Upload):
                session.put(action.source or action.data, action.path, action.mode,
                            owner=action.owner, group=action.group)
            elif isinstance(action, OnPeer):  # kubectl on the k3s server, for a VM whose commands run elsewhere
                (session.peer(target.peer) if target.peer else session).run(action.command)
            elif isinstance(action, Await):
                self._converge(action.step, target, session, answers)
            else:
                session.run(action)
            answers.forget()  # and none read while it ran

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted("interrupted by the operator")

    def _verdict(self, job: _TargetRun, checks: list[Check], *, changed: bool) -> StepResult:
        bad = _failed(checks)
        if bad:
            return job.failed(job.step.mismatch_exit,
                              f"{job.target.loaded.name}: verification of {job.step.name} failed on {job.target.name}: "
                              f"{len(bad)} of {len(checks)} checks differ from the spec", checks=tuple(checks))
        return job.result("changed" if changed else "ok", checks=tuple(checks))

    def _converge(self, step: Step, target: Target, session: Session, answers: Answers) -> list[Check]:
        last: list[Check] = []

        def attempt() -> list[Check]:
            nonlocal last
            answers.forget()  # waiting for a change: every attempt reads afresh
            try:
                checks = step.verify(target, step.gather(target, session))
            except (CommandError, ConnectError) as exc:
                checks = [Check("reachable", "yes", str(exc).splitlines()[0], False)]
            last = checks
            if _failed(checks):
                raise _NotYet(checks)
            return checks

        policy = self.options.policies.converge

        def waiting(state: Any) -> None:  # signs of life: what it waits for, the attempt, the time
            first = next(iter(_failed(last)), None)
            now = first.found.splitlines()[0][:60] if first and first.found else ""
            what = f"{first.name} (now {now})" if first else "the step's checks"
            elapsed = max(state.idle_for, state.seconds_since_start or 0.0)
            limit = f" of {policy.deadline:g} s" if policy.deadline else ""
            # Attempt and time first: a narrow terminal cuts the end of the line, not the progress.
            self.output.waiting(target.loaded.name, f"{step.name} {target.name}: attempt {state.attempt_number}, "
                                                    f"{elapsed:.0f} s{limit}, waiting for {what}")

        try:
            return retrying(policy, lambda e: isinstance(e, _NotYet), self._sleep, waiting)(attempt)
        except _NotYet:
            raise _NotYet(last) from None


def _shown(action: Any) -> str:
    return str(action.shown)


def _planned(actions: tuple[Any, ...], host: str) -> tuple[str, ...]:
    """Plan modes: each action as shown, with the bodies (or diffs) of the files it writes."""
    from lib.planview import describe as describe_action

    return tuple(describe_action(a, host) for a in actions)


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
        lines = [f"{run.host}: FAILED (exit {run.exit_code})"]
        for failed in (r for r in run.results if r.status == "failed"):
            lines.append(f"  step {failed.step} on {failed.target}")
            lines += [f"  {line}" for line in failed.error.splitlines()]
            if failed.checks:
                lines.append(verification_table(failed))
        if not any(r.status == "failed" for r in run.results):
            lines.append(f"  {run.error}")
        if run.resume_hint and run.exit_code != 2:
            lines.append(f"  resume: {run.resume_hint}")
        lines.append(f"  records: {run.records}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
