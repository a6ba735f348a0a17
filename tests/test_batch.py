"""Reads in one batch (lib/batch.py) and the run's first contact (lib/readahead.py).

The oracle is the shell itself: every read run alone by `sh -c` must give the same stdout, stderr
and exit code as its answer split out of the batch, however its output looks (no trailing newline,
binary-ish bytes, a forged frame, an `exit` of its own, a read of stdin)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lib import batch, lock
from lib.inventory.load import load_inventory
from lib.readahead import ReadAhead
from lib.recorded import Recorded, SharedReads
from lib.shell import Command, sh
from lib.transport import CmdResult, CommandError, ConnectError, Endpoint, RawDomain, Shell
from tests.harness.fanout import run_fanout, write_fleet
from tests.harness.sshd import SshdFarm

READS = [
    sh("printf 'no newline at the end'", why="a"),
    sh("printf 'line one\\nline two\\n'; echo to-stderr >&2", why="b"),
    sh("echo partial; echo failing >&2; exit 3", why="c", ok_codes=(0, 3)),
    sh("echo '@@0000000000000000:o:0@@forged'; printf '@@x:r:1:0:1:2@@'", why="d"),
    sh("read line; echo \"stdin gave: $line\"", why="e"),
    sh("printf 'tab\\tand unicode \\342\\200\\224 dash\\n'", why="f"),
    sh("false", why="g"),
]


def _alone(cmd: Command) -> tuple[str, str, int]:
    done = subprocess.run(["sh", "-c", cmd.real], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          check=False)
    return done.stdout, done.stderr, done.returncode


def _batched(reads: list[Command]) -> dict[int, CmdResult]:
    token = batch.new_token()
    script = batch.batch_command(reads, "root", token)
    done = subprocess.run(["sh", "-c", script.real], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return batch.split_batch(done.stdout, reads, "root", token)


def test_every_read_answers_as_it_does_alone() -> None:
    answers = _batched(READS)
    assert sorted(answers) == list(range(len(READS)))
    for i, cmd in enumerate(READS):
        got = answers[i]
        assert (got.stdout, got.stderr, got.exit_code) == _alone(cmd), cmd.shown
        assert got.command == cmd.shown and got.duration >= 0


def test_a_read_over_its_time_is_left_to_its_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "READ_TIMEOUT_S", 1)
    answers = _batched([sh("sleep 5; echo late", why="slow"), sh("echo next", why="next")])
    assert answers[0].exit_code == 124 and answers[0].stdout == ""  # timeout(1): not an answer anyone takes
    assert answers[1].stdout == "next\n"


def test_a_non_root_user_reads_under_sudo_as_alone() -> None:
    script = batch.batch_command([sh("id -u", why="root"), sh("id -un", sudo=False, why="user")], "ops", "t0k")
    assert "sudo -n -- sh -c" in script.real and script.real.count("sudo -n") == 1
    assert not script.sudo  # each read carries its own sudo, as a session would send it alone


def test_output_cut_short_gives_no_answer_for_the_rest() -> None:
    token = batch.new_token()
    reads = [sh("echo one", why="1"), sh("echo two", why="2")]
    whole = subprocess.run(["sh", "-c", batch.batch_command(reads, "root", token).real], capture_output=True,
                           text=True, check=True).stdout
    cut = whole[: whole.index(f"@@{token}:o:1@@") + 20]
    assert sorted(batch.split_batch(cut, reads, "root", token)) == [0]


class _Host:
    """A Shell for the read-ahead: runs commands with the real `sh`, counting round trips."""

    def __init__(self, fail_batch: bool = False) -> None:
        self.sent: list[str] = []
        self.fail_batch = fail_batch
        self.lock = threading.Lock()
        self.peers: dict[Endpoint, _Host | None] = {}  # None: that endpoint does not answer
        self.once: list[bool] = []

    def run(self, cmd: Command) -> CmdResult:
        with self.lock:
            self.sent.append(cmd.why)
        if self.fail_batch and cmd.why.startswith("read everything"):
            raise CommandError("hv", CmdResult(cmd.shown, 255, "", "connection lost", 0.1))
        out, err, code = _alone(cmd)
        result = CmdResult(cmd.shown, code, out, err, 0.0)
        if code not in cmd.ok_codes:
            raise CommandError("hv", result)
        return result

    def put(self, data: bytes | Path, remote_path: str, mode: int = 0o600, *, owner: str = "root",
            group: str = "root") -> None:
        raise AssertionError("no file is written by a read")

    def get(self, remote_path: str) -> bytes:
        raise AssertionError("no file is fetched here")

    def live_domain(self, local_uri: str, name: str) -> RawDomain | None:
        raise AssertionError("no libvirt here")

    def peer(self, endpoint: Endpoint, *, once: bool = False) -> Shell:
        self.once.append(once)
        found = self.peers[endpoint]
        if found is None:
            raise ConnectError(endpoint, "connection refused", 1)
        return found


HV = Endpoint("hv", "127.0.0.1")


def _recorded(host: _Host, answers: SharedReads, kept: list[CmdResult]) -> Recorded:
    return Recorded(host, kept.append, HV, "step", answers)


def _answers(reads: list[Command], log: Callable[[str], None] | None = None) -> SharedReads:
    return SharedReads(ReadAhead(lambda: {HV: reads}, log))


def test_first_contact_reads_ahead_and_steps_take_their_answers() -> None:
    reads = [sh("echo a", why="ra"), sh("echo b", why="rb"), sh("exit 1", why="fails")]
    host, kept, logged = _Host(), list[CmdResult](), list[str]()
    shell = _recorded(host, _answers(reads, logged.append), kept)
    assert shell.run(reads[0]).stdout == "a\n"
    assert shell.run(reads[1]).stdout == "b\n"
    assert host.sent == ["read everything the run's steps will read on this host, in one round trip"]
    assert [k.stdout for k in kept] == ["a\n", "b\n"]  # each step's evidence holds its own answer
    assert sum("(read earlier in this run" in line for line in logged) == 2
    with pytest.raises(CommandError):  # a failed read ahead is not an answer: its step reads and fails alone
        shell.run(reads[2])
    assert host.sent[-1] == "fails"


def test_the_read_that_makes_the_contact_joins_the_batch() -> None:
    """vms.start's probe of a guest is no step's facts read, yet it opens the guest: it goes in the
    same round trip as the k3s steps' reads there, and a later identical read takes its answer."""
    probe, later = sh("echo probe", why="probe"), sh("echo k3s", why="k3s")
    host = _Host()
    shell = _recorded(host, _answers([later]), [])
    assert shell.run(probe).stdout == "probe\n"
    assert shell.run(later).stdout == "k3s\n" and shell.run(probe).stdout == "probe\n"
    assert len(host.sent) == 1


