"""Runs a plan's actions on a target's shell, and waits (the converge policy) until a step's
verification holds: the two things the engine does to a host once a step has planned.

Before each action the run's stop flag is checked (Ctrl-C stops between commands, never inside
one); each change forgets the step's shared reads, so no answer older than a change serves anyone.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import RetryCallState

from lib.failures import convergence_progress
from lib.gather import gather
from lib.recorded import SharedReads
from lib.results import Check
from lib.retry import Policy, Sleep, retrying
from lib.sink import Sink
from lib.steps.base import Action, AnyStep, Await, OnPeer, Target, Upload
from lib.transport import CommandError, ConnectError, Shell


class NotYet(Exception):
    """A convergence wait ran out: the checks of its last attempt."""

    def __init__(self, checks: list[Check]) -> None:
        super().__init__("not converged")
        self.checks = checks


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]


class Executor:
    def __init__(self, policy: Policy, sleep: Sleep, check_stop: Callable[[], None], sink: Sink) -> None:
        self.policy, self.sleep, self.check_stop, self.sink = policy, sleep, check_stop, sink

    def do(self, actions: tuple[Action, ...], shell: Shell, commands: list[str], target: Target,
           shared: SharedReads) -> None:
        """Each action in order, its shown text appended to `commands` before it runs."""
        for action in actions:
            self.check_stop()
            commands.append(action.shown)
            shared.forget()  # a change: no shared read from before it serves anyone after it
            if isinstance(action, Upload):
                shell.put(action.source or action.data, action.path, action.mode,
                          owner=action.owner, group=action.group)
            elif isinstance(action, OnPeer):  # kubectl on the k3s server, for a VM whose commands run elsewhere
                (shell.peer(target.peer) if target.peer else shell).run(action.command)
            elif isinstance(action, Await):
                self.converge(action.step, target, shell, shared)
            else:
                shell.run(action)
            shared.forget()  # and none read while it ran

    def converge(self, step: AnyStep, target: Target, shell: Shell, shared: SharedReads) -> list[Check]:
        """Read and verify until every check holds; NotYet with the last checks when time runs out."""
        last: list[Check] = []

        def attempt() -> list[Check]:
            nonlocal last
            shared.forget()  # waiting for a change: every attempt reads afresh
            try:
                checks = step.verify(target, gather(step, target, shell))
            except (CommandError, ConnectError) as exc:
                checks = [Check("reachable", "yes", str(exc).splitlines()[0], False)]
            last = checks
            if failed(checks):
                raise NotYet(checks)
            return checks

        def waiting(state: RetryCallState) -> None:  # signs of life: what it waits for, the attempt, the time
            elapsed = max(state.idle_for, state.seconds_since_start or 0.0)
            self.sink.waiting(target.loaded.name, convergence_progress(
                step.name, target.name, state.attempt_number, elapsed, self.policy.deadline,
                next(iter(failed(last)), None)))

        try:
            return retrying(self.policy, lambda e: isinstance(e, NotYet), self.sleep, waiting)(attempt)
        except NotYet:
            raise NotYet(last) from None
