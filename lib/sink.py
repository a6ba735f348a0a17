"""Where the engine tells what happens as it happens: lib/output.py's Output (live lines on a
terminal, plain lines otherwise) or lib/planview.py's PlanOutput (each plan as soon as it is made).

Every method may be called from any host's or target's thread.
"""

from __future__ import annotations

from typing import Protocol

from lib.results import StepResult


class Sink(Protocol):
    def host_started(self, host: str, steps: int) -> None: ...

    def step_started(self, host: str, step: str, target: str) -> None: ...

    def waiting(self, host: str, text: str) -> None:
        """Signs of life during a convergence wait: what it waits for, the attempt, the time."""
        ...

    def step_done(self, result: StepResult) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...
