"""How a plan shows an action: the files it writes in full (a unified diff against the host when the
facts hold the host's copy), long commands cut to a readable head with the vCPU pins as a table, and
a per-step stream ending in `plan: N to change, M unchanged, K unknown`.

describe() is pure; what it returns is what the run's journal keeps for the step (`planned`), so the
run directory holds every full command and body. Every text passes through mask(): secrets are ***.
"""

from __future__ import annotations

import difflib
import re
import sys
import threading
from typing import Any, TextIO

from lib.results import HostRun, StepResult
from lib.shell import Command, FileBody, mask, terminal

# Longer commands show their first LONG characters on the terminal; the journal keeps them whole.
LONG = 300
_BODY_LIMIT = 64 * 1024  # larger uploads are artifacts, not files anyone reads in a plan
_PIN = re.compile(r"vcpupin(\d+)\.vcpu=(\d+),vcpupin\1\.cpuset=([0-9,-]+)")
_EMULATOR = re.compile(r"emulatorpin\.cpuset=([0-9,-]+)")


def _text_of(data: bytes) -> str | None:
    if not data or len(data) > _BODY_LIMIT or b"\0" in data:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def bodies(action: Any) -> tuple[FileBody, ...]:
    """The files an action writes, as FileBody values (an Upload's own text when it names none)."""
    if isinstance(action, Command):
        return action.writes
    shows = getattr(action, "shows", ())
    if shows:
        return tuple(shows)
    text = _text_of(getattr(action, "data", b"")) if getattr(action, "source", None) is None else None
    return (FileBody(action.path, text, None, action.mode),) if text is not None else ()


def body_lines(body: FileBody, host: str) -> list[str]:
    """The whole file, or a unified diff from the host's copy to the spec's (nothing: identical)."""
    mode = f" (mode {body.mode:o})" if body.mode is not None else ""
    text = mask(body.text)
    if body.before is None:
        return [f"{body.path}{mode}:"] + [f"  | {line}" for line in text.splitlines()]
    diff = list(difflib.unified_diff(mask(body.before).splitlines(), text.splitlines(),
                                     f"{body.path} (on {host})", f"{body.path} (spec)", lineterm=""))
    return [f"{body.path}{mode}: diff against the host"] + [f"  {line}" for line in diff] if diff else \
        [f"{body.path}{mode}: same as on the host"]


def pins_table(shown: str) -> list[str]:
    """virt-install's --cputune as rows: vCPU -> host CPU(s), and the emulator's CPUs."""
    pins = _PIN.findall(shown)
    if not pins:
        return []
    rows = ["vCPU  host CPU"] + [f"{vcpu:>4}  {cpus.strip(',')}" for _n, vcpu, cpus in pins]
    emulator = _EMULATOR.search(shown)
    if emulator:
        rows.append(f"emulator  {emulator.group(1).strip(',')}")
    return rows


def describe(action: Any, host: str = "host") -> str:
    """One planned action as the journal keeps it: the command as shown, then the files it writes."""
    files = bodies(action)
    if isinstance(action, Command) and files:  # a printf of the body into place: the body says it all
        lines = [f"write {', '.join(b.path for b in files)} (beside it, then renamed into place)"]
    else:
        lines = [str(action.shown)]
    for body in files:
        lines += body_lines(body, host)
    return mask("\n".join(lines))


def _terminal_lines(planned: str) -> list[str]:
    """A planned action for the terminal: long command lines cut, pins as a table, bodies in full."""
    head, *rest = planned.split("\n")
    out: list[str] = []
    if len(head) > LONG and not head.startswith("upload "):
        table = pins_table(head)
        out.append(f"{head[:LONG]}… ({len(head)} characters; the whole command is in the run's journal.jsonl)")
        out += [f"  {row}" for row in table]
    else:
        out.append(head)
    return out + rest


