"""How a failure reads: an exception, a host that failed outside its targets, a verification that
found differences, a convergence wait, and the block per failed host printed at the end of a run.

Every wording here is what the operator reads in an 80-column terminal and what the records keep:
host, step, what was expected and found, where the evidence is, and the command to resume.
"""

from __future__ import annotations

from lib.errors import ToolError
from lib.output import verification_table
from lib.results import Check, HostRun
from lib.sudo import sudo_refusal
from lib.transport import CommandError, ConnectError


def describe(exc: BaseException) -> str:
    """An exception as the operator reads it: our typed errors by their message, others by type too."""
    if isinstance(exc, ToolError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def host_failure(host: str, step: str, exc: Exception, *, locked: bool, changing: bool,
                 user: str) -> tuple[str, int]:
    """A failure outside any target (before or between steps): its error text and exit code.

    Before the host lock is held, the failure was taking it: sudo refusing for want of a password is
    said as preflight.access says it (exit 3, nothing changed); a lost connection names the step the
    run was about to start."""
    error = describe(exc)
    exit_code: int = getattr(exc, "exit_code", 4)
    refused = None if locked else sudo_refusal(host, user, exc)
    if refused:  # the lock is the first thing that needs sudo: say what preflight would
        return f"{refused}; nothing was changed", 3
    if isinstance(exc, ConnectError | CommandError) and not locked and step and changing:
        return f"{host}: before step {step}, taking the host lock: {exc}", exit_code
    if not error.startswith(f"{host}:"):
        error = f"{host}: {error}"
    return error, exit_code


def verification_failed(host: str, step: str, target: str, bad: int, total: int) -> str:
    return f"{host}: verification of {step} failed on {target}: {bad} of {total} checks differ from the spec"


def not_converged(where: str, deadline: float | None) -> str:
    return f"{where}: did not converge within {deadline:g} s"


def interrupted_target(where: str, commands: int) -> str:
    done = f"after {commands} of its commands" if commands else "before any of its commands"
    return f"{where}: interrupted by the operator {done} (the command in flight finished); the step is redone on resume"


def would_delete(where: str, reason: str) -> str:
    return f"{where} would delete: {reason}; nothing was deleted: rerun with --yes to delete it"


def convergence_progress(step: str, target: str, attempt: int, elapsed: float, deadline: float | None,
                         first_failed: Check | None) -> str:
    """Signs of life in a convergence wait. Attempt and time first: a narrow terminal cuts the end of
    the line, not the progress."""
    now = first_failed.found.splitlines()[0][:60] if first_failed and first_failed.found else ""
    what = f"{first_failed.name} (now {now})" if first_failed else "the step's checks"
    limit = f" of {deadline:g} s" if deadline else ""
    return f"{step} {target}: attempt {attempt}, {elapsed:.0f} s{limit}, waiting for {what}"


def failure_text(runs: list[HostRun]) -> str:
    """For each host that failed: where, what was expected and found, and the command to resume."""
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
