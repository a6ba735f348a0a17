"""lab/numa-lab's helpers that need no lab (the lab itself: tests/numa_lab, slow).

The lab is one per machine, and everyone takes its lock the README's way:
`flock /tmp/numa-k3s-numalab.lock make numa-lab`. flock(1) hands its locked descriptor down to the
command, and up.sh's QEMU daemonizes and outlives the command: whatever QEMU inherits stays open
while the lab runs. These tests reproduce that with a process that outlives its flock(1).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.inventory_helpers import REPO

LAB_DIR = REPO / "lab" / "numa-lab"
CLOSEFDS = LAB_DIR / "closefds.py"


def _outlive_flock(lock: Path, pidfile: Path, wrap: list[str]) -> int:
    """`flock LOCK CMD` where CMD starts a process that outlives it and returns, as up.sh's QEMU
    -daemonize does (the wrapper, if any, runs in the foreground, as in up.sh)."""
    daemon = f"sleep 600 </dev/null >/dev/null 2>&1 & echo $! > {pidfile}"
    subprocess.run(["flock", str(lock), *wrap, "sh", "-c", daemon], check=True, timeout=60)
    return int(pidfile.read_text())


def _lock_is_free(lock: Path) -> bool:
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


@pytest.mark.parametrize(("wrap", "freed"), [([sys.executable, str(CLOSEFDS)], True), ([], False)],
                         ids=["through closefds.py: the lock is free", "unwrapped: the daemon keeps the lock"])
def test_a_process_that_outlives_flock_keeps_the_lock_unless_started_through_closefds(
        tmp_path: Path, wrap: list[str], freed: bool) -> None:
    lock = tmp_path / "lab.lock"
    lock.touch()
    pid = _outlive_flock(lock, tmp_path / "pid", wrap)
    try:
        assert _lock_is_free(lock) is freed
        if wrap:  # only stdin, stdout and stderr were left to it
            assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2]
    finally:
        os.kill(pid, signal.SIGTERM)


def test_closefds_keeps_the_command_its_arguments_and_standard_streams() -> None:
    done = subprocess.run([sys.executable, str(CLOSEFDS), "sh", "-c", 'echo "$0 $1"; echo err >&2', "a", "b c"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert (done.stdout, done.stderr) == ("a b c\n", "err\n")


def test_up_sh_starts_qemu_through_closefds() -> None:
    """The lab's QEMU is the process that outlives `make numa-lab`; it must be the wrapped one."""
    lines = (LAB_DIR / "up.sh").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("qemu-system-x86_64 "))
    command = " ".join(lines[max(0, start - 1):start + 1])
    assert 'closefds.py" nice -n 10' in command, command
