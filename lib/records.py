"""Run records under .runs/<host>/<run-id>/: journal.jsonl, run.log, report.json, junit.xml.

Everything written passes through lib.shell.mask() first: secrets never reach a record, even when
a command echoed one back.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from lib.results import HostRun, StepResult
from lib.shell import mask


def new_run_id(now: float | None = None) -> str:
    """UTC timestamp plus 4 hex digits: sorts in time order, unique across parallel runs."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(2)}"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else ""


class RunRecords:
    def __init__(self, root: Path, host: str, run_id: str) -> None:
        self.dir = root / host / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _append(self, name: str, text: str) -> None:
        with self._lock, (self.dir / name).open("a", encoding="utf-8") as handle:
            handle.write(mask(text))
            handle.flush()

    def journal(self, result: StepResult) -> None:
        self._append("journal.jsonl", json.dumps(result.to_json(), sort_keys=True) + "\n")

    def log(self, line: str) -> None:
        self._append("run.log", f"{_iso(time.time())} {line}\n")

    def finish(self, run: HostRun) -> None:
        report: dict[str, Any] = {
            "host": run.host, "run_id": run.run_id, "runbook": run.runbook, "mode": run.mode,
            "started": run.started, "started_at": _iso(run.started),
            "ended": run.ended, "ended_at": _iso(run.ended),
            "exit_code": run.exit_code, "error": run.error, "resume_hint": run.resume_hint,
            "counts": run.counts(), "results": [r.to_json() for r in run.results],
        }
        (self.dir / "report.json").write_text(mask(json.dumps(report, indent=2, sort_keys=True)) + "\n")
        (self.dir / "junit.xml").write_text(mask(junit_xml(run)))


def junit_xml(run: HostRun) -> str:
    """Each verification check is a test case, so CI systems show them; failed steps without checks
    are errors, skipped steps are skipped cases."""
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", name=run.host)
    tests = failures = errors = skipped = 0
    for result in run.results:
        classname = f"{run.host}.{result.step}"
        duration = f"{result.duration:.3f}"
        if result.status == "skipped":
            case = ET.SubElement(suite, "testcase", classname=classname, name=f"{result.target}: {result.step}",
                                 time=duration)
            ET.SubElement(case, "skipped", message=result.reason)
            tests, skipped = tests + 1, skipped + 1
            continue
        if not result.checks:
            case = ET.SubElement(suite, "testcase", classname=classname, name=f"{result.target}: {result.step}",
                                 time=duration)
            tests += 1
            if result.status == "failed":
                first = (result.error.splitlines() or [""])[0]
                ET.SubElement(case, "error", message=first).text = result.error
                errors += 1
            continue
        for check in result.checks:
            case = ET.SubElement(suite, "testcase", classname=classname, name=f"{result.target}: {check.name}",
                                 time=duration)
            tests += 1
            if not check.ok:
                failure = ET.SubElement(case, "failure", message=f"expected {check.expected}, found {check.found}")
                failure.text = f"expected: {check.expected}\nfound: {check.found}"
                failures += 1
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    suite.set("time", f"{max(run.ended - run.started, 0):.3f}")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def runs_of(root: Path, host: str) -> list[Path]:
    base = root / host
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def read_journal(run_dir: Path) -> list[StepResult]:
    """A crashed run may leave a truncated last line: it is ignored, the rest is read."""
    path = run_dir / "journal.jsonl"
    if not path.exists():
        return []
    results: list[StepResult] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            results.append(StepResult.from_json(json.loads(line)))
        except (json.JSONDecodeError, TypeError, KeyError):
            continue
    return results


def read_report(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "report.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data
