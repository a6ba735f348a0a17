"""The runbook engine over real sshd hosts: retries, failures, verification, resume, parallelism,
locks, secrets, one connection per host, plan mode."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lib.errors import ToolError
from lib.output import Output
from lib.results import HostRun
from lib.runbook import load_runbook
from lib.runner import Engine, RunOptions, exit_code
from tests.engine_steps import REGISTRY, TOKEN_VALUE
from tests.harness.inventory import lock_path_for, small_vm, write_host
from tests.harness.sshd import SshdFarm, SshHost, count_auths
from tests.harness.world import FAST, World, WorldFlags, wait_for


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, REGISTRY)


@pytest.fixture
def hv(hv: SshHost, world: World) -> SshHost:
    """conftest's host, as hosts/hv1.yaml."""
    write_host(world.hosts, "hv1", hv)
    return hv


def statuses(run: HostRun) -> list[tuple[str, str, str]]:
    return [(r.step, r.target, r.status) for r in run.results]


def test_transient_failure_is_retried_then_ok(world: World, hv: SshHost) -> None:
    (run,) = world.run("test.flaky")
    assert statuses(run) == [("test.flaky", "hv1", "changed")]
    assert world.state_file("hv1", "tries").read_text().strip() == "3"
    assert len(world.sleeps) == 2  # two waits between three attempts, none really slept
    assert run.exit_code == 0


def test_libvirts_busy_job_lock_is_transient(world: World, hv: SshHost) -> None:
    """virsh exits 1 for it: only the message on stderr tells it from a real failure (next test)."""
    (run,) = world.run("test.lockbusy")
    assert statuses(run) == [("test.lockbusy", "hv1", "changed")] and run.exit_code == 0
    assert world.state_file("hv1", "locktries").read_text().strip() == "2"
    assert len(world.sleeps) == 1


def test_permanent_failure_is_not_retried_and_names_everything(world: World, hv: SshHost) -> None:
    (run,) = world.run("test.a", "test.permanent", "test.b")
    assert statuses(run) == [("test.a", "hv1", "changed"), ("test.permanent", "hv1", "failed")]
    assert world.state_file("hv1", "permanent").read_text().count("x") == 1  # ran once: not retried
    assert world.sleeps == []
    failed = run.results[-1]
    assert failed.exit_code == 4 and run.exit_code == 4
    assert "hv1: test.permanent on hv1: " in failed.error
    assert "exit code 1" in failed.error and "no such device: /dev/sdz" in failed.error
    assert "echo x >> \"$f\"" in failed.error  # the command, as run
    assert run.resume_hint == "invoke provision --host=hv1 --resume"
    assert not world.state_file("hv1", "ran").read_text().count("test.b")  # stopped there


def test_failed_verification_exits_5_with_expected_and_found(world: World, hv: SshHost) -> None:
    (run,) = world.run("test.wrong", "test.a")
    (result,) = run.results
    assert (result.status, result.exit_code) == ("failed", 5)
    (check,) = result.checks
    assert (check.name, check.expected, check.found, check.ok) == ("numa_balancing", "0", "1", False)
    assert exit_code([run]) == 5
    assert not world.state_file("hv1", "ran").exists()


def test_resume_continues_after_the_last_verified_step(world: World, hv: SshHost) -> None:
    (first,) = world.run("test.a", "test.b", "test.permanent", "test.c")
    assert first.exit_code == 4
    assert world.state_file("hv1", "ran").read_text().split() == ["test.a", "test.b"]
    # The operator fixes the cause; here: the failing step is skipped by name... no: it must run again.
    (second,) = world.run("test.a", "test.b", "test.permanent", "test.c", resume=True)
    assert statuses(second)[:2] == [("test.a", "hv1", "skipped"), ("test.b", "hv1", "skipped")]
    assert second.results[0].reason == f"verified in run {first.run_id}"
    assert ("test.permanent", "hv1", "failed") in statuses(second)  # re-ran from the failed step
    assert world.state_file("hv1", "permanent").read_text().count("x") == 2
    # a and b did not run again: their markers are still one each
    assert world.state_file("hv1", "ran").read_text().split() == ["test.a", "test.b"]


