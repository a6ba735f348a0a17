"""The host lock's shell scripts on this machine, under dash and bash (users' shells vary, and `sh -c`
runs them under sudo and in a batch): the session they name, and what release removes.

Real processes stand in for the hypervisor's: a copy of bash named `sshd` serves the "connection",
and between it and the script sits a shell whose name holds spaces and parentheses, as a process
name may (the comm in /proc/<pid>/stat is then no longer one word). tests/test_lock_safety.py and
tests/test_engine.py run the same scripts over real sshd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lib import lock

SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]
RUN = "20261206T120000.123Z-abcd"
INFO = f"user=alice client=laptop pid=4242 started=2026-12-06T12:00:00Z run={RUN}"


def under_sshd(tmp: Path, shell: str, script: str) -> tuple[str, int]:
    """Runs script as `shell -c` below `sshd` (a bash copy) and `a) b (c` (another); its stdout and
    the `sshd` pid."""
    bash = shutil.which("bash")
    assert bash
    for name in ("sshd", "a) b (c"):
        shutil.copy(bash, tmp / name)
    inner = f'{shutil.which(shell)} -c "$SCRIPT"; true'
    outer = f'echo "$$" >&2; "{tmp}/a) b (c" -c \'{inner}\'; true'
    done = subprocess.run([str(tmp / "sshd"), "-c", outer], env={**os.environ, "SCRIPT": script},
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout, int(done.stderr.split()[0])


@pytest.mark.parametrize("shell", SHELLS)
def test_the_lock_names_the_sshd_above_a_process_whose_name_holds_spaces_and_parens(tmp_path: Path,
                                                                                  shell: str) -> None:
    path = tmp_path / "run" / "lock" / "numa-k3s.lock"  # its directory is created
    out, sshd = under_sshd(tmp_path, shell, lock.acquire(str(path), INFO).real)
    assert out == "acquired\n" and path.read_text() == f"{INFO} session={sshd}\n"
    path.write_text(f"{INFO} session=1\n")  # as after a reconnect
    out, sshd = under_sshd(tmp_path, shell, lock.refresh(str(path), RUN).real)
    assert out == "refreshed\n" and path.read_text() == f"{INFO} session={sshd}\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_release_removes_this_runs_lock_and_nothing_else(tmp_path: Path, shell: str) -> None:
    ours = f"{INFO} session=7\n"
    kept: dict[str, str] = {
        # another run's lock: grep read the mark as a regex, and its `.` matched the `x`
        "other run": ours.replace("120000.123Z", "120000x123Z"),
        "foreign": "3f1c0a6e0b4b4e7a9d2c5f81b6a7c9d0\n",
        "mark below the first line": f"not a lock\n{ours}",
    }
    for name, text in kept.items():
        path = tmp_path / f"{name}.lock"
        path.write_text(text)
        subprocess.run([shell, "-c", lock.release(str(path), RUN).real], check=True, timeout=30)
        assert path.read_text() == text, name
    target = tmp_path / "target"
    target.write_text(ours)
    link = tmp_path / "link.lock"
    link.symlink_to(target)
    subprocess.run([shell, "-c", lock.release(str(link), RUN).real], check=True, timeout=30)
    assert link.is_symlink() and target.read_text() == ours
    path = tmp_path / "ours.lock"
    path.write_text(ours)
    subprocess.run([shell, "-c", lock.release(str(path), RUN).real], check=True, timeout=30)
    assert not path.exists()
