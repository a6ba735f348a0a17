"""What the operator sees: one live line per host on a TTY, plain lines otherwise, and the recap.

Hosts (and a step's targets) run in parallel threads, so every write holds one lock; every text
passes through terminal() before it reaches the terminal: secrets masked, control characters escaped.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from lib.results import OUTCOMES, STATUSES, Check, HostRun, StepResult
from lib.shell import terminal

if TYPE_CHECKING:  # rich is only imported when a terminal is really driven
    from rich.live import Live

# Marks in the live line: a target still running, then how it ended.
_RUNNING = "…"
_MARKS = {"ok": "✓", "changed": "✓", "failed": "✗", "skipped": "-"}
_STYLES = {"ok": "green", "changed": "yellow", "failed": "bold red", "skipped": "dim"}
# A check's outcome as a text marker (never colour alone): what a log or a screen reader keeps.
OUTCOME_MARKS = {"passed": "✓", "failed": "✗", "warning": "!", "evidence": "i"}


@dataclass
class _HostLine:
    steps: list[str] = field(default_factory=list)  # steps seen so far, in order: the "(2/5)" counter
    total: int | None = None
    targets: dict[str, str] = field(default_factory=dict)  # target -> mark, for the current step
    note: str = ""  # what the host's step waits for right now (Output.waiting)

    def enter(self, step: str) -> None:
        if not self.steps or self.steps[-1] != step:
            self.steps.append(step)
            self.targets = {}

    def render(self, host: str, width: int) -> str:
        of = f"{len(self.steps)}/{self.total}" if self.total else str(len(self.steps))
        marks = " ".join(f"{target} {mark}" for target, mark in self.targets.items())
        line = f"{host:<{width}}  ▸ {self.steps[-1] if self.steps else ''}  ({of})  {marks}".rstrip()
        return f"{line}\n  {self.note}" if self.note else line


class Output:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._hosts: dict[str, _HostLine] = {}
        self._live: Live | None = None

    # -- the live display (TTY only); callers hold the lock ----------------------------------
    def _ensure_live(self) -> Live:
        # Started on first use, not in __init__: an Output that never shows progress (plan mode,
        # an early error) must not take over the terminal.
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True, highlight=False)
            # Redirecting sys.stdout only makes sense when that is the stream being drawn on.
            own = self.stream is sys.stdout
            self._live = Live(console=console, refresh_per_second=8, transient=True,
                              redirect_stdout=own, redirect_stderr=False)
            self._live.start()
        return self._live

    def _refresh(self) -> None:
        from rich.text import Text

        width = max(len(h) for h in self._hosts)
        lines = [terminal(line.render(host, width)) for host, line in sorted(self._hosts.items())]
        self._ensure_live().update(Text("\n".join(lines), no_wrap=True, overflow="ellipsis"), refresh=True)

    def _host(self, host: str) -> _HostLine:
        return self._hosts.setdefault(host, _HostLine())

    # -- what the runner calls ---------------------------------------------------------------
    def host_started(self, host: str, steps: int) -> None:
        """Optional: the number of steps this host will go through, for "(2/5)" instead of "(2)"."""
        with self._lock:
            self._host(host).total = steps

    def step_started(self, host: str, step: str, target: str) -> None:
        if not self.tty:
            return  # plain output reports results only: one line per finished target
        with self._lock:
            line = self._host(host)
            line.enter(step)
            line.targets[target] = _RUNNING
            line.note = ""
            self._refresh()

    def waiting(self, host: str, text: str) -> None:
        """A step waits or retries: on a TTY under the host's live line, else one plain line per attempt."""
        text = terminal(text)
        with self._lock:
            if not self.tty:
                self.stream.write(f"{host} | {text}\n")
                self.stream.flush()
                return
            self._host(host).note = text
            self._refresh()

    def step_done(self, result: StepResult) -> None:
        text = plain_line(result)
        with self._lock:
            if not self.tty:
                self.stream.write(text + "\n")
                self.stream.flush()
                return
            from rich.text import Text

            # Finished results scroll above the live lines, so the history stays after close().
            live = self._ensure_live()
            live.console.print(Text(text, style=_STYLES[result.status]), soft_wrap=True)
            line = self._host(result.host)
            line.enter(result.step)  # skipped steps never "start"; they still count
            line.targets[result.target] = _MARKS[result.status]
            line.note = ""
            self._refresh()

    def message(self, text: str) -> None:
        text = terminal(text)
        with self._lock:
            if self._live is not None:
                self._live.console.print(text, markup=False, soft_wrap=True)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def close(self) -> None:
        """Stop the live display (idempotent); the finished lines printed above it remain."""
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None


