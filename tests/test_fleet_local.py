"""Fleet rollouts on the local engine over 20 real sshd hypervisors (tests/harness/fleet.py).

Each scenario is asserted from the records the rollout leaves: the fleet record, and each host's own
run directories and journals (a host the rollout never started has none). Nothing is timed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from lib.fleet.front import RolloutFlags
from lib.fleet.local import LocalRollout
from lib.fleet.plan import FDS_PER_HOST
from lib.fleet.record import FleetRecordError, FleetState, approve, load
from lib.fleet.show import exit_code, recap, verdict
from tests.harness.fleet import FleetWorld, fleet_json, fleet_world, host_runs, journal, rollout
from tests.harness.sshd import SshdFarm
from tests.harness.sysfs import fast_tmp_dir
from tests.inventory_helpers import REPO

N = 20
STEPS = ["bios.check", "host.tune"]


@pytest.fixture(scope="module")
def fleet(sshd_farm: SshdFarm) -> Iterator[FleetWorld]:
    base = Path(tempfile.mkdtemp(prefix="fleet-", dir=fast_tmp_dir()))
    yield from fleet_world(sshd_farm, base, N, "fleet")
    shutil.rmtree(base, ignore_errors=True)


def outcomes(data: dict[str, object]) -> dict[str, str]:
    hosts = data["hosts"]
    assert isinstance(hosts, dict)
    return {name: entry["outcome"] for name, entry in hosts.items()}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_whole_rollout_verifies_every_host_in_ansible_waves_within_the_fd_bound(fleet: FleetWorld,
                                                                                    tmp_path: Path) -> None:
    hosts_dir = fleet.copy(tmp_path, sites=lambda n: "east" if int(n[2:]) % 2 else "west")
    runs = tmp_path / "runs"
    peak, base, done = [0], open_fds(), threading.Event()

    def sample() -> None:  # the control node's descriptors while hosts run: a bound, not a time
        while not done.is_set():
            peak[0] = max(peak[0], open_fds())
            done.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        record = rollout(hosts_dir, runs, RolloutFlags(all_=True, waves="1,10%,50%,100%", per_site="3"), parallel=5)
    finally:
        done.set()
        sampler.join()

    data = fleet_json(record)
    assert data["state"] == "done" and exit_code(record.state) == 0
    assert [len(w) for w in data["waves"]] == [1, 2, 10, 7]
    # Ordered by site: every east host before any west host; the canary is the first east host.
    order = [h for w in data["waves"] for h in w]
    assert order == sorted(fleet.names, key=lambda n: ("west" if int(n[2:]) % 2 == 0 else "east", n))
    assert set(outcomes(data).values()) == {"verified"}
    for name, entry in data["hosts"].items():
        assert entry["site"] == ("east" if int(name[2:]) % 2 else "west")
        assert entry["wave"] == next(i for i, w in enumerate(data["waves"], 1) if name in w)
        (run_dir,) = host_runs(runs, name)
        assert entry["records"] == str(run_dir.resolve())
        assert [(e["step"], e["status"]) for e in journal(run_dir)] == [(s, "ok") for s in STEPS]
    # Waves in order: every host of a wave started after every host of the wave before it ended.
    spans = {n: (min(e["started"] for e in journal(host_runs(runs, n)[0])),
                 max(e["ended"] for e in journal(host_runs(runs, n)[0]))) for n in fleet.names}
    for before, after in zip(data["waves"], data["waves"][1:], strict=False):
        assert max(spans[h][1] for h in before) <= min(spans[h][0] for h in after)
    # At most 5 hosts in flight, each within its descriptor budget.
    assert peak[0] - base <= 5 * FDS_PER_HOST, (peak[0], base)
    table = recap(record.state, runs).splitlines()
    assert len(table) == N + 2 and all(len(line) <= 80 for line in table)
    assert table[-1].startswith("fleet: verified=20 failed=0")


def test_a_failing_canary_stops_after_wave_one_and_touches_no_other_host(fleet: FleetWorld, tmp_path: Path) -> None:
    hosts_dir = fleet.copy(tmp_path)
    fleet.mismatch(hosts_dir, tmp_path, "hv00")
    runs = tmp_path / "runs"

    record = rollout(hosts_dir, runs, RolloutFlags(all_=True, waves="1,50%", max_fail="10%"))

    data = fleet_json(record)
    assert data["state"] == "stopped" and data["wave"] == 1
    assert "wave 1: 1 of 1 hosts of the wave failed" in data["reason"]
    canary = data["hosts"]["hv00"]
    assert canary | {"records": "", "error": "", "details": ""} == {
        "wave": 1, "site": "-", "outcome": "failed", "exit_code": 3, "failed_step": "bios.check", "records": "",
        "error": "", "details": ""}
    assert canary["error"] == "hv00: verification of bios.check failed on hv00: 4 of 18 checks differ from the spec"
    assert f"records: {canary['records']}" in canary["details"]  # expected and found live in the host's own text
    assert {n: o for n, o in outcomes(data).items() if n != "hv00"} == dict.fromkeys(fleet.names[1:], "pending")
    assert [p.name for p in runs.iterdir() if p.name != "fleet"] == ["hv00"]  # no other host was contacted
    assert exit_code(record.state) == 3
    text = verdict(record.state, record.dir)
    assert "failed hosts: hv00" in text and f"resume: invoke fleet.provision --resume --run={data['run_id']}" in text


@pytest.mark.slow  # three rollouts of 20 hosts: make test-reliability
def test_a_ten_percent_budget_tolerates_one_bad_host_of_a_wave_and_stops_at_the_second(
        fleet: FleetWorld, tmp_path: Path) -> None:
    hosts_dir = fleet.copy(tmp_path)
    fleet.mismatch(hosts_dir, tmp_path, "hv03")
    one_bad = rollout(hosts_dir, tmp_path / "runs1", RolloutFlags(all_=True, waves="10", max_fail="10%"), parallel=2)
    data = fleet_json(one_bad)
    assert data["state"] == "done"  # 1 of 10 is not over 10%: both waves ran
    assert outcomes(data) == {n: "failed" if n == "hv03" else "verified" for n in fleet.names}
    assert exit_code(one_bad.state) == 3  # and the rollout still says a host failed

    fleet.mismatch(hosts_dir, tmp_path, "hv07")
    runs = tmp_path / "runs2"
    lines: list[str] = []
    two_bad = rollout(hosts_dir, runs, RolloutFlags(all_=True, waves="10", max_fail="10%"), parallel=2, lines=lines)
    data = fleet_json(two_bad)
    assert data["state"] == "stopped" and "2 of 10 hosts of the wave failed" in data["reason"]
    got = outcomes(data)
    assert got["hv03"] == got["hv07"] == "failed"
    assert all(got[n] == "verified" for n in ("hv00", "hv01", "hv02", "hv04", "hv05"))
    # No host started after the second failure: hv08 at most was in flight (parallel=2), hv09 never began.
    assert got["hv09"] == "pending" and not host_runs(runs, "hv09")
    assert got["hv08"] in ("pending", "verified", "stopped")
    assert all(got[n] == "pending" and not host_runs(runs, n) for n in fleet.names[10:])  # wave 2 untouched
    assert any(line.startswith("STOPPING: the failure budget was exceeded in wave 1") for line in lines)

    # --resume after fixing both machines: the verified hosts are left alone, the rest run.
    fleet.heal(hosts_dir, tmp_path, "hv03", "hv07")
    before = {n: host_runs(runs, n) for n in fleet.names}
    resumed = rollout(hosts_dir, runs, RolloutFlags(), resume=True, run_id=data["run_id"])
    assert resumed.state.run_id == data["run_id"]
    after = fleet_json(resumed)
    assert after["state"] == "done" and set(outcomes(after).values()) == {"verified"}
    for name in fleet.names:
        new = [p for p in host_runs(runs, name) if p not in before[name]]
        assert len(new) == (0 if got[name] == "verified" else 1), name
    # A failed host resumes at the step its last run did not verify: bios.check again, on a healed machine.
    resumed_hv03 = next(p for p in host_runs(runs, "hv03") if p not in before["hv03"])
    assert [(e["step"], e["status"]) for e in journal(resumed_hv03)] == [(s, "ok") for s in STEPS]


def test_pause_waits_for_the_operators_approval_between_waves(fleet: FleetWorld, tmp_path: Path) -> None:
    hosts_dir = fleet.copy(tmp_path)
    runs = tmp_path / "runs"
    result: list[object] = []
    live: list[LocalRollout] = []
    worker = threading.Thread(target=lambda: result.append(rollout(
        hosts_dir, runs, RolloutFlags(host="hv00,hv01,hv02", waves="1", pause=True), started=live.append)))
    worker.start()
    try:
        state = _wait_for(runs, lambda s: s.state == "paused" and s.wave == 2)
        assert {n: e.outcome for n, e in state.hosts.items()} == {"hv00": "verified", "hv01": "pending",
                                                                  "hv02": "pending"}
        assert state.reason.endswith(f"invoke fleet.approve --run={state.run_id}")
        approve(runs, state.run_id)
        state = _wait_for(runs, lambda s: s.state == "paused" and s.wave == 3)
        assert state.hosts["hv01"].outcome == "verified" and state.hosts["hv02"].outcome == "pending"
        approve(runs, None)  # the latest fleet run
    finally:
        worker.join(timeout=120)
        for rollout_ in live:  # a failed assertion must not leave the rollout waiting forever
            rollout_.interrupt()
        worker.join()
    final = load(runs)
    assert final.state == "done" and final.approved == [2, 3]
    assert {e.outcome for e in final.hosts.values()} == {"verified"}


def _wait_for(runs: Path, ready: Callable[[FleetState], bool],
              running: Callable[[], bool] = lambda: True) -> FleetState:
    deadline = time.monotonic() + 120  # a safety net for a hung rollout, not a measurement
    while time.monotonic() < deadline:
        if not running():
            raise AssertionError(f"the rollout ended before the state asked for: {load(runs)}")
        try:
            state = load(runs)
        except FleetRecordError:  # the record is not written yet
            state = None
        if state is not None and ready(state):
            return state
        time.sleep(0.02)
    raise AssertionError(f"the rollout never reached the state asked for: {load(runs)}")


def test_the_cli_stops_a_failed_canary_names_it_and_prints_the_resume_command(fleet: FleetWorld,
                                                                              tmp_path: Path) -> None:
    hosts_dir = fleet.copy(tmp_path)
    fleet.mismatch(hosts_dir, tmp_path, "hv00")
    runs = tmp_path / "runs"
    config = tmp_path / "invoke.yaml"
    config.write_text(yaml.safe_dump({"retries": {"ssh_connect": {"attempts": 1}}}))
    env = {**os.environ, "INVOKE_HOSTS_DIR": str(hosts_dir), "INVOKE_RUNS_DIR": str(runs)}

    def invoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), "-f", str(config), *args],
                              check=False, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)

    plan = invoke("fleet.plan", "--host=hv00,hv01,hv02,hv03", "--waves=1,100%")
    assert plan.returncode == 0, plan.stderr
    assert "wave 1 (canary)" in plan.stdout and "hv00" in plan.stdout.splitlines()[2]
    assert not runs.exists() or not any(runs.iterdir())  # plan contacts nobody and records nothing

    out = invoke("fleet.provision", "--host=hv00,hv01,hv02,hv03", "--waves=1,100%", "--runbook=hypervisor")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "failed hosts: hv00" in out.stderr
    state = load(runs)
    assert f"resume: invoke fleet.provision --resume --run={state.run_id}" in out.stderr
    # The failed host's own failure: the row that differs, expected and found, its records.
    assert "hv00: FAILED (exit 3)" in out.stderr and "sockets" in out.stderr and "records: " in out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("hv0")]
    assert [r.split()[3] for r in rows[-4:]] == ["failed", "pending", "pending", "pending"]

    status = invoke("fleet.status")
    assert status.returncode == 0 and f"rollout {state.run_id} stopped" in status.stdout
    again = invoke("fleet.provision", "--resume", "--waves=2")
    assert again.returncode == 2 and "leave out --waves" in again.stderr


def test_a_soak_re_verifies_the_finished_waves_before_the_next(fleet: FleetWorld, tmp_path: Path) -> None:
    hosts_dir = fleet.copy(tmp_path)
    runs = tmp_path / "runs"
    lines: list[str] = []
    record = rollout(hosts_dir, runs, RolloutFlags(host="hv00,hv01,hv02", waves="1", soak="0.01"), lines=lines)
    assert record.state.state == "done" and {e.outcome for e in record.state.hosts.values()} == {"verified"}
    modes = {n: sorted(json.loads((r / "run.json").read_text())["mode"] for r in host_runs(runs, n))
             for n in ("hv00", "hv01", "hv02")}
    # Before wave 2, hv00 was verified again (read-only); before wave 3, hv00 and hv01; hv02 never.
    assert modes == {"hv00": ["apply", "verify", "verify"], "hv01": ["apply", "verify"], "hv02": ["apply"]}
    assert "soak: 2 hosts of the finished waves still verify" in lines


# -- docs/fleets.md's canary rollout, run as written ---------------------------------------------------

FLEETS_DOC = REPO / "docs" / "fleets.md"


def doc_block(marker: str) -> list[list[str]]:
    """The commands of the ```sh block after `<!-- canary-rollout: MARKER` in docs/fleets.md, comments dropped."""
    text = FLEETS_DOC.read_text()
    at = text.index(f"<!-- canary-rollout: {marker}")
    body = text.index("```sh\n", at) + len("```sh\n")
    lines = text[body:text.index("```", body)].splitlines()
    return [words for line in lines if (words := shlex.split(line, comments=True))]