def test_resume_chains_through_a_resumed_run(world: World, hv: SshHost) -> None:
    world.run("test.a", "test.permanent", "test.b")
    world.run("test.a", "test.permanent", "test.b", resume=True)
    (third,) = world.run("test.a", "test.permanent", "test.b", resume=True)
    assert statuses(third)[0] == ("test.a", "hv1", "skipped")
    assert third.results[0].reason.startswith("verified in run ")


def test_resume_without_an_earlier_run_is_a_clear_error(world: World, hv: SshHost) -> None:
    (run,) = world.run("test.a", resume=True)
    assert run.exit_code == 2
    assert "no earlier run of book" in run.error and "run without --resume" in run.error


def test_from_only_skip_select_steps(world: World, hv: SshHost) -> None:
    (run,) = world.run("test.a", "test.b", "test.c", from_step="test.b", skip=("test.c",))
    assert statuses(run) == [("test.a", "hv1", "skipped"), ("test.b", "hv1", "changed"),
                             ("test.c", "hv1", "skipped")]
    assert [r.reason for r in run.results if r.status == "skipped"] == ["before --from test.b", "--skip"]
    (only,) = world.run("test.a", "test.b", "test.c", only=("test.c",))
    assert [r.status for r in only.results] == ["skipped", "skipped", "changed"]
    assert world.state_file("hv1", "ran").read_text().split() == ["test.b", "test.c"]


def test_second_run_changes_nothing(world: World, hv: SshHost) -> None:
    world.run("test.a", "test.b")
    (again,) = world.run("test.a", "test.b")
    assert [r.status for r in again.results] == ["ok", "ok"]
    assert again.results[0].reason == "test.a already marked"
    assert again.results[0].commands == ()


def test_parallel_targets_overlap_in_time(sshd_farm: SshdFarm, world: World) -> None:
    hv = sshd_farm.start(f"hvp-{world.tmp.name[-10:]}")
    guests = [sshd_farm.start(f"g{i}-{world.tmp.name[-10:]}") for i in range(3)]
    try:
        write_host(world.hosts, "hv1", hv, vms=[small_vm(f"vm{i}", i, g, role="server" if i == 0 else "agent")
                                                for i, g in enumerate(guests)])
        (run,) = world.run("test.sleepy")
        results = [r for r in run.results if r.step == "test.sleepy"]
        assert sorted(r.target for r in results) == ["vm0", "vm1", "vm2"]
        assert all(r.status == "changed" for r in results)
        latest_start = max(r.started for r in results)
        earliest_end = min(r.ended for r in results)
        assert latest_start < earliest_end, "targets ran one after another"
        # VMs were reached through the hypervisor (jump host): it saw one login, each guest one.
        assert count_auths(hv) == 1
        assert all(count_auths(g) == 1 for g in guests)
    finally:
        for h in (hv, *guests):
            sshd_farm.stop(h.name)


def test_hosts_run_at_once_and_one_failure_hides_nothing(sshd_farm: SshdFarm, world: World) -> None:
    a = sshd_farm.start(f"a-{world.tmp.name[-10:]}")
    b = sshd_farm.start(f"b-{world.tmp.name[-10:]}")
    try:
        write_host(world.hosts, "hva", a)
        write_host(world.hosts, "hvb", b)
        # hvb's marker cannot be written: its "ran" path is a directory.
        world.state_file("hvb", "ran").mkdir()
        runs = {r.host: r for r in world.run("test.a", "test.b")}
        assert [r.status for r in runs["hva"].results] == ["changed", "changed"]
        assert runs["hvb"].results[0].status == "failed" and runs["hvb"].exit_code == 4
        assert exit_code(list(runs.values())) == 4
    finally:
        sshd_farm.stop(a.name)
        sshd_farm.stop(b.name)


