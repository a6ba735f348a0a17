"""Run records under .runs/<host>/<run-id>/: journal.jsonl, run.log, report.json, junit.xml.

Everything written passes through lib.shell.mask(), twice: each value before it is serialised
(JSON and XML escape characters, so a secret containing `"` or `&` would no longer match the raw
text afterwards) and the whole text once more. Secrets never reach a record, even when a command
echoed one back.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib.results import HostRun, StepResult
from lib.shell import mask

if TYPE_CHECKING:
    from lib.transport import CmdResult

# XML 1.0 cannot carry most control characters (stderr with ANSI colours has them): ElementTree
# would write them raw and CI would refuse the whole file.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def new_run_id(now: float | None = None) -> str:
    """UTC time to the millisecond plus 4 hex digits: sorts in time order, unique across parallel runs.

    Milliseconds, because an interrupted run and its resume can start within the same second, and
    resume picks the last run by this order.
    """
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return f"{stamp}-{secrets.token_hex(2)}"


def iso(epoch: float) -> str | None:
    """ISO-8601 UTC with milliseconds; None for 0.0, which HostRun uses for "not ended"."""
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def masked(data: Any) -> Any:
    """A JSON-shaped value with every string in it masked (keys too: a target name is a key elsewhere)."""
    if isinstance(data, str):
        return mask(data)
    if isinstance(data, dict):
        return {masked(k): masked(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [masked(v) for v in data]
    return data


# Records hold hostnames, users, commands and the hosts' answers: only their owner reads them.
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def private_dirs(root: Path, *parts: str) -> Path:
    """root/parts..., each directory made here 0700; the host and run directories are the tool's own, so
    an older, wider one is narrowed too. The root itself (runs_dir) is narrowed only when made here:
    an operator may point it at a directory that is not only the tool's."""
    if not root.exists():
        root.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        root.chmod(PRIVATE_DIR)  # mkdir's mode passes through the umask; chmod does not
    path = root
    for part in parts:
        path = path / part
        path.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        path.chmod(PRIVATE_DIR)
    return path


def write_private(path: Path, text: str, *, append: bool = False) -> None:
    """Write (or append) text to a file created 0600, masked."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    with os.fdopen(os.open(path, flags, PRIVATE_FILE), "w", encoding="utf-8") as handle:
        handle.write(mask(text))
        handle.flush()


def _write_atomic(path: Path, text: str) -> None:
    """Write beside, then rename: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_private(tmp, text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunMeta:
    """run.json: what a run was, so a later --resume can tell whether it continues this one."""

    host: str
    run_id: str
    runbook: str
    mode: str
    vm_filter: tuple[str, ...] = ()  # --vm: which VMs this run was limited to

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "run_id": self.run_id, "runbook": self.runbook, "mode": self.mode,
                "vm_filter": list(self.vm_filter)}


class RunRecords:
    """The records of one host's run. Target threads and the session pool share one instance."""

    def __init__(self, root: Path, host: str, run_id: str) -> None:
        self.dir = private_dirs(root, host, run_id)
        self._lock = threading.Lock()

    def write(self, name: str, text: str) -> None:
        _write_atomic(self.dir / name, text)

    def _append(self, name: str, text: str) -> None:
        # Open per append (O_APPEND) and flush: whatever a crash cuts, the lines before it are on disk.
        with self._lock:
            write_private(self.dir / name, text, append=True)

    def journal(self, result: StepResult) -> None:
        line = json.dumps(masked(result.to_json()), sort_keys=True, ensure_ascii=False)
        self._append("journal.jsonl", line + "\n")

    def evidence_writer(self, step: str, target: str) -> Callable[[CmdResult], None]:
        """Where a step's commands on one target keep their raw answers: evidence/<step>/<target>.txt.

        Every command's stdout, stderr and exit code, masked, in the order they ran: the bytes a
        failed (or passed) row was read from.
        """
        name = f"evidence/{_safe(step)}/{_safe(target)}.txt"

        def keep(result: CmdResult) -> None:
            private_dirs(self.dir, *Path(name).parent.parts)
            self._append(name, f"$ {result.command}\nexit {result.exit_code} after {result.attempts} attempt(s), "
                               f"{result.duration:.3f} s\n--- stdout\n{_ended(result.stdout)}--- stderr\n"
                               f"{_ended(result.stderr)}\n")

        return keep

    def log(self, line: str) -> None:
        # Every physical line gets the stamp, so a multi-line stderr stays greppable by time.
        stamp = iso(time.time())
        self._append("run.log", "".join(f"{stamp} {part}\n" for part in line.splitlines() or [""]))

    def start(self, meta: RunMeta) -> None:
        """run.json, before any step runs."""
        _write_atomic(self.dir / "run.json", json.dumps(meta.to_json()))

    def finish(self, run: HostRun) -> None:
        _write_atomic(self.dir / "report.json", json.dumps(report(run), indent=2, ensure_ascii=False) + "\n")
        _write_atomic(self.dir / "junit.xml", junit_xml(run))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def _ended(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def report(run: HostRun) -> dict[str, Any]:
    """The whole HostRun as JSON data, masked; epoch floats for programs, ISO times for people."""
    data: dict[str, Any] = masked({
        "host": run.host, "run_id": run.run_id, "runbook": run.runbook, "mode": run.mode,
        "started": run.started, "started_at": iso(run.started),
        "ended": run.ended, "ended_at": iso(run.ended),
        "exit_code": run.exit_code, "error": run.error, "resume_hint": run.resume_hint,
        "records": run.records, "counts": run.counts(), "check_counts": run.check_counts(),
        "results": [r.to_json() for r in run.results],
    })
    return data


def _text(value: str) -> str:
    return _XML_INVALID.sub("?", mask(value))


def _case(suite: ET.Element, classname: str, name: str, duration: float) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=_text(classname), name=_text(name), time=f"{duration:.3f}")


