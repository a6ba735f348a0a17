"""A wait the operator can see: one status line on the terminal's stderr while a step is in flight.

Online plan, status, monitor, doctor and `--json` print nothing until a step is done; vms.start's
reads of four guests took ~20 s on the lab with a silent screen (#30). Ticker wraps the runner's
output: after a step has waited more than `after` seconds it redraws one line on stderr, only when
stderr is a terminal, naming each host, step, the targets still waited on and for how long. It never
reaches stdout, the run's records or --json: it writes to the terminal and nowhere else, and clears
its line before anything else is printed.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from lib.results import StepResult


def status_line(waiting: dict[tuple[str, str], dict[str, float]], now: float, after: float) -> str:
    """Pure: `hv1 | vms.start | waiting on lab-data, lab-slm for 12 s` per step waited on longer than after."""
    parts = []
    for (host, step), targets in waiting.items():
        if not targets:
            continue
        since = min(targets.values())
        if now - since < after:
            continue
        parts.append(f"{host} | {step} | waiting on {', '.join(targets)} for {now - since:.0f} s")
    return "; ".join(parts)


class Ticker:
    """The runner's output, plus the status line of what is still being waited on (terminal only)."""

    def __init__(self, inner: Any, stream: TextIO | None = None, *, after: float = 2.0, every: float = 1.0,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic, live: bool = False) -> None:
        self.inner = inner
        self.stream = stream or sys.stderr
        # live: the inner output is provision's and verify's live display; the line goes into its
        # host line (its own `waiting` note), never beside it on stderr, which would tear the display.
        self.live = live
        self.tty = live or (self.stream.isatty() if tty is None else tty)
        self._noted: dict[str, float] = {}  # host -> when the runner last said what it waits for
        self.after, self.every, self.clock = after, every, clock
        self._waiting: dict[tuple[str, str], dict[str, float]] = {}
        self._lock = threading.RLock()
        self._shown = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.tty:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.tick()

    def tick(self) -> None:
        if self.live:
            self._note()
            return
        with self._lock:
            line = status_line(self._waiting, self.clock(), self.after)
            width = shutil.get_terminal_size((80, 24)).columns - 1
            if line:
                self.stream.write("\r\x1b[K" + (line if len(line) <= width else line[:width - 1] + "…"))
                self.stream.flush()
                self._shown = True
            else:
                self._clear()

    def _note(self) -> None:
        """Each host's live line says what it waits on, unless the runner said so itself lately (its
        note names the attempt and the deadline, more than this one can)."""
        now = self.clock()
        with self._lock:
            for (host, step), targets in list(self._waiting.items()):
                line = status_line({(host, step): targets}, now, self.after)
                if line and now - self._noted.get(host, -1e9) > 2 * self.every + self.after:
                    self.inner.waiting(host, line.split(" | ", 1)[1])

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def host_started(self, host: str, steps: int) -> None:
        self.inner.host_started(host, steps)

    def step_started(self, host: str, step: str, target: str) -> None:
        with self._lock:
            self._waiting.setdefault((host, step), {})[target] = self.clock()
        self.inner.step_started(host, step, target)

    def step_done(self, result: StepResult) -> None:
        with self._lock:
            key = (result.host, result.step)
            self._waiting.get(key, {}).pop(result.target, None)
            if not self._waiting.get(key):
                self._waiting.pop(key, None)
            self._clear()
            self.inner.step_done(result)

    def waiting(self, host: str, text: str) -> None:
        with self._lock:
            self._noted[host] = self.clock()
            self._clear()
            self.inner.waiting(host, text)

    def message(self, text: str) -> None:
        with self._lock:
            self._clear()
            self.inner.message(text)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._clear()
        self.inner.close()
