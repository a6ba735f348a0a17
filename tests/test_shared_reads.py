"""Shared reads (Command.shared): one answer per step for all its targets, never older than a change.

Over real sshd hosts: a server VM and two agents, each target of one step asking the server the
same question (as vms.restart.agents and k3s.agents ask for the node list).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lib.runner import SharedReads
from lib.transport import CmdResult, Endpoint
from tests.engine_steps import REGISTRY
from tests.harness.inventory import small_vm, write_host
from tests.harness.sshd import SshdFarm
from tests.harness.world import World


@pytest.fixture
def world(tmp_path: Path, sshd_farm: SshdFarm) -> Iterator[World]:
    world = World(tmp_path, REGISTRY)
    tag = world.tmp.name[-10:]
    hosts = [sshd_farm.start(f"sh{i}-{tag}") for i in range(4)]
    write_host(world.hosts, "hv1", hosts[0], vms=[small_vm(f"vm{i}", i, g, role="server" if i == 0 else "agent")
                                                  for i, g in enumerate(hosts[1:])])
    yield world
    for host in hosts:
        sshd_farm.stop(host.name)


def _reads(world: World) -> int:
    return len(world.state_file("server", "reads").read_text().split())


def test_every_target_of_a_step_takes_one_answer_and_keeps_it_as_evidence(world: World) -> None:
    (run,) = world.run("test.shared")
    assert [r.status for r in run.results] == ["ok"] * 3, [r.error for r in run.results]
    assert _reads(world) == 1  # three targets asked; the server was asked once
    records = world.runs / run.host / run.run_id / "evidence" / "test.shared"
    for vm in ("vm0", "vm1", "vm2"):  # each target's evidence holds the answer it used
        assert "wc -l" in (records / f"{vm}.txt").read_text()


def test_a_change_makes_every_later_read_fresh(world: World) -> None:
    (run,) = world.run("test.shared", flags={"change": True})
    # Without forgetting at a change, a target's read after its change would be the first answer (1).
    assert [r.status for r in run.results] == ["changed"] * 3, [r.error for r in run.results]
    assert _reads(world) >= 2


def _answer(text: str) -> CmdResult:
    return CmdResult("true", 0, text, "", 0.0)


def test_answers_read_once_for_concurrent_askers_and_again_after_forget() -> None:
    answers, calls, gate = SharedReads(), [], threading.Event()
    key = ("step", Endpoint("h", "127.0.0.1"), "cmd")

    def read() -> CmdResult:
        calls.append(1)
        gate.wait(5)
        return _answer(str(len(calls)))

    threads = [threading.Thread(target=lambda: answers.get(key, read)) for _ in range(3)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1
    answers.forget()
    assert answers.get(key, read).stdout == "2"


def test_a_failed_read_is_not_kept() -> None:
    answers = SharedReads()
    key = ("step", Endpoint("h", "127.0.0.1"), "cmd")

    def fails() -> CmdResult:
        raise OSError("connection lost")

    with pytest.raises(OSError):
        answers.get(key, fails)
    assert answers.get(key, lambda: _answer("ok")).stdout == "ok"