def _first_line(text: str) -> str:
    return (text.splitlines() or [""])[0]


def junit_xml(run: HostRun) -> str:
    """Each verification check is a test case, so CI shows evidence, not just steps.

    A failed step without a failed check (it broke before or outside its verification) is an
    error case, so a red run can never look green in CI; skipped steps are skipped cases; steps
    that passed without checks still get a passing case so CI lists everything that ran.
    """
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", name=_text(run.host))
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for result in run.results:
        classname = f"{run.host}.{result.step}"
        if result.status == "skipped":
            case = _case(suite, classname, f"{result.target}: {result.step}", result.duration)
            ET.SubElement(case, "skipped", message=_text(result.reason))
            counts["tests"] += 1
            counts["skipped"] += 1
            continue
        for check in result.checks:
            case = _case(suite, classname, f"{result.target}: {check.name}", result.duration)
            counts["tests"] += 1
            if check.kind == "failed":
                failure = ET.SubElement(case, "failure",
                                        message=_text(f"expected {check.expected}, found {check.found}"))
                failure.text = _text(f"expected: {check.expected}\nfound: {check.found}")
                counts["failures"] += 1
            elif check.kind in ("warning", "evidence"):
                # Never a pass: a skipped case CI lists apart, its outcome and values as properties.
                found = f"expected {check.expected}, found {check.found}" if check.kind == "warning" else check.found
                ET.SubElement(case, "skipped", message=_text(f"{check.kind}: {found}"))
                props = ET.SubElement(case, "properties")
                for key, shown in (("outcome", check.kind), ("expected", check.expected), ("found", check.found)):
                    ET.SubElement(props, "property", name=key, value=_text(shown))
                counts["skipped"] += 1
        if result.status == "failed" and all(c.ok for c in result.checks):
            case = _case(suite, classname, f"{result.target}: {result.step}", result.duration)
            error = ET.SubElement(case, "error", message=_text(_first_line(result.error)))
            error.text = _text(result.error)
            counts["tests"] += 1
            counts["errors"] += 1
        elif not result.checks and result.status != "failed":
            _case(suite, classname, f"{result.target}: {result.step}", result.duration)
            counts["tests"] += 1
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("time", f"{max(run.ended - run.started, 0.0):.3f}")
    suite.set("timestamp", iso(run.started) or "")
    ET.indent(suites)
    return mask('<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n")


def runs_of(root: Path, host: str) -> list[Path]:
    """Run directories of a host, oldest first: run ids start with their UTC time, so by name."""
    base = root / host
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def last_run(root: Path, host: str, runbook: str, vm_filter: tuple[str, ...], *, before: str) -> Path | None:
    """The last run of this runbook that changed this host, limited by the same --vm (a run
    limited by --vm verified its steps on those VMs only), other than the run `before`: the run
    that --resume continues."""
    for run_dir in reversed(runs_of(root, host)):
        meta_file = run_dir / "run.json"
        if run_dir.name == before or not meta_file.exists():
            continue
        meta = json.loads(meta_file.read_text())
        if meta.get("runbook") != runbook or meta.get("mode") != "apply":
            continue
        if meta.get("vm_filter", []) != list(vm_filter):
            continue
        return run_dir
    return None


def read_journal(run_dir: Path) -> list[StepResult]:
    """The results journalled so far, in order.

    A crashed run may leave a truncated last line; it is dropped. A line that cannot be read is
    dropped too rather than refusing: resume then redoes that step, which is safe because every
    step plans from fresh facts and is verified.
    """
    path = run_dir / "journal.jsonl"
    if not path.exists():
        return []
    results: list[StepResult] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            results.append(StepResult.from_json(json.loads(line)))
        except (ValueError, TypeError, KeyError):  # JSONDecodeError is a ValueError
            continue
    return results


def read_report(run_dir: Path) -> dict[str, Any] | None:
    """report.json of a finished run; None when the run never finished (or left no readable report)."""
    path = run_dir / "report.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
