"""Issue #8 item 1: the hypervisor's sshd dies, comes back, or hangs, during a run; real sshd only.

A killed sshd (listener and every per-connection process) drops the live connection: the command is
retried (transient policy) over a new connection (ssh_connect policy) once sshd is back, or, when it
never comes back, the run stops with exit 4 and a resume command that works. A hung sshd (SIGSTOP)
ends in the command's timeout, or a connect's banner timeout, never in a hung run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from lib.reads import Answers
from lib.remote import CommandError, ConnectError, Endpoint, Session
from lib.results import Check, HostRun
from lib.retry import Policies, Policy
from lib.runner import failure_text
from lib.shell import Command, sh
from lib.steps.base import Plan, Step, Target
from tests.engine_steps import REGISTRY
from tests.harness.inventory import write_host
from tests.harness.sshd import SshdFarm, SshHost, count_auths, descendants, paramiko_client
from tests.harness.world import World, wait_for, world_flags


class Slow(Step[list[str]]):
    """Writes `started`, sleeps 2 s, writes `done`: a command long enough to kill sshd under it."""

    name = "test.slow"
    summary = "a 2 s command"

    def _file(self, target: Target) -> str:
        return f"{world_flags(target).state}/{target.name}.slow"

    def facts_command(self, target: Target) -> Command:
        return sh("cat {f} 2>/dev/null; true", f=self._file(target), sudo=False)

    def parse(self, target: Target, answers: Answers) -> list[str]:
        return answers.stdout().split()

    def plan(self, target: Target, facts: Any | None) -> Plan:
        if facts and "done" in facts:
            return Plan(reason="done already")
        return Plan((sh("echo started >> {f}; sleep 2; echo done >> {f}", f=self._file(target), timeout=20,
                        sudo=False),), "a slow command")

    def verify(self, target: Target, facts: Any) -> list[Check]:
        return [Check("done", "1", str(facts.count("done")), facts.count("done") == 1)]


# Small but real waits: the reconnect must really happen after the restart.
RECONNECT = Policies(
    ssh_connect=Policy("ssh_connect", attempts=6, wait_initial=1, wait_max=2),
    transient=Policy("transient", attempts=3, wait_initial=1, wait_max=1, exit_codes=(75,)),
    converge=Policy("converge", attempts=0, wait_initial=1, wait_max=1, deadline=10),
)
GIVE_UP = Policies(
    ssh_connect=Policy("ssh_connect", attempts=2, wait_initial=0.2, wait_max=0.2),
    transient=Policy("transient", attempts=2, wait_initial=0.2, wait_max=0.2, exit_codes=(75,)),
    converge=Policy("converge", attempts=0, wait_initial=1, wait_max=1, deadline=10),
)
# One attempt each: the test is about one timeout, not about the retries around it.
ONCE = Policies(
    ssh_connect=Policy("ssh_connect", attempts=1, wait_initial=0.1, wait_max=0.1),
    transient=Policy("transient", attempts=1, wait_initial=0.1, wait_max=0.1),
)


def endpoint(host: SshHost) -> Endpoint:
    return Endpoint(host.name, host.host, host.port, host.user, str(host.key_file), str(host.known_hosts))


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, {**REGISTRY, Slow.name: Slow})


@pytest.fixture
def hv(sshd_farm: SshdFarm, world: World) -> Iterator[SshHost]:
    host = sshd_farm.start(f"flt-{world.tmp.name[-12:]}")
    write_host(world.hosts, "hv1", host)
    yield host
    sshd_farm.stop(host.name)


def in_background(fn: Callable[[], list[HostRun]]) -> tuple[threading.Thread, list[HostRun]]:
    """Run the engine off the main thread: the main thread must be the one that (re)starts sshd."""
    runs: list[HostRun] = []
    thread = threading.Thread(target=lambda: runs.extend(fn()), daemon=True)
    thread.start()
    return thread, runs


def dead(pid: int) -> bool:
    """Gone, or a zombie (PID 1 here is no init and reaps orphans only every ~2 s)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


# -- the harness's faults ----------------------------------------------------------------------

