"""How monitor and doctor print: one table per VM (red where the spec's threshold is passed), or JSON."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from rich.console import Console

from lib import verdicts
from lib.results import HostRun, StepResult
from lib.shell import mask
from lib.verdicts import not_available


def unread(runs: list[HostRun]) -> list[StepResult]:
    """Targets that could not be read at all (host unreachable, libvirt down): failed with no checks."""
    return [r for run in runs for r in run.results if r.status == "failed" and not r.checks]


def _first_line(text: str) -> str:
    return (text.splitlines() or [""])[0]


def _value(text: str) -> Any:
    """A number stays a number in JSON ("72.0%" -> 72.0, its unit in `unit`); other texts stay texts."""
    from lib.checks_json import number_of

    parsed = number_of(text)
    return text if parsed is None else parsed[0]


def metrics(runs: list[HostRun]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{host: {vm: {metric: {value, unit, text, threshold, ok}}}}: the shape --json prints.

    A target that could not be read has one metric, "error", whose value says why (never a silent {}).
    """
    from lib.checks_json import number_of

    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for run in runs:
        host = out.setdefault(run.host, {})
        for r in run.results:
            # ok is null for a value that could not be read: "not available" is never "ok".
            rows = {c.name: {"value": _value(c.found), "unit": (number_of(c.found) or (0, ""))[1], "text": c.found,
                             "threshold": c.expected, "ok": None if not_available(c.found) else c.ok}
                    for c in r.checks}
            if r.status == "failed" and not r.checks:
                rows = {"error": {"value": _first_line(r.error), "unit": "", "text": _first_line(r.error),
                                  "threshold": "readable", "ok": False}}
            host.setdefault(r.target, {}).update(rows)
    return out


def show_runs(runs: list[HostRun], *, as_json: bool = False, out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    if as_json:
        stream.write(mask(json.dumps(metrics(runs), indent=2)) + "\n")
        return
    from lib.monitor.screen import host_view

    console = Console(file=stream, highlight=False)
    for host, vms in metrics(runs).items():  # a column per VM where it fits (lib/monitor/screen.py)
        console.print(host_view(host, vms))


def show_prometheus(runs: list[HostRun], path: str, out: TextIO | None = None) -> None:
    """The sample's numbers (monitor.sample's NUMBERS_ROW) as Prometheus text: to `path`, or `-` for stdout."""
    from lib.monitor.prom import NUMBERS_ROW, VmNumbers, exposition, write_textfile

    rows = [(run.host, r.target, VmNumbers.from_json(json.loads(c.found)))
            for run in runs for r in run.results for c in r.checks if c.name == NUMBERS_ROW]
    if path == "-":
        (out or sys.stdout).write(exposition(rows))
    else:
        write_textfile(path, rows)


# A finding that could not be measured is N/A, and a kernel thread on a vCPU CPU a WARNING: neither is "ok".
_FINDING_MARKS = {"ok": "ok     ", "breach": "PROBLEM", "warning": "WARNING", "not available": "N/A    "}


def show_findings(runs: list[HostRun], out: TextIO | None = None) -> bool:
    """Each finding: symptom, evidence, fix. Returns True when any finding is a problem or any host or
    target could not be examined (never "no problems found" for a host that was not reached)."""
    stream = out or sys.stdout
    problems = 0
    missed = unread(runs)
    for result in missed:
        stream.write(mask(f"NOT EXAMINED {result.host} ({result.target}): {_first_line(result.error)}\n"))
    warnings = 0
    for run in runs:
        for result in run.results:
            for check in result.checks:
                state = verdicts.state(check)
                head = f"{_FINDING_MARKS[state]} {run.host}: {check.name}"
                stream.write(mask(f"{head}\n        evidence: {check.found}\n")
                             + ("" if state == "ok" else mask(f"        fix: {check.expected}\n")))
                problems += not check.ok
                warnings += state == "warning"
    also = f" ({warnings} warning(s): reported, no step fixes them or the inventory accepts them)" if warnings else ""
    if missed:
        stream.write(f"\n{problems} problem(s) found{also}; {len(missed)} target(s) not examined, "
                     "so there may be more\n")
    else:
        stream.write(f"\n{problems} problem(s) found{also}\n" if problems else f"\nno problems found{also}\n")
    return problems > 0 or bool(missed)
