"""Session.put against real sshd faults: a connection cut mid-upload (the host's sshd killed) is
retried under the transient policy; a full destination filesystem fails with its own message. Either
way no temp file is left, neither beside the destination nor in /tmp."""

from __future__ import annotations

import contextlib
import glob
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lib.remote import CommandError, Endpoint, Session
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.world import FAST

# Session.put names its /tmp temp files after this process: only this test's files match.
MINE = f"/tmp/.numa-k3s-upload-{os.getpid()}-*"


@pytest.fixture
def host(sshd_farm: SshdFarm, tmp_path: Path) -> Iterator[SshHost]:
    started = sshd_farm.start(f"up-{tmp_path.name[-12:]}")
    yield started
    sshd_farm.stop(started.name)


def session(host: SshHost, sleep: object, log: list[str]) -> Session:
    ep = Endpoint(host.name, host.host, host.port, host.user, str(host.key_file), str(host.known_hosts))
    return Session(ep, FAST, sleep=sleep, log=log.append)  # type: ignore[arg-type]


def test_upload_cut_by_killing_sshd_is_retried_and_leaves_no_temp_file(
        sshd_farm: SshdFarm, host: SshHost, tmp_path: Path) -> None:
    source = tmp_path / "image.bin"
    source.write_bytes(os.urandom(64 << 20))
    dest = tmp_path / "out" / "seed.iso"
    killed = threading.Event()

    def kill_when_the_upload_starts() -> None:
        while not glob.glob(MINE):
            if stop.is_set():
                return
        sshd_farm.kill(host.name)  # the listener and the session serving the upload: the transfer dies
        killed.set()

    def sleep(_seconds: float) -> None:  # the transient policy's wait: bring the host back
        for _try in range(3):  # a start may miss the harness's 5 s on a loaded machine: try again
            if not killed.wait(timeout=60) or restarted:
                return
            with contextlib.suppress(RuntimeError):
                restarted.append(sshd_farm.restart(host.name))

    restarted: list[SshHost] = []

    stop = threading.Event()
    watcher = threading.Thread(target=kill_when_the_upload_starts, daemon=True)
    watcher.start()
    log: list[str] = []
    ssh = session(host, sleep, log)
    try:
        ssh.put(source, str(dest), 0o640)
    finally:
        stop.set()
        watcher.join(timeout=60)
        ssh.close()
    assert killed.is_set(), "the upload finished before sshd was killed: nothing was tested"
    assert any("upload attempt 1 to" in line and "retrying" in line for line in log), log
    assert dest.read_bytes() == source.read_bytes()
    assert oct(dest.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["seed.iso"]
    assert glob.glob(MINE) == []  # attempt 1's temp file was removed on the new connection


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of this test's own, unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_upload_to_a_full_filesystem_fails_clearly_and_leaves_nothing(host: SshHost, full_fs: Path) -> None:
    dest = full_fs / "seed.iso"
    log: list[str] = []
    ssh = session(host, lambda _s: None, log)
    try:
        with pytest.raises(CommandError) as err:
            ssh.put(os.urandom(2 << 20), str(dest), 0o600)
    finally:
        ssh.close()
    assert "No space left on device" in str(err.value)
    assert list(full_fs.iterdir()) == []  # no .seed.iso.uploading, no partial seed.iso
    assert glob.glob(MINE) == []
