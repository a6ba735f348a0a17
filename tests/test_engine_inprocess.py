"""The engine's own behaviour, in-process and in seconds: step selection (--from, --only, --skip),
resume, one failing target among several, and Ctrl-C (once: stop between commands; twice: abandon).

No sshd: the Engine gets a pool of scripted shells (tests/harness/fakeshell.py), which raise on
any command the test did not script. What the real transport does is tests/test_engine.py's job.
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
from pathlib import Path

import pytest

import tasks
from lib.output import Output
from lib.reads import Answers
from lib.records import read_journal
from lib.results import Check, HostRun
from lib.runbook import Runbook
from lib.runner import Engine, RunOptions
from lib.shell import Command, sh
from lib.steps.base import AnyStep, Plan, Step, Target, TargetKind
from lib.transport import CmdResult
from tests.harness.fakeshell import FakeNet
from tests.harness.inventory import small_vm, write_host
from tests.harness.sshd import SshHost
from tests.harness.world import FAST, World


class Mark(Step[str]):
    """Done when the target's mark reads `done`: read it, write it when it does not."""

    summary = "a mark per target"

    def facts_command(self, target: Target) -> Command:
        return sh("cat mark", why=f"read {self.name} {target.name}")

    def parse(self, target: Target, answers: Answers) -> str:
        return answers.stdout().strip()

    def plan(self, target: Target, facts: str | None) -> Plan:
        if facts == "done":
            return Plan(reason="already marked")
        return Plan((sh("echo done > mark", why=f"write {self.name} {target.name}"),), reason="mark it")

    def verify(self, target: Target, facts: str) -> list[Check]:
        return [Check(f"{self.name} mark", "done", facts or "(none)", facts == "done")]


def mark(step: str, kind: TargetKind = "hypervisor") -> Mark:
    class Named(Mark):
        name = step
        targets = kind

    return Named()


class Marks:
    """The scripted host: each (step, target) mark, read and written through the fake shell."""

    def __init__(self, net: FakeNet, steps: list[str], targets: list[str]) -> None:
        self.done: set[str] = set()
        self.failing: set[str] = set()
        for step in steps:
            for target in targets:
                key = f"{step} {target}"
                net.on("hv1", f"read {key}", functools.partial(self._read, key=key))
                net.on("hv1", f"write {key}", functools.partial(self._write, key=key))

    def _read(self, cmd: Command, key: str) -> str:
        return "done" if key in self.done else ""

    def _write(self, cmd: Command, key: str) -> CmdResult:
        if key in self.failing:
            return CmdResult(cmd.shown, 1, "", "disk full", 0.0)
        self.done.add(key)
        return CmdResult(cmd.shown, 0, "", "", 0.0)


def fake_host(world: World, vms: int = 0) -> None:
    """hv1's inventory: nothing ever connects to it, the fake pool answers instead."""
    ghost = SshHost("hv1", "127.0.0.1", 9, "root", world.tmp / "no-key", world.tmp / "no-known-hosts",
                    world.tmp / "no-log", 0, None)
    write_host(world.hosts, "hv1", ghost, k3s={"version": "v1.31.4+k3s1", "addon_node": "vm1"},
               vms=[small_vm(f"vm{i}", i, role="server" if i == 1 else "agent") for i in range(1, vms + 1)])


def engine(world: World, net: FakeNet, steps: list[AnyStep], **opts: object) -> tuple[Engine, io.StringIO]:
    book = Runbook("book", "", "test", tuple(steps))
    out = io.StringIO()
    options = RunOptions(runs_dir=world.runs, policies=FAST, sleep=world.sleeps.append, **opts)  # type: ignore[arg-type]
    return Engine(book, options, Output(out, tty=False), pools=net.factory), out


def run(world: World, net: FakeNet, steps: list[AnyStep], **opts: object) -> HostRun:
    (result,) = engine(world, net, steps, **opts)[0].run(world.loaded("hv1"))
    return result


def statuses(run: HostRun) -> list[tuple[str, str, str]]:
    return [(r.step, r.target, r.status) for r in run.results]


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path, {})
    fake_host(w)
    return w


STEPS = ["s.a", "s.b", "s.c"]


def scripted(steps: list[str] = STEPS, targets: tuple[str, ...] = ("hv1",)) -> tuple[FakeNet, Marks]:
    net = FakeNet()
    net.lock_answers()
    return net, Marks(net, steps, list(targets))


@pytest.mark.parametrize(("opts", "ran", "left_out"), [
    ({"from_step": "s.b"}, ["s.b", "s.c"], {"s.a": "before --from s.b"}),
    ({"only": ("s.b",)}, ["s.b"], {"s.a": "not in --only", "s.c": "not in --only"}),
    ({"skip": ("s.b",)}, ["s.a", "s.c"], {"s.b": "--skip"}),
])
def test_selection_runs_the_chosen_steps_and_records_the_others_skipped(
        world: World, opts: dict[str, object], ran: list[str], left_out: dict[str, str]) -> None:
    net, _ = scripted()
    result = run(world, net, [mark(s) for s in STEPS], **opts)
    assert result.exit_code == 0
    assert statuses(result) == [(s, "hv1", "changed" if s in ran else "skipped") for s in STEPS]
    reasons = {r.step: r.reason for r in result.results if r.status == "skipped"}
    assert set(reasons) == set(left_out)
    for step, words in left_out.items():
        assert words in reasons[step], reasons[step]
    # Only the chosen steps read and wrote the host, in runbook order, inside the lock.
    expected = ["take the host lock"] + [f"{verb} {s} hv1" for s in ran for verb in ("read", "write", "read")]
    # The lock leads the first contact's batch of reads (lib/readahead.py); a fake cannot answer a
    # batch, so the lock and every read are then sent alone, as after any failed batch.
    first, *sent = net.sent_whys("hv1")
    assert first.startswith("read everything") and sent == [*expected, "release the host lock"]


