"""Run records: journal, log, report.json, junit.xml, run ids; secrets never reach a byte of them."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from lib.records import RunRecords, new_run_id, read_journal, read_report, runs_of
from lib.results import Check, HostRun, StepResult
from lib.shell import Secret

T0 = 1_795_888_380.0  # 2026-11-28T17:53:00Z


def result(step: str, target: str = "hv1", status: str = "ok", **kw: object) -> StepResult:
    return StepResult("hv1", step, target, status, T0, T0 + 0.5, **kw)  # type: ignore[arg-type]


def sample_run() -> HostRun:
    run = HostRun("hv1", "20261128T175300Z-1a2b", "provision", "apply", T0, T0 + 4.25)
    run.results = [
        result("preflight.access", reason="tools found"),
        result("bios.check", checks=(Check("sockets", "2", "2", True), Check("smt", "on", "on", True))),
        result("host.tune", status="failed", exit_code=5, error="verification failed\nsee table",
               checks=(Check("numa_balancing", "0", "1", False), Check("thp_enabled", "always", "always", True))),
        result("vms.define", status="failed", exit_code=4, error="virsh define: exit 1\nstderr tail"),
        result("vms.start", status="skipped", reason="an earlier step failed"),
    ]
    run.exit_code, run.resume_hint = 5, "invoke provision --host=hv1 --resume"
    return run


def junit(path: Path) -> ET.Element:
    return ET.parse(path).getroot()  # noqa: S314  our own file, written by the code under test


def test_journal_appends_and_reads_back(tmp_path: Path) -> None:
    records = RunRecords(tmp_path, "hv1", "r1")
    assert records.dir == tmp_path / "hv1" / "r1" and records.dir.is_dir()
    first = result("bios.check", checks=(Check("sockets", "2", "2", True),), commands=("lscpu",))
    second = result("host.tune", status="changed", reason="numa_balancing 1 -> 0")
    records.journal(first)
    records.journal(second)
    lines = (records.dir / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == ["bios.check", "host.tune"]
    assert read_journal(records.dir) == [first, second]


def test_journal_of_a_crashed_run_drops_the_truncated_last_line(tmp_path: Path) -> None:
    records = RunRecords(tmp_path, "hv1", "r1")
    records.journal(result("bios.check"))
    records.journal(result("host.tune"))
    path = records.dir / "journal.jsonl"
    path.write_bytes(path.read_bytes()[:-25])  # the crash cut the last write short
    assert [r.step for r in read_journal(records.dir)] == ["bios.check"]
    assert read_journal(tmp_path / "nowhere") == []


def test_log_lines_are_timestamped_per_line(tmp_path: Path) -> None:
    records = RunRecords(tmp_path, "hv1", "r1")
    records.log("connect hv1")
    records.log("stderr:\nline two")
    lines = (records.dir / "run.log").read_text().splitlines()
    assert len(lines) == 3
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", line) for line in lines)
    assert lines[0].endswith(" connect hv1") and lines[2].endswith(" line two")


def test_report_json_holds_the_whole_run(tmp_path: Path) -> None:
    records = RunRecords(tmp_path, "hv1", "r1")
    run = sample_run()
    records.finish(run)
    report = read_report(records.dir)
    assert report is not None
    assert {k: report[k] for k in ("host", "run_id", "runbook", "mode", "exit_code", "resume_hint", "error")} == {
        "host": "hv1", "run_id": "20261128T175300Z-1a2b", "runbook": "provision", "mode": "apply",
        "exit_code": 5, "resume_hint": "invoke provision --host=hv1 --resume", "error": ""}
    assert (report["started"], report["ended"]) == (T0, T0 + 4.25)
    assert (report["started_at"], report["ended_at"]) == ("2026-11-28T17:53:00.000Z", "2026-11-28T17:53:04.250Z")
    assert report["counts"] == {"ok": 2, "changed": 0, "failed": 2, "skipped": 1}
    assert [StepResult.from_json(r) for r in report["results"]] == run.results
    assert not list(records.dir.glob(".*.tmp"))  # written beside, then renamed into place


def test_read_report_of_an_unfinished_run_is_none(tmp_path: Path) -> None:
    records = RunRecords(tmp_path, "hv1", "r1")
    assert read_report(records.dir) is None
    (records.dir / "report.json").write_text('{"host": "hv')
    assert read_report(records.dir) is None


def test_junit_xml_counts_failures_errors_and_skips(tmp_path: Path) -> None:
    records = RunRecords(tmp_path, "hv1", "r1")
    records.finish(sample_run())
    root = junit(records.dir / "junit.xml")
    assert root.tag == "testsuites"
    (suite,) = root
    assert suite.get("name") == "hv1"
    assert {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")} == {
        "tests": "7", "failures": "1", "errors": "1", "skipped": "1", "time": "4.250"}
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == ["hv1: preflight.access", "hv1: sockets", "hv1: smt", "hv1: numa_balancing",
                           "hv1: thp_enabled", "hv1: vms.define", "hv1: vms.start"]
    numa = cases["hv1: numa_balancing"]
    assert numa.get("classname") == "hv1.host.tune" and numa.get("time") == "0.500"
    failure = numa.find("failure")
    assert failure is not None
    assert failure.get("message") == "expected 0, found 1"
    assert failure.text == "expected: 0\nfound: 1"
    assert cases["hv1: thp_enabled"].find("failure") is None
    error = cases["hv1: vms.define"].find("error")
    assert error is not None and error.get("message") == "virsh define: exit 1"
    skipped = cases["hv1: vms.start"].find("skipped")
    assert skipped is not None and skipped.get("message") == "an earlier step failed"


def test_junit_xml_survives_control_characters_in_stderr(tmp_path: Path) -> None:
    run = HostRun("hv1", "r1", "provision", "apply", T0, T0 + 1)
    run.results = [result("vms.define", status="failed", error="\x1b[31mboom\x1b[0m & <done>")]
    records = RunRecords(tmp_path, "hv1", "r1")
    records.finish(run)
    error = junit(records.dir / "junit.xml").find("testsuite/testcase/error")
    assert error is not None and error.get("message") == "?[31mboom?[0m & <done>"


def test_run_ids_sort_in_time_order_and_runs_of_lists_oldest_first(tmp_path: Path) -> None:
    ids = [new_run_id(T0 + offset) for offset in (3600.0, 0.0, 59.0, 86400.0, 0.25, 0.5)]
    assert re.fullmatch(r"20261128T185300\.000Z-[0-9a-f]{4}", ids[0])
    assert sorted(ids) == [ids[1], ids[4], ids[5], ids[2], ids[0], ids[3]]  # within a second too
    for run_id in ids:
        RunRecords(tmp_path, "hv1", run_id)
    (tmp_path / "hv1" / "stray.txt").write_text("not a run")
    assert runs_of(tmp_path, "hv1") == [tmp_path / "hv1" / i for i in sorted(ids)]
    assert runs_of(tmp_path, "hv9") == []


def test_a_secret_reaches_no_byte_of_any_record(tmp_path: Path) -> None:
    token = Secret("tok-12345")
    value = token.reveal()
    leaky = StepResult(
        "hv1", "k3s.server", "k3s-server", "failed", T0, T0 + 1,
        reason=f"installed with {value}", commands=(f"k3s server --token {value}",),
        checks=(Check("token", value, f'"{value}"&', False),), error=f"exit 1: bad token {value}\n{value}",
        warnings=(f"token {value} is short",), planned=(f"echo {value}",))
    records = RunRecords(tmp_path, "hv1", "r1")
    records.journal(leaky)
    records.log(f"K3S_TOKEN={value} k3s agent")
    run = HostRun("hv1", "r1", "provision", "apply", T0, T0 + 2, [leaky], error=f"lock {value}", exit_code=4)
    records.finish(run)
    names = {p.name for p in records.dir.iterdir()}
    assert names == {"journal.jsonl", "run.log", "report.json", "junit.xml"}
    for name in names:
        data = (records.dir / name).read_bytes()
        assert b"tok-12345" not in data, name
        assert b"***" in data, name