def test_one_ssh_connection_per_host_per_run(world: World, hv: SshHost) -> None:
    before = count_auths(hv)
    world.run("test.a", "test.b", "test.c", "test.flaky", "test.wrong")
    assert count_auths(hv) - before == 1


def test_token_appears_in_no_output_or_record(world: World, hv: SshHost) -> None:
    (run,) = world.run("test.token", "test.permanent")
    assert run.results[0].status == "changed"
    assert world.state_file("hv1", "token").read_text().strip() == TOKEN_VALUE  # really used
    assert any("***" in c for c in run.results[0].commands)
    run_dir = world.runs / "hv1" / run.run_id
    files = sorted(p for p in run_dir.iterdir() if p.is_file())
    assert {p.name for p in files} >= {"journal.jsonl", "report.json", "junit.xml", "run.log"}
    for path in files:
        assert TOKEN_VALUE.encode() not in path.read_bytes(), path.name
    assert TOKEN_VALUE not in world.out.getvalue()
    assert TOKEN_VALUE not in repr(run)


def test_convergence_waits_then_succeeds(world: World, hv: SshHost) -> None:
    ready = world.state_file("hv1", "ready")
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            ready.touch()

    (run,) = world.run("test.converge", sleep=sleep)
    assert run.results[0].status == "changed"
    assert len(waits) == 3


def test_convergence_deadline_fails_with_exit_4(world: World, hv: SshHost) -> None:
    (run,) = world.run("test.converge")
    (result,) = run.results
    assert (result.status, result.exit_code) == ("failed", 4)
    assert "did not converge within 10 s" in result.error
    assert result.checks[0].found == "absent"
    assert sum(world.sleeps) >= 10


def test_lock_refuses_a_second_run_and_names_the_holder(world: World, hv: SshHost) -> None:
    lock = lock_path_for(world.hosts, "hv1")
    lock.parent.mkdir(parents=True, exist_ok=True)
    # A live holder: its session pid is an sshd process that is alive (here the test host's sshd).
    held = (f"user=alice client=ops-laptop pid=4242 started=2026-11-28T17:00:00Z run=R1 session={hv.pid}\n")
    lock.write_text(held)
    (run,) = world.run("test.a")
    # Journalled as the step it never started, so report.json, junit.xml and the recap all show it.
    assert run.exit_code == 6 and statuses(run) == [("test.a", "hv1", "failed")]
    assert run.results[0].commands == () and run.results[0].exit_code == 6
    assert "another run holds the host lock" in run.error and "nothing was done" in run.error
    assert "user alice on ops-laptop (pid 4242), since 2026-11-28T17:00:00Z, run R1" in run.error
    assert lock.read_text() == held
    assert not world.state_file("hv1", "ran").exists()  # nothing ran


@pytest.mark.parametrize("holder", ["gone", "zombie"])
def test_stale_lock_is_broken_with_a_message(world: World, hv: SshHost, holder: str) -> None:
    lock = lock_path_for(world.hosts, "hv1")
    lock.parent.mkdir(parents=True, exist_ok=True)
    # A killed sshd session that nobody has reaped yet is a zombie whose comm still reads "sshd".
    sshd = world.tmp / "sshd"
    shutil.copy("/bin/true", sshd)
    dead = subprocess.Popen([str(sshd)])
    if holder == "gone":
        dead.wait()
    else:
        while Path(f"/proc/{dead.pid}/stat").read_text().split(") ")[1][0] != "Z":
            time.sleep(0.01)
        assert Path(f"/proc/{dead.pid}/comm").read_text().strip() == "sshd"
    lock.write_text(f"user=bob client=old-box pid=1 started=2026-11-01T00:00:00Z run=R0 session={dead.pid}\n")
    (run,) = world.run("test.a")
    assert run.exit_code == 0 and run.results[0].status == "changed"
    assert "broke a stale host lock of user bob on old-box (pid 1)" in world.out.getvalue()
    assert "its SSH session is gone" in world.out.getvalue()
    assert not lock.exists()  # released at the end of the run
    dead.wait()


