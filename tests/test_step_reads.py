"""The typed step contract, in-process: a step declares its reads, the engine performs them
(lib/gather.py) and hands the answers to the step's pure parse; a parser's error is a FactError
naming the target and the command; the run's flags and local inputs are frozen values, the
cluster token never shown.

No sshd: the engine gets tests/harness/fakeshell.py's scripted shells, which raise on any read
the test did not script, so every read a step makes is one the test wrote down.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from lib.errors import FactError
from lib.gather import gather
from lib.inventory.load import LoadedHost
from lib.options import HostInputs, RunFlags
from lib.reads import FACTS, Answers, Ask, Reads, Run, Unreached
from lib.results import Check
from lib.runner import RunOptions
from lib.shell import Command, Secret, sh
from lib.steps.base import Plan, Step, Target
from lib.steps.observe import Doctor
from lib.targets import targets_for
from lib.transport import CmdResult
from tests.harness.fakeshell import FakeNet, FakePool
from tests.harness.world import World
from tests.test_engine_inprocess import fake_host, run

TOKEN = "K10-reads-test-token-3c9e71d2a4b8"  # noqa: S105 - the secret that must never be shown


class Number(Step[int]):
    """One read, parsed with int() as fact parsers do: a garbage value raises the parser's ValueError."""

    name = "t.number"
    summary = "a number"

    def facts_command(self, target: Target) -> Command:
        return sh("cat /etc/number", why="read the number")

    def parse(self, target: Target, answers: Answers) -> int:
        return int(answers.stdout().strip())

    def plan(self, target: Target, facts: int | None) -> Plan:
        return Plan(reason="read-only")

    def verify(self, target: Target, facts: int) -> list[Check]:
        return [Check("number", "a number", str(facts), True)]


class Chained(Step[tuple[str, str, str]]):
    """Three reads, each declared once the answer it needs is there: a path, the file at that path,
    then the server (a peer) asked about it; the server not answering is an answer too."""

    name = "t.chained"
    summary = "dependent reads"

    def reads(self, target: Target, got: Answers) -> Reads:
        where: Reads = (Run("where", sh("cat /etc/where", why="where")),)
        if "where" not in got:
            return where
        path = got.stdout("where").strip()
        content: Reads = (*where, Run("content", sh("cat {p}", p=path, why=f"read {path}")))
        if "content" not in got:
            return content
        server = dataclasses.replace(target.endpoint, name="server")
        return (*content, Ask("server", server, sh("grep -c {v} /srv/list", v=got.stdout("content").strip(),
                                                     why="does the server know it")))

    def parse(self, target: Target, answers: Answers) -> tuple[str, str, str]:
        server = answers.peer("server")
        said = f"unreached: {server.why}" if isinstance(server, Unreached) else server.stdout.strip()
        return answers.stdout("where").strip(), answers.stdout("content").strip(), said

    def plan(self, target: Target, facts: tuple[str, str, str] | None) -> Plan:
        return Plan(reason="read-only")

    def verify(self, target: Target, facts: tuple[str, str, str]) -> list[Check]:
        return [Check("chain", "read", " | ".join(facts), True)]


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path, {})
    fake_host(w, vms=2)
    return w


def hv1(world: World) -> LoadedHost:
    (loaded,) = world.loaded("hv1")
    return loaded


def test_the_engine_performs_the_declared_read_and_a_parse_error_names_target_and_command(world: World) -> None:
    net = FakeNet()
    net.on("hv1", "read the number", "forty-two\n")
    result = run(world, net, [Number()], mode="verify")
    (failed,) = result.results
    assert (failed.step, failed.target, failed.status, failed.exit_code) == ("t.number", "hv1", "failed", 4)
    assert failed.error.startswith("hv1: t.number on hv1: hv1: cannot read the output of `cat /etc/number`: "
                                   "ValueError: invalid literal for int() with base 10: 'forty-two'"), failed.error
    assert net.sent_whys("hv1") == ["read the number"]  # the one declared read, performed by the engine

    net.on("hv1", "read the number", "42\n")
    ok = run(world, net, [Number()], mode="verify")
    assert [(r.status, [c.found for c in r.checks]) for r in ok.results] == [("ok", ["42"])]


def test_reads_that_wait_on_answers_are_asked_in_rounds_and_a_silent_peer_is_an_answer(world: World) -> None:
    net = FakeNet()
    net.on("hv1", "where", "/etc/colour\n")
    net.on("hv1", "read /etc/colour", "blue\n")
    net.on("server", "does the server know it", CmdResult("grep", 2, "", "grep: /srv/list: No such file", 0.0))
    target = targets_for(Chained(), hv1(world))[0]
    shell = FakePool(net).shell(target.endpoint)
    facts = gather(Chained(), target, shell)  # the server's command failed: an answer, not the target's failure
    assert facts == ("/etc/colour", "blue", "unreached: server: command failed (exit code 2) after 1 attempt(s): grep")
    assert net.sent == [("hv1", "where"), ("hv1", "read /etc/colour"), ("server", "does the server know it")]

    net.on("server", "does the server know it", "1\n")
    assert gather(Chained(), target, shell) == ("/etc/colour", "blue", "1")