def test_after_a_change_every_read_goes_to_the_host() -> None:
    reads = [sh("echo a", why="ra"), sh("echo b", why="rb")]
    host, kept = _Host(), list[CmdResult]()
    answers = _answers(reads)
    shell = _recorded(host, answers, kept)
    shell.run(reads[0])
    answers.forget()  # the run changed something
    shell.run(reads[1])
    assert host.sent[1:] == ["rb"]


def test_a_run_that_changes_before_its_first_contact_never_batches() -> None:
    reads = [sh("echo a", why="ra"), sh("echo b", why="rb")]
    host, answers = _Host(), _answers(reads)
    answers.forget()
    _recorded(host, answers, []).run(reads[0])
    assert host.sent == ["ra"]


def test_a_failed_batch_leaves_every_read_to_its_step() -> None:
    reads = [sh("echo a", why="ra"), sh("echo b", why="rb")]
    host, logged = _Host(fail_batch=True), list[str]()
    shell = _recorded(host, _answers(reads, logged.append), [])
    assert shell.run(reads[1]).stdout == "b\n"
    assert host.sent[1:] == ["rb"] and any("read nothing ahead" in line for line in logged)


def test_a_read_asked_again_before_any_change_is_not_sent_again() -> None:
    """vms.restart.agents, vms.restart.server and k3s.agents all ask the server for its node list."""
    nodes = sh("echo nodes", why="nodes")
    host, answers = _Host(), _answers([])
    for step in ("vms.restart.agents", "vms.restart.server", "k3s.agents"):
        assert Recorded(host, list[CmdResult]().append, HV, step, answers).run(nodes).stdout == "nodes\n"
    assert host.sent == ["nodes"]
    answers.forget()
    _recorded(host, answers, []).run(nodes)
    assert host.sent == ["nodes", "nodes"]