def _first_line(text: str) -> str:
    return (text.splitlines() or [""])[0]


def plain_line(result: StepResult) -> str:
    """`hv1 | host.tune | hv1 | changed | 0.42s | why`: one greppable line per target and step."""
    tail = f"{result.status} | {result.duration:.2f}s | "
    tail += _first_line(result.error) if result.status == "failed" else _first_line(result.reason)
    head = f"{result.host} | {result.step} | {result.target}"
    lines = [f"{head} | {tail}".rstrip()]
    lines += [f"{head} | WARNING | {w}" for w in result.warnings]
    return terminal("\n".join(lines))


def recap(runs: list[HostRun], step_order: list[str], times: bool = True) -> str:
    """Ansible's PLAY RECAP, plus each step's wall time (its slowest target, the slowest host) unless
    times=False (a plan: its steps only read, their times say nothing)."""
    width = max([len(r.host) for r in runs] + [10])
    lines = ["PLAY RECAP " + "*" * 69]
    for run in runs:
        counts = run.counts()
        cells = "".join(f"{s}={counts[s]:<3}" for s in STATUSES)
        lines.append(f"{run.host:<{width}} : {cells} wall {max(run.ended - run.started, 0.0):.2f}s")
        checks = run.check_counts()
        if any(checks.values()):
            lines.append(f"{'':<{width}}   checks: " + " ".join(f"{k}={checks[k]}" for k in OUTCOMES))
        # Each warning named, not only counted: host | step | target | check, then what was found, cut to
        # the 80-column terminal (the whole text is in the run's report.json and junit.xml).
        for r in run.results:
            for c in (c for c in r.checks if c.kind == "warning"):
                lines.append(_cell(f"{'':<{width}}   ! {run.host} | {r.step} | {r.target} | {c.name}"))
                lines.append(_fit(_cell(f"{'':<{width}}       found: {c.found}")))
        if run.error:
            lines.append(f"{'':<{width}}   {_first_line(run.error)}")  # the whole error follows the recap
        if run.records:
            lines.append(f"{'':<{width}}   records: {run.records}")
    durations: dict[str, float] = {}
    for run in runs:
        for result in run.results:
            if result.status != "skipped":  # a skipped step took no time; listing 0.00s is noise
                durations[result.step] = max(durations.get(result.step, 0.0), result.duration)
    if times and durations:
        # Runbook order first; steps outside it (an ad hoc step) after, in the order they ran.
        names = [n for n in step_order if n in durations] + [n for n in durations if n not in step_order]
        name_width = max([len(n) + 2 for n in names] + [16])
        lines += ["", "STEP TIMES (wall, slowest target)"]
        lines += [f"{name:<{name_width}}{durations[name]:.2f}s" for name in names]
    return terminal("\n".join(lines))


def _fit(text: str, columns: int = 80) -> str:
    return text if len(text) <= columns else text[: columns - 3] + "..."


def _cell(text: str) -> str:
    return text.replace("\n", "\\n")  # one row per check, whatever the found value holds


def _order(check: Check) -> int:
    return ("failed", "warning", "passed", "evidence").index(check.kind)


def verification_table(result: StepResult) -> str:
    """Failed checks first (what to fix), then warnings, passes and evidence, as fixed-width columns.

    Markers: ✓ passed, ✗ failed, ! warning (differs in an accepted way), i evidence (reported only).
    """
    checks = sorted(result.checks, key=_order)
    rows = [(" ", "check", "expected", "found")]
    rows += [(OUTCOME_MARKS[c.kind], _cell(c.name), _cell(c.expected), _cell(c.found)) for c in checks]
    name_w = max(len(r[1]) for r in rows) + 2
    exp_w = max(len(r[2]) for r in rows) + 2
    return terminal("\n".join(f"{m} {n:<{name_w}}{e:<{exp_w}}{f}".rstrip() for m, n, e, f in rows))
