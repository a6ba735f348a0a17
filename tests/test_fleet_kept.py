"""A fleet worker keeps a host's SSH connection between its steps (lib/fleet/kept.py), over real sshd:
one login for a host's two step runs where there were two, each run still taking and releasing the
host lock and keeping its own records; the last step's run closes it; a stale or dead one is never
reused."""

from __future__ import annotations

from pathlib import Path

from lib.fleet.hostrun import HostRunner
from lib.fleet.kept import KeptConnections
from lib.inventory.load import load_inventory
from tests.harness.fanout import write_fleet
from tests.harness.fleet import hypervisor_book
from tests.harness.sshd import SshdFarm, count_auths
from tests.harness.world import FAST


def test_a_hosts_steps_share_one_login_and_each_keeps_its_own_lock_and_records(sshd_farm: SshdFarm,
                                                                              tmp_path: Path) -> None:
    ssh = sshd_farm.start(f"kept-{tmp_path.name[-8:]}")
    try:
        write_fleet([ssh], tmp_path / "hosts", tmp_path / "roots", ["k1"])
        loaded = load_inventory(tmp_path / "hosts").hosts["k1"]
        kept = KeptConnections(limit=4)
        book = hypervisor_book()
        before = count_auths(ssh)
        outcomes = []
        for step in book.names:
            keep = step != book.names[-1]
            runner = HostRunner(book, tmp_path / "runs", FAST, sleep=lambda _s: None, pools=kept.pools(keep))
            outcomes.append(runner.run(loaded, only=[step]))
            assert len(kept) == (1 if keep else 0)  # handed back after the first, closed after the last
            assert not Path(loaded.host.lock_path).exists()  # each run released its lock
        assert count_auths(ssh) - before == 1, "the second step logged in again"
    finally:
        sshd_farm.stop(ssh.name)
    assert [o.exit_code for o in outcomes] == [0, 0], [o.error for o in outcomes]
    logs = [(Path(o.records) / "run.log").read_text() for o in outcomes]
    assert len({o.records for o in outcomes}) == 2
    for log, step in zip(logs, book.names, strict=True):
        assert f"step {step} started" in log and "(at the head of the first contact's reads)" in log
        assert log.count(" $ ") >= 2  # its own batch and release, in its own records


class _Conn:
    def __init__(self, alive: bool = True) -> None:
        self.is_connected, self.closed = alive, False

    def close(self) -> None:
        self.closed, self.is_connected = True, False


def test_what_is_kept_is_bounded_and_never_stale() -> None:
    from lib.transport import Endpoint

    now = [0.0]
    kept = KeptConnections(limit=2, idle_s=30, clock=lambda: now[0])
    a, b, c = (Endpoint(n, "127.0.0.1") for n in "abc")
    ca, cb, cc = _Conn(), _Conn(), _Conn()
    kept.give(a, ca)
    kept.give(b, cb)
    kept.give(c, cc)  # past the limit: the oldest is closed
    assert ca.closed and len(kept) == 2 and kept.take(a) is None
    now[0] = 31.0
    assert kept.take(b) is None and cb.closed  # idle too long: closed, not reused
    dead = _Conn(alive=False)
    kept.give(a, dead)
    assert kept.take(a) is None
    fresh = _Conn()
    kept.give(a, fresh)
    assert kept.take(a) is fresh and kept.take(a) is None  # taken once
    kept.close_all()
    assert cc.closed