def test_kill_drops_live_connections_and_restart_keeps_port_and_key(sshd_farm: SshdFarm) -> None:
    host = sshd_farm.start("fault-kill")
    try:
        client = paramiko_client(host)
        _, out, _ = client.exec_command("echo $PPID")  # the per-connection sshd serving us
        session_pid = int(out.read())
        assert session_pid in descendants(host.pid)
        sshd_farm.kill(host.name)
        assert dead(host.pid) and dead(session_pid)
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            client.exec_command("true")  # the live connection really dropped
        client.close()
        with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
            paramiko_client(host)  # nothing listens
        before = count_auths(host)
        again = sshd_farm.restart(host.name)
        assert (again.port, again.known_hosts) == (host.port, host.known_hosts) and again.pid != host.pid
        client = paramiko_client(again)  # RejectPolicy + the same known_hosts: the same key
        _, out, _ = client.exec_command("echo back")
        assert out.read() == b"back\n"
        client.close()
        assert count_auths(again) == before + 1  # the log continues
    finally:
        sshd_farm.stop("fault-kill")


def test_restart_with_a_new_host_key(sshd_farm: SshdFarm, tmp_path: Path) -> None:
    host = sshd_farm.start("fault-rekey")
    try:
        old = tmp_path / "known_hosts_old"
        old.write_text(host.known_hosts.read_text())
        sshd_farm.kill(host.name)
        again = sshd_farm.restart(host.name, new_host_key=True)
        assert again.port == host.port
        with pytest.raises(paramiko.BadHostKeyException):
            paramiko_client(SshHost(**{**again.__dict__, "known_hosts": old}))
        paramiko_client(again).close()  # the farm's file has the new key
    finally:
        sshd_farm.stop("fault-rekey")


def test_pause_freezes_the_tree_and_unpause_thaws_it(sshd_farm: SshdFarm) -> None:
    host = sshd_farm.start("fault-pause")
    try:
        client = paramiko_client(host)
        sshd_farm.pause(host.name)
        states = {Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()[0]
                  for p in [host.pid, *descendants(host.pid)]}
        assert states - {"Z"} == {"T"}  # a zombie (a finished session child not reaped yet) cannot stop
        fresh = paramiko.SSHClient()
        fresh.load_host_keys(str(host.known_hosts))
        fresh.set_missing_host_key_policy(paramiko.RejectPolicy())
        with pytest.raises(paramiko.SSHException):  # TCP connects; the banner never comes
            fresh.connect(host.host, port=host.port, username=host.user, key_filename=str(host.key_file),
                          look_for_keys=False, allow_agent=False, timeout=1, banner_timeout=1)
        fresh.close()
        sshd_farm.unpause(host.name)
        _, out, _ = client.exec_command("echo thawed")
        assert out.read() == b"thawed\n"  # the open connection survived the pause
        client.close()
    finally:
        sshd_farm.stop("fault-pause")


# -- the run survives a restarted sshd, or stops with a resume that works ------------------------

def test_run_reconnects_after_sshd_is_killed_and_restarted(sshd_farm: SshdFarm, world: World,
                                                           hv: SshHost) -> None:
    marks = world.state_file("hv1", "slow")
    thread, runs = in_background(lambda: world.run("test.a", "test.slow", "test.b", sleep=time.sleep,
                                                   policies=RECONNECT))
    wait_for(lambda: marks.exists() and "started" in marks.read_text(), "the slow command to start")
    sshd_farm.kill(hv.name)  # mid-command: the connection drops, the command dies with it
    time.sleep(2.5)
    sshd_farm.restart(hv.name)
    thread.join(60)
    assert not thread.is_alive()
    (run,) = runs
    assert run.exit_code == 0, failure_text(runs) + world.out.getvalue()
    assert [(r.step, r.status) for r in run.results] == [("test.a", "changed"), ("test.slow", "changed"),
                                                        ("test.b", "changed")]
    assert marks.read_text().split() == ["started", "started", "done"]  # killed once, ran again in full
    log = (world.runs / "hv1" / run.run_id / "run.log").read_text()
    assert "connection lost" in log and "retrying" in log  # the transient policy retried the command
    assert "connect attempt 1 failed" in log  # the ssh_connect policy waited for sshd to come back


