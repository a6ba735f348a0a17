"""Records that never lie: nothing escapes the engine, read-only runs report every failure, resume
reads structured state, recap counts agree with the exit code, raw evidence is kept."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lib.output import recap, verification_table
from lib.results import Check, HostRun, StepResult
from lib.runner import exit_code, failure_text
from lib.steps.registry import REGISTRY as PRODUCT_STEPS
from tests.engine_steps import REGISTRY as TEST_STEPS
from tests.harness.inventory import write_host
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.sysfs import HostShape
from tests.harness.world import World
from tests.test_engine import hv  # noqa: F401 - the fixture (usefixtures): one sshd host written as hv1

MakeRoot = Callable[[HostShape], Path]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, {**TEST_STEPS, **PRODUCT_STEPS})


@pytest.fixture
def two(sshd_farm: SshdFarm, world: World) -> Iterator[tuple[SshHost, SshHost]]:
    a = sshd_farm.start(f"ta-{world.tmp.name[-10:]}")
    b = sshd_farm.start(f"tb-{world.tmp.name[-10:]}")
    yield a, b
    sshd_farm.stop(a.name)
    sshd_farm.stop(b.name)


def statuses(run: HostRun) -> list[tuple[str, str, str]]:
    return [(r.step, r.target, r.status) for r in run.results]


def junit_suite(text: str) -> ET.Element:
    return ET.fromstring(text)[0]  # noqa: S314 - our own file, written by the code under test


def records(world: World, run: HostRun) -> Path:
    return world.runs / run.host / run.run_id


def test_garbage_value_on_one_of_two_hosts_fails_that_host_only(world: World, two: tuple[SshHost, SshHost]) -> None:
    # (bios.check itself reads an odd sysfs value into a failed row naming the file, exit 3: #16's
    # test_topology_shapes. This is the engine's net under any parser that raises instead.)
    write_host(world.hosts, "hva", two[0])
    write_host(world.hosts, "hvb", two[1])
    world.state_file("hva", "number").write_text("7\n")
    bad = world.state_file("hvb", "number")
    bad.write_text("garbage\n")
    runs = {r.host: r for r in world.run("test.number", "test.a")}
    # The good host finished every step; the bad one failed in test.number, exit 4, and stopped there.
    assert statuses(runs["hva"]) == [("test.number", "hva", "ok"), ("test.a", "hva", "changed")]
    assert statuses(runs["hvb"]) == [("test.number", "hvb", "failed")]
    failed = runs["hvb"].results[0]
    assert failed.exit_code == 4 and runs["hvb"].exit_code == 4 and exit_code(list(runs.values())) == 4
    # A typed error naming the file and the value, with the parser's own exception type.
    assert f"cannot read {bad}" in failed.error
    assert "'garbage'" in failed.error and "ValueError" in failed.error
    # The terminal has the message, not the traceback; run.log has the traceback.
    out = world.out.getvalue()
    assert "hvb | test.number | hvb | failed" in out and "Traceback" not in out
    log = (records(world, runs["hvb"]) / "run.log").read_text()
    assert "Traceback (most recent call last)" in log and "int(" in log
    # Every record says so: report.json, journal, junit.
    report = json.loads((records(world, runs["hvb"]) / "report.json").read_text())
    assert report["exit_code"] == 4 and report["counts"]["failed"] == 1
    journal = [json.loads(line) for line in (records(world, runs["hvb"]) / "journal.jsonl").read_text().splitlines()]
    assert [(j["step"], j["status"], j["exit_code"]) for j in journal] == [("test.number", "failed", 4)]
    suite = junit_suite((records(world, runs["hvb"]) / "junit.xml").read_text())
    assert suite.get("errors") == "1"
    # The recap covers both hosts, and names the records by their absolute path.
    text = recap(list(runs.values()), ["test.number", "test.a"])
    assert "hva " in text and "hvb " in text
    assert f"records: {records(world, runs['hvb']).resolve()}" in failure_text(list(runs.values()))


def test_a_host_that_fails_before_any_step_is_journalled_and_in_junit(world: World, sshd_farm: SshdFarm) -> None:
    host = sshd_farm.start(f"gone-{world.tmp.name[-10:]}")
    write_host(world.hosts, "hv1", host)
    sshd_farm.stop(host.name)
    (run,) = world.run("test.a", "test.b", mode="verify")
    assert run.exit_code == 4
    assert run.counts()["failed"] >= 1  # never failed=0 next to a failed host
    suite = junit_suite((records(world, run) / "junit.xml").read_text())
    assert int(suite.get("errors") or 0) + int(suite.get("failures") or 0) >= 1
    assert run.resume_hint == ""  # a read-only run has nothing to resume


@pytest.mark.usefixtures("hv")
def test_verify_reports_every_drift_not_only_the_first(world: World) -> None:
    world.state_file("hv1", "value").write_text("1\n")  # drift one: numa_balancing 1, spec 0
    world.state_file("hv1", "ran").write_text("test.a\n")  # test.a is in place, test.b is not: drift two
    (run,) = world.run("test.wrong", "test.a", "test.b", mode="verify")
    assert statuses(run) == [("test.wrong", "hv1", "failed"), ("test.a", "hv1", "ok"),
                             ("test.b", "hv1", "failed")]
    assert run.exit_code == 5
    assert run.check_counts() == {"passed": 1, "failed": 2, "warning": 0, "evidence": 0}
    text = failure_text([run])
    assert "step test.wrong on hv1" in text and "step test.b on hv1" in text
    assert "resume:" not in text  # nothing to resume in a read-only run


@pytest.mark.usefixtures("hv")
def test_skipped_step_is_never_carried_as_verified_by_resume(world: World) -> None:
    steps = ("test.a", "test.b", "test.c", "test.permanent")
    (first,) = world.run(*steps, skip=("test.b",))
    assert statuses(first) == [("test.a", "hv1", "changed"), ("test.b", "hv1", "skipped"),
                               ("test.c", "hv1", "changed"), ("test.permanent", "hv1", "failed")]
    assert first.results[1].verified_in == "" and first.results[0].verified_in == first.run_id
    (second,) = world.run(*steps, resume=True)
    # test.a carried (it verified in the first run); test.b never ran, so it runs now, and so
    # does everything after it (test.c finds its marker and only verifies).
    assert statuses(second) == [("test.a", "hv1", "skipped"), ("test.b", "hv1", "changed"),
                                ("test.c", "hv1", "ok"), ("test.permanent", "hv1", "failed")]
    assert second.results[0].verified_in == first.run_id
    journal = [json.loads(line) for line in (records(world, second) / "journal.jsonl").read_text().splitlines()]
    by_step = {j["step"]: j for j in journal}
    assert by_step["test.b"]["verified_in"] == second.run_id
    assert world.state_file("hv1", "ran").read_text().split() == ["test.a", "test.c", "test.b"]


@pytest.mark.usefixtures("hv")
def test_resume_carries_a_step_with_no_targets_on_this_host(world: World) -> None:
    (first,) = world.run("test.a", "test.sleepy", "test.permanent")  # hv1 has no VMs: sleepy has no targets
    assert statuses(first)[1] == ("test.sleepy", "hv1", "skipped")
    (second,) = world.run("test.a", "test.sleepy", "test.permanent", resume=True)
    assert [r.reason for r in second.results[:2]] == [f"verified in run {first.run_id}"] * 2
    assert statuses(second)[2] == ("test.permanent", "hv1", "failed")


@pytest.mark.usefixtures("hv")
def test_resume_ignores_reason_text(world: World) -> None:
    (first,) = world.run("test.a", "test.permanent", "test.b")
    # Someone's journal line claims test.permanent "verified in run ..." in its reason only.
    journal = records(world, first) / "journal.jsonl"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    for line in lines:
        if line["step"] == "test.permanent":
            line.update(status="skipped", reason=f"verified in run {first.run_id}")
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (second,) = world.run("test.a", "test.permanent", "test.b", resume=True)
    assert ("test.permanent", "hv1", "failed") in statuses(second)  # run again, not carried


@pytest.mark.usefixtures("hv")
def test_every_fact_command_keeps_its_raw_answer(world: World) -> None:
    world.state_file("hv1", "value").write_text("1\n")
    (run,) = world.run("test.wrong", mode="verify")
    kept = (records(world, run) / "evidence" / "test.wrong" / "hv1.txt").read_text()
    assert f"$ cat {world.state_file('hv1', 'value')}" in kept
    assert "exit 0 after 1 attempt(s)" in kept and "--- stdout\n1\n--- stderr\n" in kept


# -- pure: outcomes in the table, the recap, report and junit -------------------------------------

def _run_with_outcomes() -> HostRun:
    checks = (Check("sockets", "2", "2", True), Check.warn("CPU governor", "performance", "no cpufreq"),
              Check.evidence("BIOS", "SeaBIOS 1.16"), Check("THP", "never", "always", False))
    result = StepResult("hv1", "bios.check", "hv1", "failed", 0.0, 1.0, checks=checks, exit_code=5, error="x")
    return HostRun("hv1", "r1", "verify-all", "verify", 0.0, 1.0, [result], exit_code=5)


def test_four_outcomes_have_their_own_text_marker() -> None:
    table = verification_table(_run_with_outcomes().results[0]).splitlines()
    assert [line.split()[0] for line in table[1:]] == ["✗", "!", "✓", "i"]


def test_recap_counts_checks_per_outcome() -> None:
    text = recap([_run_with_outcomes()], [])
    assert "checks: passed=1 failed=1 warning=1 evidence=1" in text
    assert "failed=1" in text.splitlines()[1]


def test_junit_never_counts_a_warning_or_evidence_as_a_pass(tmp_path: Path) -> None:
    from lib.records import junit_xml, report

    run = _run_with_outcomes()
    suite = junit_suite(junit_xml(run))
    cases = {c.get("name"): c for c in suite}
    assert cases["hv1: CPU governor"].find("skipped") is not None
    assert cases["hv1: BIOS"].find("skipped") is not None
    props = {p.get("name"): p.get("value") for p in cases["hv1: CPU governor"].iter("property")}
    assert props == {"outcome": "warning", "expected": "performance", "found": "no cpufreq"}
    assert cases["hv1: THP"].find("failure") is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "2")
    data = report(run)
    assert [c["outcome"] for c in data["results"][0]["checks"]] == ["passed", "warning", "evidence", "failed"]
    assert data["check_counts"] == {"passed": 1, "failed": 1, "warning": 1, "evidence": 1}