def test_a_reconnecting_run_keeps_its_lock(world: World, hv: SshHost) -> None:
    # The step kills the sshd session serving the run: the command is retried on a new connection,
    # and the lock must name that new session, or a second run would see it stale and break it.
    (run,) = world.run("test.a", "test.dropconn", "test.b")
    assert run.exit_code == 0, [r.error for r in run.results]
    seen = world.state_file("hv1", "lock-after").read_text()
    assert f"run={run.run_id} " in seen
    assert seen.rsplit("session=", 1)[1].strip().isdigit()  # the lock names a session pid
    assert world.state_file("hv1", "lock-session-comm").read_text().strip() == "sshd"  # the live, new session
    log = (world.runs / "hv1" / run.run_id / "run.log").read_text()
    assert "failed (connection lost); retrying" in log
    assert 'sed "s/ session=[0-9]*$/ session=$s/"' in log  # lock.refresh() ran on the new connection


def test_a_run_that_lost_its_lock_stops(world: World, hv: SshHost) -> None:
    # While the connection is down another run breaks the (stale-looking) lock and takes it.
    lock = lock_path_for(world.hosts, "hv1")
    taker = f"user=carol client=other pid=7 started=2026-11-29T00:00:00Z run=R9 session={hv.pid}\n"

    def sleep(_seconds: float) -> None:
        if lock.exists() and "run=R9" not in lock.read_text():
            lock.write_text(taker)

    (run,) = world.run("test.dropconn", "test.b", sleep=sleep)
    assert run.exit_code == 6
    error = run.results[-1].error  # the step whose reconnect found the lock gone
    assert "lost the host lock" in error and "user carol on other" in error
    assert lock.read_text() == taker  # the other run's lock is left alone
    assert not world.state_file("hv1", "ran").exists()  # test.b never ran


def test_interrupt_finishes_the_command_in_flight_then_stops(world: World, hv: SshHost) -> None:
    timers: list[threading.Thread] = []

    def interrupt_soon(engine: Engine) -> None:
        # Interrupt once test.two's first command is running (it marks its start), whatever the
        # machine's load: a fixed delay hit test.a instead on a busy machine.
        started = world.state_file("hv1", "two-started")

        def when_started() -> None:
            wait_for(started.exists, "test.two's first command to start")
            engine.interrupt()

        timers.append(threading.Thread(target=when_started, daemon=True))
        timers[0].start()

    (run,) = world.run("test.a", "test.two", "test.b", started=interrupt_soon)
    assert run.exit_code == 130
    assert statuses(run) == [("test.a", "hv1", "changed"), ("test.two", "hv1", "failed")]
    assert "interrupted by the operator after 1 of its commands" in run.results[1].error
    assert world.state_file("hv1", "two-log").read_text() == "first\n"  # the command in flight finished
    assert not world.state_file("hv1", "two").exists()  # the next command never ran
    assert run.resume_hint == "invoke provision --host=hv1 --resume"
    assert not (lock_path_for(world.hosts, "hv1")).exists()  # released
    (resumed,) = world.run("test.a", "test.two", "test.b", resume=True)
    assert statuses(resumed) == [("test.a", "hv1", "skipped"), ("test.two", "hv1", "changed"),
                                 ("test.b", "hv1", "changed")]
    assert world.state_file("hv1", "ran").read_text().split() == ["test.a", "test.b"]


def test_lock_is_released_after_a_run_and_taken_during_it(world: World, hv: SshHost) -> None:
    (run,) = world.run("test.a")
    lock = lock_path_for(world.hosts, "hv1")
    assert not lock.exists()
    log = (world.runs / "hv1" / run.run_id / "run.log").read_text()
    assert "take the host lock" in log or "lock" in log


