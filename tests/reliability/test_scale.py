"""Scale: one run of bios.check and host.tune's verification over 20 real sshd hypervisors at once.

Each host is its own OpenSSH daemon over its own generated sysroot (tests/harness/fanout.py). The run
is what `invoke verify.bios` and `invoke verify.tuning` do, in one verify-mode Engine run. Parallelism
is proven from the run records (the hosts' journal intervals overlap), never from a stopwatch.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from lib.results import HostRun
from lib.runner import exit_code, failure_text
from tests.harness.fanout import STEPS, TUNED, journal, run_fanout, write_fleet
from tests.harness.sshd import SshdFarm, SshHost, count_auths, start_hosts
from tests.harness.sysfs import fast_tmp_dir
from tests.harness.world import FAST

N = 20


@dataclass
class Fleet:
    farm: SshdFarm
    hosts: dict[str, SshHost]  # inventory name -> its sshd
    template: Path  # hosts/*.yaml for every host; each test works on a copy

    def hosts_dir(self, tmp: Path) -> Path:
        return Path(shutil.copytree(self.template, tmp / "hosts"))


@pytest.fixture(scope="module")
def fleet(sshd_farm: SshdFarm) -> Iterator[Fleet]:
    base = Path(tempfile.mkdtemp(prefix="scale-", dir=fast_tmp_dir()))
    names = [f"hv{i:02d}" for i in range(N)]
    ssh = start_hosts(sshd_farm, "scale", N)  # from the main thread: the farm is not thread-safe
    write_fleet(ssh, base / "hosts", base / "sysroots", names)
    yield Fleet(sshd_farm, dict(zip(names, ssh, strict=True)), base / "hosts")
    for host in ssh:
        if host.name in sshd_farm.hosts:
            sshd_farm.stop(host.name)
    shutil.rmtree(base, ignore_errors=True)


def run(hosts_dir: Path, runs_dir: Path) -> list[HostRun]:
    # FAST retry policies with a recording sleep: a refused connection fails without real back-off.
    return run_fanout(hosts_dir, runs_dir, policies=FAST, sleep=lambda _s: None)


def by_host(runs: list[HostRun]) -> dict[str, HostRun]:
    return {r.host: r for r in runs}


def test_twenty_hosts_one_run_each_logged_in_once_and_in_parallel(fleet: Fleet, tmp_path: Path) -> None:
    hosts_dir, runs_dir = fleet.hosts_dir(tmp_path), tmp_path / "runs"
    before = {name: count_auths(h) for name, h in fleet.hosts.items()}

    runs = run(hosts_dir, runs_dir)

    assert sorted(r.host for r in runs) == sorted(fleet.hosts)
    assert exit_code(runs) == 0, failure_text(runs)
    assert all(r.exit_code == 0 and not r.error for r in runs)
    # One SSH session per host per run, shared by both steps.
    logins = {name: count_auths(h) - before[name] for name, h in fleet.hosts.items()}
    assert logins == dict.fromkeys(fleet.hosts, 1)

    spans: dict[str, tuple[float, float]] = {}
    for r in runs:
        lines = journal(runs_dir, r)
        assert [(e["step"], e["status"]) for e in lines] == [(s, "ok") for s in STEPS], r.host
        assert all(c["ok"] for e in lines for c in e["checks"]) and all(e["checks"] for e in lines)
        assert all(e["started"] <= e["ended"] for e in lines)
        spans[r.host] = (min(e["started"] for e in lines), max(e["ended"] for e in lines))
    # Every host's run was under way before any host's run had ended: all 20 overlapped at one moment.
    latest_start = max(start for start, _ in spans.values())
    earliest_end = min(end for _, end in spans.values())
    assert latest_start < earliest_end, spans


def test_one_host_with_another_topology_fails_alone_and_by_name(fleet: Fleet, tmp_path: Path) -> None:
    hosts_dir, runs_dir = fleet.hosts_dir(tmp_path), tmp_path / "runs"
    odd = "hv07"
    # hv07's machine has one socket of 36 cores where its inventory says two of 18.
    write_fleet([fleet.hosts[odd]], hosts_dir, tmp_path / "sysroots", [odd],
                shape_of=lambda _n: replace(TUNED, sockets=1, cores_per_socket=36))

    runs = by_host(run(hosts_dir, runs_dir))

    assert runs[odd].exit_code == 3  # bios.check: the host does not match the inventory
    assert [r.step for r in runs[odd].results if r.status == "failed"] == ["bios.check"]
    assert {name for name, r in runs.items() if r.exit_code} == {odd}
    assert all(len(r.results) == len(STEPS) for name, r in runs.items() if name != odd)
    text = failure_text(list(runs.values()))
    assert text.startswith(f"{odd}: FAILED (exit 3)") and "step bios.check on hv07" in text
    assert not any(f"{name}:" in text for name in runs if name != odd)
    row = next(line for line in text.splitlines() if " sockets " in line)
    assert row.split() == ["✗", "sockets", "2", "1"]


def test_one_dead_sshd_fails_only_that_host(fleet: Fleet, tmp_path: Path) -> None:
    hosts_dir, runs_dir = fleet.hosts_dir(tmp_path), tmp_path / "runs"
    gone = "hv13"
    fleet.farm.kill(fleet.hosts[gone].name)  # the whole sshd tree: nothing listens on its port
    try:
        runs = by_host(run(hosts_dir, runs_dir))
    finally:  # back on the same port and key, so the fleet stays whole for whoever runs next
        fleet.hosts[gone] = fleet.farm.restart(fleet.hosts[gone].name)

    assert {name for name, r in runs.items() if r.exit_code} == {gone}
    assert all(r.exit_code == 0 for name, r in runs.items() if name != gone)
    text = failure_text(list(runs.values()))
    assert text.startswith(f"{gone}: FAILED (exit 4)"), text
    assert f"{gone}: bios.check on {gone}: cannot connect to " in text
    assert "resume:" not in text  # a read-only run has nothing to resume: run it again
    assert f"records: {runs[gone].records}" in text
    assert not any(f"{name}:" in text for name in runs if name != gone)