def test_run_past_the_deadline_stops_with_exit_4_and_the_resume_works(sshd_farm: SshdFarm, world: World,
                                                                      hv: SshHost) -> None:
    marks = world.state_file("hv1", "slow")
    steps = ("test.a", "test.slow", "test.b")
    thread, runs = in_background(lambda: world.run(*steps, sleep=time.sleep, policies=GIVE_UP))
    wait_for(lambda: marks.exists() and "started" in marks.read_text(), "the slow command to start")
    sshd_farm.kill(hv.name)  # and it stays down
    thread.join(60)
    assert not thread.is_alive()
    (first,) = runs
    assert first.exit_code == 4
    assert [(r.step, r.status) for r in first.results] == [("test.a", "changed"), ("test.slow", "failed")]
    text = failure_text(runs)
    assert text.startswith("hv1: FAILED (exit 4)")
    assert "step test.slow on hv1" in text
    assert "cannot connect to" in text and f"127.0.0.1:{hv.port}" in text
    assert "resume: invoke provision --host=hv1 --resume" in text

    # No wait for PID 1 (here it reaps only every ~2 s) to reap the killed sessions: the lock takes
    # a zombie sshd for the dead holder it is.
    sshd_farm.restart(hv.name)
    (second,) = world.run(*steps, sleep=time.sleep, policies=GIVE_UP, resume=True)
    assert second.exit_code == 0, failure_text([second]) + world.out.getvalue()
    assert [(r.step, r.status) for r in second.results] == [("test.a", "skipped"), ("test.slow", "changed"),
                                                           ("test.b", "changed")]
    assert second.results[0].reason == f"verified in run {first.run_id}"
    assert "broke a stale host lock" in world.out.getvalue()  # the dead run's lock, no --break-lock needed
    assert world.state_file("hv1", "ran").read_text().split() == ["test.a", "test.b"]  # test.a ran once
    assert marks.read_text().split() == ["started", "started", "done"]


# -- a hung sshd: bounded by the command timeout and the connect timeout --------------------------

@contextlib.contextmanager
def hung_host(farm: SshdFarm, name: str, *, connected: bool) -> Iterator[tuple[SshHost, Session]]:
    """A host and a session to it (its connection opened, or not yet); thawed and stopped afterwards."""
    host = farm.start(name)
    session = Session(endpoint(host), ONCE, connect_timeout=2)
    try:
        if connected:
            session.run(sh("true", sudo=False, why="open the connection"))
        yield host, session
    finally:
        farm.unpause(host.name)
        session.close()
        farm.stop(host.name)


def test_hung_sshd_during_a_command_hits_its_timeout(sshd_farm: SshdFarm) -> None:
    with hung_host(sshd_farm, "hang-during", connected=True) as (host, session):
        timer = threading.Timer(0.3, sshd_farm.pause, args=(host.name,))  # signals only: any thread will do
        timer.start()
        with pytest.raises(CommandError) as err:
            session.run(sh("sleep 1; echo hi", timeout=3, sudo=False, why="outlive the pause"))
        timer.join()
        assert "timed out after 3 s" in str(err.value) and "after 1 attempt(s)" in str(err.value)
        assert err.value.exit_code == 4


def test_hung_sshd_before_a_command_on_an_open_connection_hits_its_timeout(sshd_farm: SshdFarm) -> None:
    # paramiko waits up to an hour for a channel and forever for the exec reply, and invoke's timer
    # only starts once both are done: this hung until lib/remote.py's watchdog.
    with hung_host(sshd_farm, "hang-before", connected=True) as (host, session):
        sshd_farm.pause(host.name)
        with pytest.raises(CommandError) as err:
            session.run(sh("sleep 1; echo hi", timeout=3, sudo=False, why="never starts"))
        assert "timed out after 3 s (the host stopped answering; connection closed)" in str(err.value)


def test_connect_to_a_hung_sshd_gives_up(sshd_farm: SshdFarm) -> None:
    with hung_host(sshd_farm, "hang-connect", connected=False) as (host, session):
        sshd_farm.pause(host.name)
        with pytest.raises(ConnectError) as err:
            session.run(sh("echo hi", timeout=3, sudo=False, why="never connects"))
        assert f"no SSH handshake from 127.0.0.1:{host.port} within 2 s" in str(err.value)
        assert err.value.exit_code == 4
    assert count_auths(host) == 0
