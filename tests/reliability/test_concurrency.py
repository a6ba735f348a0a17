"""Two provisions at once, and Ctrl-C / SIGKILL of a real `invoke provision` process.

A run is held inside bios.check without any timing guess: the generated sysroot's /proc/cmdline is
a FIFO, so the step's batched read blocks until the test feeds it. While one run is held there:
a second provision is refused by the host lock; a SIGINT lets the held command finish and then
stops before host.tune; a SIGKILL leaves a stale lock that the resume breaks.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lib.records import read_journal, runs_of
from tests.harness.inventory import lock_path_for
from tests.harness.sysfs import HostShape
from tests.harness.world import wait_for
from tests.inventory_helpers import REPO
from tests.test_cli_runbooks import Cli, cli  # noqa: F401 - the fixture, shared with the CLI tests

WAIT_S = 60.0  # a safety net for a broken product, not a timing assertion


class Held:
    """The sysroot's /proc/cmdline as a FIFO: a reader blocks until release()."""

    def __init__(self, sysroot: Path) -> None:
        self.path = sysroot / "proc/cmdline"
        self.content = self.path.read_bytes()
        self.path.unlink()
        os.mkfifo(self.path)

    def release(self) -> None:
        # Open the FIFO (the blocked reader's open returns too), put a regular file at the path for
        # every later read, then hand the blocked reader its content. A killed run may never have
        # sent its read: with no reader (ENXIO), only the regular file goes in.
        fd = None
        deadline = time.monotonic() + 2.0
        while fd is None and time.monotonic() < deadline:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                time.sleep(0.01)
        regular = self.path.with_name("cmdline.regular")
        regular.write_bytes(self.content)
        regular.replace(self.path)
        if fd is not None:
            os.write(fd, self.content)
            os.close(fd)


class Proc:
    """A real `invoke` process whose stdout and stderr go to files, readable while it runs."""

    def __init__(self, c: Cli, name: str, *args: str) -> None:
        env = dict(os.environ, INVOKE_HOSTS_DIR=str(c.hosts), INVOKE_RUNS_DIR=str(c.runs))
        self.out, self.err = c.tmp / f"{name}.out", c.tmp / f"{name}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.popen = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(REPO), *args],
                                          cwd=REPO, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait(self) -> int:
        return self.popen.wait(timeout=WAIT_S)


def held_in_bios_check(c: Cli) -> bool:
    """Some run's log says bios.check started (its read is now blocked on the FIFO)."""
    return any("step bios.check started" in (d / "run.log").read_text()
               for d in runs_of(c.runs, "hv1") if (d / "run.log").exists())


def lock_file(c: Cli) -> Path:
    return lock_path_for(c.hosts, "hv1")


@pytest.fixture
def held(cli: Cli) -> Iterator[tuple[Cli, Held]]:  # noqa: F811 - cli is the imported fixture
    sysroot = cli.write(HostShape())
    hold = Held(sysroot)
    yield cli, hold
    if hold.path.is_fifo():  # a failed test: unblock whatever still reads it
        hold.release()


def test_two_provisions_at_once_one_runs_the_other_is_refused(held: tuple[Cli, Held]) -> None:
    c, hold = held
    first, second = Proc(c, "first", "provision", "--host=hv1"), Proc(c, "second", "provision", "--host=hv1")
    # Whichever took the lock is held in bios.check; the other must be refused without waiting.
    wait_for(lambda: first.popen.poll() is not None or second.popen.poll() is not None, "one run to be refused")
    loser, winner = (first, second) if first.popen.poll() is not None else (second, first)
    assert loser.wait() == 6, loser.text()
    assert "hv1: another run holds the host lock" in loser.text() and "nothing was done" in loser.text()
    assert "Traceback" not in loser.text()
    assert winner.popen.poll() is None  # still held in bios.check: the refusal did not wait for it
    hold.release()
    assert winner.wait() == 0, winner.text()

    journals = {d.name: read_journal(d) for d in runs_of(c.runs, "hv1")}
    assert len(journals) == 2
    # The refused run journals one failed result (exit 6, no command), so every record shows it.
    refused = next(name for name, results in journals.items()
                   if [(r.status, r.exit_code, r.commands) for r in results] == [("failed", 6, ())])
    ran = next(name for name in journals if name != refused)
    assert f"run {ran}" in loser.text()  # the refusal names the holder's run
    done = [(r.step, r.target) for results in journals.values() for r in results if r.status == "changed"]
    assert done == [("host.tune", "hv1")]  # done once, by one run
    refused_log = (c.runs / "hv1" / refused / "run.log").read_text()
    # One round trip: the lock attempt at the head of the first contact's reads (read only, then dropped).
    sent = [line for line in refused_log.splitlines() if ": $ " in line and "(at the head of" not in line]
    assert len(sent) == 1 and "first contact" in sent[0], sent
    assert "set -C" in refused_log and "(at the head of the first contact's reads)" in refused_log
    assert not lock_file(c).exists()  # the winner released it


