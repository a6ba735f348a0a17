"""--resume: where a run continues the last one, as a pure function of that run's journal.

Read from the journal's structured fields (status, verified_in), never from reason text: a step
that was skipped, failed or never reached is run again, whatever its reason says.
"""

from __future__ import annotations

from collections.abc import Sequence

from lib.results import StepResult
from lib.runbook import RunbookError


def resume_point(host: str, runbook: str, names: Sequence[str], last_run: str,
                 results: Sequence[StepResult]) -> tuple[str, dict[str, str]]:
    """The first step `last_run` did not verify on every target, and the steps before it, each with
    the run it was verified in (carried: recorded as skipped, not run again).

    Raises RunbookError when that run verified every step: there is nothing to resume.
    """
    verified_in: dict[str, str] = {}
    for name in names:
        runs = {r.verified_in for r in results if r.step == name}
        if not runs or "" in runs:
            break
        verified_in[name] = sorted(runs)[0]
    if len(verified_in) == len(names):
        raise RunbookError(f"{host}: every step of {runbook} was verified in run {last_run}; "
                           "nothing to resume (run without --resume to check again)")
    return names[len(verified_in)], verified_in
