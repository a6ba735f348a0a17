"""What the operator sees: a live line per host on a TTY, plain lines otherwise, and the recap.

Hosts run in parallel threads, so every write holds a lock; every text passes through mask().
"""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

from lib.results import STATUSES, HostRun, StepResult
from lib.shell import mask

_MARK = {"ok": "ok", "changed": "changed", "failed": "FAILED", "skipped": "skipped"}


class Output:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._lines: dict[str, str] = {}
        self._live: Any = None
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True)
            self._live = Live("", console=console, refresh_per_second=8, transient=True)
            self._live.start()

    def _render(self) -> None:
        from rich.text import Text

        self._live.update(Text("\n".join(f"{host:<12} {line}" for host, line in sorted(self._lines.items()))))

    def step_started(self, host: str, step: str, target: str) -> None:
        if not self.tty:
            return
        with self._lock:
            self._lines[host] = mask(f"▸ {step}  {target}")
            self._render()

    def step_done(self, result: StepResult) -> None:
        with self._lock:
            line = plain_line(result)
            if self.tty:
                self._live.console.print(line, highlight=False, markup=False)
                self._lines[result.host] = mask(f"✓ {result.step}  {result.target}  {result.status}")
                self._render()
            else:
                self.stream.write(line + "\n")
                self.stream.flush()

    def message(self, text: str) -> None:
        with self._lock:
            if self.tty:
                self._live.console.print(mask(text), highlight=False, markup=False)
            else:
                self.stream.write(mask(text) + "\n")

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def plain_line(result: StepResult) -> str:
    tail = (result.error.splitlines() or [""])[0] if result.status == "failed" else result.reason
    line = (f"{result.host} | {result.step} | {result.target} | {_MARK[result.status]} | "
            f"{result.duration:.2f}s | {tail}")
    for warning in result.warnings:
        line += f"\n{result.host} | {result.step} | {result.target} | WARNING | {warning}"
    return mask(line)


def recap(runs: list[HostRun], step_order: list[str]) -> str:
    width = max([len(r.host) for r in runs] + [10])
    lines = ["PLAY RECAP " + "*" * 69]
    for run in runs:
        counts = run.counts()
        cells = "  ".join(f"{s}={counts[s]:<3}" for s in STATUSES)
        lines.append(f"{run.host:<{width}} : {cells} wall {max(run.ended - run.started, 0):.2f}s")
        if run.error:
            lines.append(f"{'':<{width}}   {run.error.splitlines()[0]}")
    times: dict[str, float] = {}
    for run in runs:
        for result in run.results:
            if result.status != "skipped":
                times[result.step] = max(times.get(result.step, 0.0), result.duration)
    if times:
        lines += ["", "STEP TIMES (wall, slowest target)"]
        name_width = max(len(n) for n in times) + 2
        lines += [f"{name:<{name_width}}{times[name]:.2f}s" for name in step_order if name in times]
    return mask("\n".join(lines))


def verification_table(result: StepResult) -> str:
    rows = [("", "check", "expected", "found")] + [
        ("✓" if c.ok else "✗", c.name, c.expected, c.found) for c in result.checks]
    widths = [max(len(r[i]) for r in rows) for i in range(1, 3)]
    lines = [f"  {mark} {name:<{widths[0]}}  {expected:<{widths[1]}}  {found}" for mark, name, expected, found in rows]
    return mask("\n".join(lines))


def plan_text(runs: list[HostRun]) -> str:
    lines: list[str] = []
    for run in runs:
        for result in run.results:
            head = f"{run.host} | {result.step} | {result.target}"
            if result.status == "failed":
                lines.append(f"{head}: cannot plan: {(result.error.splitlines() or [''])[0]}")
            elif result.status == "skipped":
                lines.append(f"{head}: skipped ({result.reason})")
            elif result.planned:
                lines.append(f"{head}: would run ({result.reason}):")
                lines += [f"    {cmd}" for cmd in result.planned]
            else:
                lines.append(f"{head}: no change: {result.reason}")
            lines += [f"    WARNING: {w}" for w in result.warnings]
    return mask("\n".join(lines))