def block(result: StepResult) -> str:
    """What one target's plan says, as the stream prints it."""
    head = f"{result.host} | {result.step} | {result.target}"
    lines: list[str] = []
    if result.status == "failed":
        lines.append(f"{head}: cannot plan: {(result.error.splitlines() or [''])[0]}")
        if result.checks:  # a drift: the spec and the host side by side, the differing fields first
            from lib.output import verification_table

            lines += [f"    {row}" for row in verification_table(result).splitlines()]
    elif result.status == "skipped":
        lines.append(f"{head}: skipped: {result.reason}")
    elif result.planned:
        lines.append(f"{head}: would run ({result.reason}):")
        for planned in result.planned:
            lines += [f"    {line}" for line in _terminal_lines(planned)]
    else:
        lines.append(f"{head}: no change: {result.reason}")
    lines += [f"    WARNING: {w}" for w in result.warnings]
    return mask("\n".join(lines))


def plan_summary(runs: list[HostRun]) -> str:
    """`plan: 21 to change, 3 unchanged, 0 unknown` (unknown: a target whose plan could not be made)."""
    results = [r for run in runs for r in run.results]
    change = sum(1 for r in results if r.status == "changed")
    same = sum(1 for r in results if r.status == "ok")
    unknown = sum(1 for r in results if r.status == "failed") + sum(1 for run in runs if run.error and not run.results)
    return f"plan: {change} to change, {same} unchanged, {unknown} unknown"


def _folded_reason(result: StepResult) -> str | None:
    """The reason a result folds with others on one line (skipped, or restarted by another step), else None."""
    if result.warnings or result.planned or result.status not in ("skipped", "ok"):
        return None
    reason = result.reason.removeprefix(f"{result.target}: ")
    if result.status == "skipped":
        return f"skipped: {reason}"
    return f"no change: {reason}" if reason.startswith("restarted by ") else None


def folded(host: str, results: list[StepResult]) -> list[str]:
    """Skipped and "restarted by" results as one line per reason: the steps (or targets) it covers."""
    groups: dict[str, list[StepResult]] = {}
    for result in results:
        groups.setdefault(_folded_reason(result) or "", []).append(result)
    lines = []
    for reason, members in groups.items():
        steps = list(dict.fromkeys(r.step for r in members))
        targets = list(dict.fromkeys(r.target for r in members))
        if len(steps) == 1:
            lines.append(f"{host} | {steps[0]} | {', '.join(targets)}: {reason}")
        elif targets == [host]:
            lines.append(f"{host} | {len(steps)} steps {reason}: {', '.join(steps)}")
        else:
            lines.append(f"{host} | {reason}: " + ", ".join(
                f"{s} ({', '.join(r.target for r in members if r.step == s)})" for s in steps))
    return lines


class PlanOutput:
    """The runner's output in plan modes: each target's plan printed as soon as it is made; skipped
    steps, and targets another step restarts, folded into one line per reason (416 lines of hv1's
    plan were 24 lines of those)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()
        self._folding: dict[str, list[StepResult]] = {}

    def host_started(self, host: str, steps: int) -> None:
        pass

    def step_started(self, host: str, step: str, target: str) -> None:
        pass

    def _flush(self, host: str) -> None:
        pending = self._folding.pop(host, [])
        if pending:
            self.stream.write(terminal("\n".join(folded(host, pending))) + "\n")

    def step_done(self, result: StepResult) -> None:
        with self._lock:
            if _folded_reason(result) is not None:
                self._folding.setdefault(result.host, []).append(result)
                return
            self._flush(result.host)
            self.stream.write(terminal(block(result)) + "\n")
            self.stream.flush()

    def waiting(self, host: str, text: str) -> None:
        self.message(f"{host} | {text}")

    def message(self, text: str) -> None:
        with self._lock:
            self.stream.write(terminal(text) + "\n")
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            for host in list(self._folding):
                self._flush(host)
            self.stream.flush()