def as_harness_runs(words: list[str], canary: str) -> list[str]:
    """A doc command as the harness runs it: the three substitutions docs/fleets.md names, nothing else."""
    assert words[0] == "invoke", words
    args = [w.replace("<canary>", canary) for w in words[1:]]
    if args[0] == "fleet.provision":
        args.append("--runbook=hypervisor")  # sshd hosts over sysroots: no VMs, no k3s
    if args[0] == "verify.k3s":
        args[0] = "verify.bios"
    return [sys.executable, "-m", "invoke", "--search-root", str(REPO), *args]


def test_the_docs_canary_rollout_runs_as_written(fleet: FleetWorld, tmp_path: Path) -> None:
    start, each_pause = doc_block("start"), doc_block("each pause")
    assert [w[1] for w in start] == ["inventory.check", "fleet.plan", "fleet.provision"]
    assert [w[1] for w in each_pause] == ["fleet.status", "verify.k3s", "fleet.approve"]
    hosts_dir = fleet.copy(tmp_path)
    runs = tmp_path / "runs"
    env = {**os.environ, "INVOKE_HOSTS_DIR": str(hosts_dir), "INVOKE_RUNS_DIR": str(runs)}
    raise_k3s_version(hosts_dir)

    def run(words: list[str], canary: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(as_harness_runs(words, canary), check=False, capture_output=True, text=True, env=env,
                              timeout=300, cwd=tmp_path)

    check = run(start[0])
    assert check.returncode == 0, check.stdout + check.stderr
    plan = run(start[1])
    assert plan.returncode == 0, plan.stderr
    # Waves of 1 (the canary), 10%, 50% and the rest of 20 hosts; a pause between them; 5 per site.
    sizes = [int(m[1]) for m in re.finditer(r"^  wave \d+.*? (\d+) hosts ", plan.stdout, re.MULTILINE)]
    assert sizes == [1, 2, 10, 7] and "wave 1 (canary)" in plan.stdout
    assert "at most 5 hosts of one site at once" in plan.stdout and "pause for fleet.approve" in plan.stdout
    canary = plan.stdout.splitlines()[2].strip()
    assert canary in fleet.names
    assert not runs.exists() or not any(runs.iterdir())  # the plan contacts nobody

    rollout_ = subprocess.Popen(as_harness_runs(start[2], canary), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=tmp_path)
    try:
        # "The first wave is one host (the canary). The rollout pauses before each later wave."
        def alive() -> bool:
            return rollout_.poll() is None

        state = _wait_for(runs, paused_before(2), alive)
        assert {h for h, e in state.hosts.items() if e.outcome == "verified"} == {canary}
        assert {e.outcome for h, e in state.hosts.items() if h != canary} == {"pending"}
        status, look, approve_ = (run(words, canary) for words in each_pause)
        assert status.returncode == 0, status.stderr
        row = next(line.split() for line in status.stdout.splitlines() if line.startswith(canary))
        shown = str(Path(state.hosts[canary].records).relative_to(runs.resolve()))
        assert row[3] == "verified" and shown.startswith(row[-1].rstrip("…"))
        assert look.returncode == 0, look.stdout + look.stderr
        assert approve_.returncode == 0 and "wave 2 approved" in approve_.stdout, approve_.stderr
        # "approve again for 50%, then the rest"
        for wave in (3, 4):
            state = _wait_for(runs, paused_before(wave), alive)
            verified = {h for h, e in state.hosts.items() if e.outcome == "verified"}
            assert verified == {h for w in state.waves[:wave - 1] for h in w}
            again = run(each_pause[-1])
            assert again.returncode == 0 and f"wave {wave} approved" in again.stdout, again.stderr
        out, err = rollout_.communicate(timeout=300)
    finally:
        if rollout_.poll() is None:
            rollout_.kill()
            rollout_.wait()
    # "When the last wave has verified, fleet.provision prints one row per host and exits 0."
    assert rollout_.returncode == 0, out + err
    assert out.splitlines()[-1].startswith("fleet: verified=20 failed=0")
    final = load(runs)
    assert final.state == "done" and final.approved == [2, 3, 4]
    assert [len(w) for w in final.waves] == [1, 2, 10, 7]
    spans = [each_host_verified_once(runs, name, final) for name in fleet.names]
    # --per-site=5: these hosts name no site, so they are one site: at most 5 ran at once.
    assert max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans) <= 5


def paused_before(wave: int) -> Callable[[FleetState], bool]:
    return lambda s: s.state == "paused" and s.wave == wave


def raise_k3s_version(hosts_dir: Path) -> None:
    """The doc's edit: raise k3s.version in the hosts that should move (here every host's own file)."""
    for path in hosts_dir.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        assert data["k3s"]["version"] == "v1.31.4+k3s1"
        data["k3s"]["version"] = "v1.31.5+k3s1"
        path.write_text(yaml.safe_dump(data))


def each_host_verified_once(runs: Path, name: str, final: FleetState) -> tuple[float, float]:
    """The host's one run that changes it (the canary also has the doc's read-only look) verified every
    step and is the one its fleet entry points at; its span."""
    (run_dir,) = [r for r in host_runs(runs, name) if json.loads((r / "run.json").read_text())["mode"] == "apply"]
    assert final.hosts[name].records == str(run_dir.resolve())
    steps = journal(run_dir)
    assert [(e["step"], e["status"]) for e in steps] == [(s, "ok") for s in STEPS]
    return min(e["started"] for e in steps), max(e["ended"] for e in steps)