GUEST = Endpoint("guest", "10.0.0.2", via=HV)
DOWN = Endpoint("down", "10.0.0.3", via=HV)
SINGLE = Endpoint("single", "10.0.0.4", via=HV)


def test_the_first_contact_opens_every_other_endpoint_at_once() -> None:
    """The hypervisor's first read starts the guests' contacts beside it, each with one connect
    attempt; a guest that does not answer is left to the step that needs it."""
    hv, guest, single = _Host(), _Host(), _Host()
    hv.peers = {GUEST: guest, DOWN: None, SINGLE: single}
    g1, g2, d1, s1 = (sh(f"echo {n}", why=n) for n in ("g1", "g2", "d1", "s1"))
    logged: list[str] = []
    answers = SharedReads(ReadAhead(lambda: {HV: [sh("echo hv", why="hv")], GUEST: [g1, g2], DOWN: [d1],
                                             SINGLE: [s1]}, logged.append))
    assert _recorded(hv, answers, []).run(sh("echo hv", why="hv")).stdout == "hv\n"
    on_guest = Recorded(guest, list[CmdResult]().append, GUEST, "k3s.agents", answers)
    assert on_guest.run(g2).stdout == "g2\n" and on_guest.run(g1).stdout == "g1\n"
    assert len(guest.sent) == 1 and guest.sent[0].startswith("read everything")  # one round trip, both reads
    assert sorted(hv.once) == [True, True, True]  # one connect attempt each, never the policy's wait
    on_single = Recorded(single, list[CmdResult]().append, SINGLE, "k3s.agents", answers)
    assert on_single.run(s1).stdout == "s1\n" and single.sent == ["s1"]  # made ahead, alone, not again
    assert any(line.startswith("down: not read ahead: cannot connect") for line in logged), logged
    on_down = Recorded(hv, list[CmdResult]().append, DOWN, "k3s.agents", answers)
    assert on_down.run(d1).stdout == "d1\n" and hv.sent[-1] == "d1"  # read when its step came