def test_an_error_in_reads_is_a_fact_error_too(world: World) -> None:
    class BadPath(Chained):
        def reads(self, target: Target, got: Answers) -> Reads:
            first = (Run(FACTS, sh("cat /etc/count", why="count")),)
            return first if FACTS not in got else (*first, Run("n", sh("seq {n}", n=int(got.stdout()), why="n")))

    net = FakeNet()
    net.on("hv1", "count", "many\n")
    target = targets_for(BadPath(), hv1(world))[0]
    with pytest.raises(FactError, match=r"hv1: cannot read the output of `cat /etc/count`: ValueError"):
        gather(BadPath(), target, FakePool(net).shell(target.endpoint))


def sample_answer(pid: str) -> str:
    return f"@@pid@@\n{pid}\n@@numa_maps@@\n7f00 bind:0 anon=256 N0=256 kernelpagesize_kB=4\n"


def test_doctor_gets_every_answer_it_declared_each_vm_live_and_sampled_then_the_host(world: World) -> None:
    net = FakeNet()
    sampled: list[str] = []

    def sample(pid: str) -> Callable[[Command], str]:
        def answer(cmd: Command) -> str:
            sampled.append(cmd.shown)
            return sample_answer(pid)
        return answer

    for vm, pid in (("vm1", "4242"), ("vm2", "")):
        net.domain("hv1", vm, {"state": 1, "autostart": 1, "numa": {"numa_mode": 0, "numa_nodeset": "0"}})
        net.on("hv1", f"sample {vm}'s QEMU process", sample(pid))
    net.on("hv1", "threads and their CPUs", "  PID   TID PSR %CPU COMMAND\n")
    net.on("hv1", "CPU governors", "/sys/devices/system/cpu/cpu1 performance\n")
    net.on("hv1", "read the confinement files, cgroup cpusets, IRQ affinity, and host tasks/IRQs over an interval",
           "")
    result = run(world, net, [Doctor()], mode="verify", flags=RunFlags(interval=0.5))
    assert net.sent_whys("hv1") == [
        "live domain vm1", "sample vm1's QEMU process", "live domain vm2", "sample vm2's QEMU process",
        "threads and their CPUs", "CPU governors",
        "read the confinement files, cgroup cpusets, IRQ affinity, and host tasks/IRQs over an interval"]
    rows = {c.name: c for r in result.results for c in r.checks}
    # vm1's live numatune (libvirt) and its sample (the command) both reached the parse.
    assert rows["vm1: high cross-NUMA traffic"].found.startswith("numatune strict, 0.00% of memory off node(s) 0")
    assert rows["vm2: not running"].found == "no QEMU pid file"
    # The interval flag reached the reads: each sample sleeps the run's interval.
    assert len(sampled) == 2 and all("sleep 0.5" in cmd for cmd in sampled), sampled


def test_run_flags_host_inputs_and_run_options_are_frozen() -> None:
    flags, inputs, options = RunFlags(yes=True), HostInputs(k3s_token=Secret(TOKEN)), RunOptions()
    for value, field in ((flags, "yes"), (inputs, "k3s_token"), (options, "flags")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, None)
    assert flags.yes and not RunFlags().yes  # nothing changed them


def test_the_token_never_appears_in_the_repr_of_inputs_targets_or_options(world: World) -> None:
    inputs = HostInputs(k3s_token=Secret(TOKEN), k3s_artifacts=Path("/srv/k3s"))
    targets = targets_for(Number(), hv1(world), RunFlags(restart=True), inputs=inputs, mode="plan", run_id="r1")
    shown = [repr(inputs), repr(targets), str(targets), repr(RunOptions(flags=RunFlags(yes=True)))]
    for text in shown:
        assert TOKEN not in text and "k3s_token" not in text, text
    assert "k3s_artifacts=PosixPath('/srv/k3s')" in repr(inputs)  # the rest of the inputs is shown
    (target,) = targets
    assert target.inputs.k3s_token == Secret(TOKEN) and target.flags.restart and target.run_id == "r1"


def test_host_inputs_merge_keeps_what_each_step_read() -> None:
    token = HostInputs(k3s_token=Secret(TOKEN))
    merged = token.merged(HostInputs(local_tools={"xorriso": "/usr/bin/xorriso"})).merged(HostInputs())
    assert merged.k3s_token == Secret(TOKEN) and merged.local_tools == {"xorriso": "/usr/bin/xorriso"}


def test_a_command_answer_and_a_peer_answer_are_told_apart() -> None:
    result = CmdResult("cat x", 0, "1\n", "", 0.0)
    answers = Answers({"facts": result, "down": Unreached("refused"), "dom": None})
    assert answers.stdout() == "1\n" and answers.peer("down") == Unreached("refused")
    assert answers.domain("dom") is None and "dom" in answers and "other" not in answers
    with pytest.raises(KeyError):
        answers.stdout("down")
    with pytest.raises(KeyError):
        answers.stdout("other")