def test_plan_mode_changes_nothing(world: World, hv: SshHost) -> None:
    world.state_file("hv1", "value").write_text("7\n")  # the "host" has state that must stay as it is
    before = _snapshot(world.state)
    (run,) = world.run("test.a", "test.wrong", "test.token", mode="plan")
    assert [r.status for r in run.results] == ["changed", "changed", "changed"]  # would change
    assert run.results[0].planned == (f"echo test.a >> {world.state_file('hv1', 'ran')}",)
    assert "***" in run.results[2].planned[0] and TOKEN_VALUE not in run.results[2].planned[0]
    assert _snapshot(world.state) == before
    assert not lock_path_for(world.hosts, "hv1").exists()  # plan mode takes no lock: a lock file is a change too


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_offline_plan_needs_no_host(world: World, sshd_farm: SshdFarm) -> None:
    host = sshd_farm.start(f"off-{world.tmp.name[-10:]}")
    write_host(world.hosts, "hv1", host)
    sshd_farm.stop(host.name)  # nothing listens any more
    (run,) = world.run("test.a", "test.b", mode="offline")
    assert [r.status for r in run.results] == ["changed", "changed"]
    assert run.exit_code == 0


def test_unreachable_host_fails_with_exit_4(world: World, sshd_farm: SshdFarm) -> None:
    host = sshd_farm.start(f"down-{world.tmp.name[-10:]}")
    write_host(world.hosts, "hv1", host)
    sshd_farm.stop(host.name)
    (run,) = world.run("test.a")
    assert run.exit_code == 4
    assert "cannot connect to" in run.error and f":{host.port}" in run.error
    # Refused on the first connection: nothing listens there, so it fails at once (issue 15); a
    # refused reconnect is still retried (tests/reliability/test_ssh_faults.py).
    assert "connection refused" in run.error and "after 1 attempt(s)" in run.error
    assert world.sleeps == []


def test_run_records_written(world: World, hv: SshHost) -> None:
    (run,) = world.run("test.a", "test.wrong")
    run_dir = world.runs / "hv1" / run.run_id
    lines = (run_dir / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == ["test.a", "test.wrong"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["exit_code"] == 5 and report["resume_hint"] == "invoke provision --host=hv1 --resume"
    junit = (run_dir / "junit.xml").read_text()
    assert "numa_balancing" in junit and "<failure" in junit


def test_unknown_step_in_runbook_lists_known(world: World) -> None:
    with pytest.raises(ToolError) as err:
        load_runbook(world.runbook("test.a", "test.nope"), REGISTRY)
    assert "unknown step(s) 'test.nope'" in str(err.value) and "known steps: " in str(err.value)
    assert "test.flaky" in str(err.value)


def test_command_timeout_is_retried_then_fails_with_exit_4(world: World, hv: SshHost) -> None:
    (run,) = world.run("test.hangs")
    (result,) = run.results
    assert (result.status, result.exit_code) == ("failed", 4)
    assert "timed out after 0.5 s" in result.error and "after 3 attempt(s)" in result.error
    assert world.state_file("hv1", "hangs").read_text().count("started") == 3
    assert len(world.sleeps) == 2


def test_live_progress_on_a_tty_does_not_break_the_run(world: World, hv: SshHost) -> None:
    stream = io.StringIO()
    output = Output(stream, tty=True)
    book = load_runbook(world.runbook("test.a", "test.b"), REGISTRY)
    options = RunOptions(runs_dir=world.runs, policies=FAST, sleep=world.sleeps.append,
                         flags=WorldFlags(state=str(world.state)))
    try:
        (run,) = Engine(book, options, output).run(world.loaded())
    finally:
        output.close()
    assert [r.status for r in run.results] == ["changed", "changed"]
    assert "hv1 | test.b | hv1 | changed" in stream.getvalue()