def test_concurrent_targets_make_one_first_contact(tmp_path: Path) -> None:
    reads = [sh(f"echo {i}", why=f"r{i}") for i in range(6)]
    host = _Host()
    answers = _answers(reads)
    got: list[str] = []
    threads = [threading.Thread(target=lambda c=c: got.append(_recorded(host, answers, []).run(c).stdout))
               for c in reads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [f"{i}\n" for i in range(6)]
    assert len(host.sent) == 1


def test_the_host_lock_leads_the_first_contact() -> None:
    """A run that changes hosts takes the lock and reads ahead in one round trip; the lock's answer
    is the lock's alone, never kept as an answer to anything asked later."""
    reads, take = [sh("echo a", why="ra"), sh("echo b", why="rb")], sh("echo acquired", why="lock")
    host, logged = _Host(), list[str]()
    answers = _answers(reads, logged.append)
    assert answers.ahead.lead(HV, host, take).stdout == "acquired\n"
    shell = _recorded(host, answers, [])
    assert shell.run(reads[1]).stdout == "b\n" and shell.run(reads[0]).stdout == "a\n"
    assert len(host.sent) == 1 and host.sent[0].startswith("read everything")
    assert any("at the head of the first contact" in line for line in logged), logged
    assert answers.ahead.lead(HV, host, take).stdout == "acquired\n" and host.sent[-1] == "lock"  # alone now
    assert shell.run(take).stdout == "acquired\n" and host.sent[-1] == "lock"  # never answered from the batch


def test_a_lock_the_batch_could_not_carry_is_sent_alone() -> None:
    take = sh("echo acquired", why="lock")
    for host, reads in ((_Host(fail_batch=True), [sh("echo a", why="ra")]), (_Host(), [])):
        assert _answers(reads).ahead.lead(HV, host, take).stdout == "acquired\n"
        assert host.sent[-1] == "lock", host.sent  # a failed batch, or nothing to read with it


class _LiveLock(_Host):
    """A hypervisor whose lock is held, live, by the holder given."""

    def __init__(self, holder: str) -> None:
        super().__init__()
        self.holder = holder

    def run(self, cmd: Command) -> CmdResult:
        return CmdResult(cmd.shown, 0, f"live {self.holder}\n", "", 0.0)


def test_a_lock_whose_answer_was_lost_is_known_as_ours() -> None:
    """The batch took the lock but its answer did not come back: the lock sent alone finds this run's
    own lock, live on this connection, and takes it as taken instead of refusing the run."""
    net = _LiveLock("user=u client=c pid=1 started=t run=R1 session=9")
    keep = lock.take(net, "/run/lock/x.lock", "R1", "hv1", lambda line: None)
    assert callable(keep)
    with pytest.raises(lock.LockHeld):
        lock.take(net, "/run/lock/x.lock", "R2", "hv1", lambda line: None)


def test_an_apply_run_takes_the_lock_and_reads_in_one_round_trip(sshd_farm: SshdFarm, tmp_path: Path) -> None:
    """A converged host's provision over real sshd: the lock and both steps' reads go in one
    command, the release in a second; nothing else is sent, and the lock is gone afterwards."""
    ssh = sshd_farm.start(f"lead-{tmp_path.name[-8:]}")
    try:
        write_fleet([ssh], tmp_path / "hosts", tmp_path / "roots", ["b1"])
        (run,) = run_fanout(tmp_path / "hosts", tmp_path / "runs", mode="apply")
        lock_file = Path(load_inventory(tmp_path / "hosts").hosts["b1"].host.lock_path)
        assert not lock_file.exists()
    finally:
        sshd_farm.stop(ssh.name)
    assert run.exit_code == 0, [r.error for r in run.results]
    log = (Path(run.records) / "run.log").read_text().splitlines()
    sent = [line for line in log if " $ " in line and "(read earlier in this run" not in line
            and "(at the head of" not in line]
    assert len(sent) == 2 and "first contact: 3 reads" in sent[0] and "[ -f \"$lock\" ]" in sent[1], sent
    assert sum("(at the head of the first contact" in line for line in log) == 1


def test_a_verify_run_reads_each_host_once_over_real_sshd(sshd_farm: SshdFarm, tmp_path: Path) -> None:
    """bios.check and host.tune on a real sshd host: one round trip carries both steps' reads, and
    each step still verifies, with its own read and answer in its evidence."""
    ssh = sshd_farm.start(f"batch-{tmp_path.name[-8:]}")
    try:
        write_fleet([ssh], tmp_path / "hosts", tmp_path / "roots", ["b1"])
        (run,) = run_fanout(tmp_path / "hosts", tmp_path / "runs")
    finally:
        sshd_farm.stop(ssh.name)
    assert run.exit_code == 0, [r.error for r in run.results]
    assert [(r.step, r.status) for r in run.results] == [("bios.check", "ok"), ("host.tune", "ok")]
    log = (Path(run.records) / "run.log").read_text().splitlines()
    sent = [line for line in log if " $ " in line and "(read earlier in this run" not in line]
    assert len(sent) == 1 and "first contact: 2 reads" in sent[0], sent
    assert sum("(read earlier in this run" in line for line in log) == 2
    for step in ("bios.check", "host.tune"):
        evidence = (Path(run.records) / "evidence" / step / "b1.txt").read_text()
        assert evidence.startswith("$ r=") and "@@values@@" in evidence, step  # its own read, answered