def test_resume_starts_at_the_first_step_the_last_run_did_not_verify(world: World) -> None:
    net, marks = scripted()
    marks.failing.add("s.b hv1")
    first = run(world, net, [mark(s) for s in STEPS])
    assert statuses(first) == [("s.a", "hv1", "changed"), ("s.b", "hv1", "failed")]
    assert first.exit_code == 4 and first.resume_hint == "invoke provision --host=hv1 --resume"
    marks.failing.clear()
    del net.sent[:]

    second = run(world, net, [mark(s) for s in STEPS], resume=True)
    assert second.exit_code == 0
    assert statuses(second) == [("s.a", "hv1", "skipped"), ("s.b", "hv1", "changed"), ("s.c", "hv1", "changed")]
    carried = second.results[0]
    assert carried.reason == f"verified in run {first.run_id}" and carried.verified_in == first.run_id
    assert "read s.a hv1" not in net.sent_whys("hv1")  # a carried step is not even read
    journal = read_journal(Path(second.records))
    assert [(r.step, r.verified_in) for r in journal] == [
        ("s.a", first.run_id), ("s.b", second.run_id), ("s.c", second.run_id)]

    third = run(world, net, [mark(s) for s in STEPS], resume=True)
    assert third.exit_code == 2
    assert f"every step of book was verified in run {second.run_id}; nothing to resume" in third.error


def test_resume_ignores_a_run_of_another_runbook_or_mode(world: World) -> None:
    net, _ = scripted()
    plan = run(world, net, [mark(s) for s in STEPS], mode="plan")
    assert plan.exit_code == 0
    resumed = run(world, net, [mark(s) for s in STEPS], resume=True)
    assert resumed.exit_code == 2 and "no earlier run of book" in resumed.error
    meta = json.loads((Path(plan.records) / "run.json").read_text())
    assert meta == {"host": "hv1", "run_id": plan.run_id, "runbook": "book", "mode": "plan", "vm_filter": []}


def test_one_failing_target_does_not_stop_its_siblings_and_the_records_say_so(tmp_path: Path) -> None:
    world = World(tmp_path, {})
    fake_host(world, vms=3)
    net, marks = scripted(["v.mark", "v.after"], ("vm1", "vm2", "vm3"))
    marks.failing.add("v.mark vm2")
    result = run(world, net, [mark("v.mark", "vms"), mark("v.after", "vms")])
    assert statuses(result) == [("v.mark", "vm1", "changed"), ("v.mark", "vm2", "failed"),
                                ("v.mark", "vm3", "changed")]  # v.after never starts: a change run stops
    assert result.exit_code == 4
    failed = result.results[1]
    assert failed.error.startswith("hv1: v.mark on vm2: hv1: command failed (exit code 1)"), failed.error
    assert {"write v.mark vm1", "write v.mark vm3"} <= set(net.sent_whys("hv1"))
    records = Path(result.records)
    assert [(r.target, r.status, r.exit_code) for r in read_journal(records)] == [
        ("vm1", "changed", 0), ("vm2", "failed", 4), ("vm3", "changed", 0)]
    report = json.loads((records / "report.json").read_text())
    assert report["exit_code"] == 4
    junit = (records / "junit.xml").read_text()
    assert 'errors="1"' in junit and '<error message="hv1: v.mark on vm2' in junit


def test_an_unscripted_command_fails_its_target_by_name(world: World) -> None:
    net = FakeNet()
    net.lock_answers()
    result = run(world, net, [mark("s.a")])
    assert statuses(result) == [("s.a", "hv1", "failed")] and result.exit_code == 4
    assert "no scripted answer for 'read s.a hv1'" in result.results[0].error


def test_ctrl_c_stops_between_commands_and_a_second_one_abandons_at_once(world: World,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    net, marks = scripted()
    eng, out = engine(world, net, [mark(s) for s in STEPS])
    exits: list[int] = []

    class Abandoned(BaseException):
        pass

    def abandon(code: int) -> None:
        exits.append(code)
        raise Abandoned

    monkeypatch.setattr(os, "_exit", abandon)
    output = Output(out, tty=False)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN when started with `&`
    with tasks._stopped_by_signals(eng, output.message):
        def first_ctrl_c(cmd: Command) -> CmdResult:  # the operator presses Ctrl-C while s.b writes
            signal.raise_signal(signal.SIGINT)  # from this worker thread: the main thread handles it
            assert eng.stop.wait(60), "the Ctrl-C handler never ran"  # a safety net, not a timing check
            marks.done.add("s.b hv1")
            return CmdResult(cmd.shown, 0, "", "", 0.0)

        net.on("hv1", "write s.b hv1", first_ctrl_c)
        (result,) = eng.run(world.loaded("hv1"))
        assert exits == []  # the first Ctrl-C only asks the engine to stop
        with pytest.raises(Abandoned):
            signal.raise_signal(signal.SIGINT)
    assert exits == [130]
    assert "SIGINT: stopping after the commands in flight (again to abandon them at once" in out.getvalue()
    # The command in flight finished and s.b verified it; s.c never started.
    assert statuses(result) == [("s.a", "hv1", "changed"), ("s.b", "hv1", "changed"), ("s.c", "hv1", "failed")]
    assert result.exit_code == 130 and result.resume_hint == "invoke provision --host=hv1 --resume"
    assert "interrupted by the operator before step s.c, which had not started" in result.results[2].error
    assert net.sent_whys("hv1")[-3:] == ["write s.b hv1", "read s.b hv1", "release the host lock"]
    assert signal.getsignal(signal.SIGINT) is before  # the handler the process had, back in place
