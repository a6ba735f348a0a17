"""monitor --watch: a refreshing screen on a terminal, timestamped plain samples otherwise.

A breach is written as BREACH beside the value (not only in red: NO_COLOR, logs and colour-blind
readers lose colour), counted per sample, and the caller exits non-zero when any sample breached.
Ctrl-C ends the watch normally; `count` ends it after that many samples (0: until Ctrl-C).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from lib.monitor.show import metrics
from lib.results import HostRun
from lib.shell import mask
from lib.verdicts import not_available, row_state


def stamp(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))


def breaches(runs: list[HostRun]) -> int:
    return sum(1 for run in runs for r in run.results for c in r.checks if not c.ok and not not_available(c.found))


def plain_sample(runs: list[HostRun], when: str) -> str:
    """One line per VM and metric, each with the sample's timestamp: greppable, sortable."""
    lines = []
    for host, vms in metrics(runs).items():
        for vm, rows in vms.items():
            for name, row in rows.items():
                mark = {"breach": "BREACH", "not available": "n/a"}.get(row_state(row), "ok")
                lines.append(f"{when} {host} {vm} | {name} | {row['text']} | threshold {row['threshold']} | {mark}")
    return mask("\n".join(lines))


def live_view(runs: list[HostRun], when: str, samples: int, breached: int) -> Any:
    """The screen for one sample: a header with the time and what breached now, then per host one
    table with a column per VM (lib/monitor/screen.py)."""
    from rich.console import Group
    from rich.text import Text

    from lib.monitor.screen import breached as breached_now
    from lib.monitor.screen import host_view

    found = metrics(runs)
    now = breached_now(found)
    parts: list[Any] = [Text(f"monitor  {when}  sample {samples}  breached samples {breached}  (Ctrl-C ends)")]
    if now:
        parts.append(Text("BREACH now: " + "; ".join(now), style="bold red"))
    parts += [host_view(host, vms) for host, vms in found.items()]
    return Group(*parts)


def watch_samples(sample: Callable[[], list[HostRun]], *, as_json: bool = False, count: int = 0,
                  out: TextIO | None = None, tty: bool | None = None) -> int:
    """Sample until Ctrl-C (or `count` samples); returns how many samples breached a threshold."""
    stream = out or sys.stdout
    live_screen = (stream.isatty() if tty is None else tty) and not as_json
    breached = samples = 0
    live = None
    if live_screen:
        from rich.console import Console
        from rich.live import Live

        live = Live(console=Console(file=stream), auto_refresh=False, screen=False)
        live.start()
    try:
        while not count or samples < count:
            runs = sample()
            samples += 1
            when = stamp()
            breached += breaches(runs) > 0
            if live is not None:
                live.update(live_view(runs, when, samples, breached), refresh=True)
            elif as_json:
                stream.write(mask(json.dumps({"time": when, "metrics": metrics(runs)})) + "\n")
            else:
                stream.write(plain_sample(runs, when) + "\n")
            stream.flush()
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    return breached