def test_ctrl_c_finishes_the_command_in_flight_then_stops_and_resumes(held: tuple[Cli, Held]) -> None:
    c, hold = held
    run = Proc(c, "run", "provision", "--host=hv1")
    wait_for(lambda: held_in_bios_check(c), "bios.check to start")
    run.popen.send_signal(signal.SIGINT)
    wait_for(lambda: "SIGINT: stopping after the commands in flight" in run.text(), "the stop message")
    assert run.popen.poll() is None  # the read in flight is still held: the run waits for it, not abandons it
    hold.release()
    assert run.wait() == 130, run.text()
    err = run.err.read_text()
    assert "interrupted by the operator before step host.tune" in err
    assert "resume: invoke provision --host=hv1 --resume" in err and "Traceback" not in run.text()
    assert not lock_file(c).exists()  # released on the way out
    (journal,) = [read_journal(d) for d in runs_of(c.runs, "hv1")]
    # host.tune never started; it is journalled as the step the stop came before (exit 130).
    assert [(r.step, r.status) for r in journal] == [("preflight.access", "ok"), ("bios.check", "ok"),
                                                     ("host.tune", "failed")]
    assert journal[-1].exit_code == 130 and journal[-1].commands == ()
    tuned = c.tmp / "sysroot/proc/sys/kernel/numa_balancing"
    assert tuned.read_text().strip() == "1"  # host.tune never started

    resumed = c("provision", "--host=hv1", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "hv1 | bios.check | hv1 | skipped |" in resumed.stdout and tuned.read_text().strip() == "0"


def test_sigkill_leaves_a_stale_lock_that_resume_breaks(held: tuple[Cli, Held]) -> None:
    c, hold = held
    run = Proc(c, "run", "provision", "--host=hv1")
    wait_for(lambda: held_in_bios_check(c), "bios.check to start")
    run.popen.kill()
    run.wait()
    assert lock_file(c).exists()  # nobody released it
    hold.release()  # the orphaned remote read ends; its sshd session is gone with the client
    resumed = c("provision", "--host=hv1", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "hv1: broke a stale host lock of user " in resumed.stdout
    assert "its SSH session is gone" in resumed.stdout
    # The killed run journalled preflight.access only: resume starts again at bios.check.
    assert "hv1 | preflight.access | hv1 | skipped |" in resumed.stdout
    assert "hv1 | bios.check | hv1 | ok |" in resumed.stdout
    assert (c.tmp / "sysroot/proc/sys/kernel/numa_balancing").read_text().strip() == "0"
    assert not lock_file(c).exists()


@pytest.fixture
def sigint_not_ignored() -> Iterator[None]:
    """A shell starting a job in the background (make ... &) hands it SIGINT ignored, and children
    inherit that: Python then installs no KeyboardInterrupt, which is right for such a job but not
    for the terminal this test plays. Our own handler makes exec reset SIGINT to its default."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_not_ignored")
def test_ctrl_c_ends_a_read_only_run_as_any_command(held: tuple[Cli, Held]) -> None:
    # verify.* and monitor --watch change nothing: Ctrl-C ends them (invoke's exit 1), no graceful stop.
    c, hold = held
    run = Proc(c, "verify", "verify.bios", "--host=hv1")
    wait_for(lambda: held_in_bios_check(c), "bios.check to start")
    run.popen.send_signal(signal.SIGINT)
    hold.release()  # the worker's read returns; the interrupted main thread then ends the command
    assert run.wait() == 1, run.text()
    assert "stopping after the commands in flight" not in run.text() and "Traceback" not in run.text()
