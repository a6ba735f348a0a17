"""The host lock never writes over or removes what it did not write (issue 26), over real sshd; run
records are private; lock_path must name a lock directory.

Each decoy sits at the lock path of a real run; after the refusal it is byte-for-byte (or, for a
FIFO, directory, device or symlink, type-for-type) what it was.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from lib.errors import InventoryError
from lib.inventory.load import load_inventory
from lib.inventory.rules import check_lock_path
from tests.engine_steps import REGISTRY
from tests.harness.inventory import lock_path_for, write_host
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.world import World


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, REGISTRY)


@pytest.fixture
def lock(sshd_farm: SshdFarm, world: World) -> Iterator[Path]:
    host: SshHost = sshd_farm.start(f"lk-{world.tmp.name[-12:]}")
    write_host(world.hosts, "hv1", host)
    path = lock_path_for(world.hosts, "hv1")
    yield path
    sshd_farm.stop(host.name)
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()


def regular(text: str) -> Callable[[Path], object]:
    return lambda p: p.write_text(text)


MACHINE_ID = "3f1c0a6e0b4b4e7a9d2c5f81b6a7c9d0\n"
DECOYS: dict[str, Callable[[Path], object]] = {
    "machine-id": regular(MACHINE_ID),
    "empty": regular(""),
    "two lines of ours": regular("user=a client=b pid=1 started=x run=R session=1\nmore\n"),
    "fifo": os.mkfifo,
    "directory": lambda p: p.mkdir(),
    "char device": lambda p: os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 3)),  # /dev/null's numbers
}


def snapshot(path: Path) -> tuple[int, bytes]:
    st = path.lstat()
    return stat.S_IFMT(st.st_mode), (path.read_bytes() if stat.S_ISREG(st.st_mode) else b"")


@pytest.mark.parametrize("kind", list(DECOYS))
def test_what_the_tool_did_not_write_at_the_lock_path_is_refused_and_left_alone(world: World, lock: Path,
                                                                             kind: str) -> None:
    DECOYS[kind](lock)
    before = snapshot(lock)
    (run,) = world.run("test.a")
    assert run.exit_code == 3, run.error
    assert f"the lock path {lock} holds a " in run.error and "that numa-k3s did not write" in run.error
    assert "nothing was done" in run.error
    assert snapshot(lock) == before
    assert [r.status for r in run.results] != ["changed"]  # the step never ran


def test_a_symlink_at_the_lock_path_is_refused_and_its_target_untouched(world: World, lock: Path) -> None:
    target = world.tmp / "machine-id"
    target.write_text(MACHINE_ID)
    lock.symlink_to(target)
    (run,) = world.run("test.a")
    assert run.exit_code == 3 and f"the lock path {lock} holds a symbolic link" in run.error
    assert lock.is_symlink() and os.readlink(lock) == str(target) and target.read_text() == MACHINE_ID


def test_a_lock_the_tool_wrote_is_still_taken_and_released(world: World, lock: Path) -> None:
    (run,) = world.run("test.a")
    assert run.exit_code == 0 and not lock.exists()


def test_run_records_are_private(world: World, lock: Path) -> None:
    (run,) = world.run("test.a", "test.wrong")
    assert run.exit_code == 5 and world.runs.exists()
    paths = [world.runs, *world.runs.rglob("*")]
    dirs = {str(p): stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_dir()}
    files = {str(p): stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_file()}
    assert set(dirs.values()) == {0o700}, dirs
    assert set(files.values()) == {0o600}, files
    names = {Path(p).name for p in files}
    assert {"journal.jsonl", "report.json", "junit.xml", "run.log", "run.json"} <= names
    assert any("/evidence/" in p for p in files)


def write_hv1(tmp_path: Path, lock_path: str) -> Path:
    from tests.inventory_helpers import REPO

    hosts = tmp_path / "hosts"
    hosts.mkdir()
    (hosts / "defaults.yaml").write_text((REPO / "hosts/defaults.yaml").read_text())
    data = yaml.safe_load((REPO / "hosts/hv1.yaml").read_text())
    (hosts / "hv1.yaml").write_text(yaml.safe_dump(data | {"lock_path": lock_path}))
    return hosts


@pytest.mark.parametrize("path", ["/etc/machine-id", "/dev/sda", "/run/lock", "/run//lockx/./numa.lock",
                                  "/run/lockx/numa.lock", "/tmp/numa-k3s.lock"])
def test_lock_path_outside_a_lock_directory_is_an_inventory_error(tmp_path: Path, path: str) -> None:
    hosts = write_hv1(tmp_path, path)
    with pytest.raises(InventoryError) as err:
        load_inventory(hosts, ["hv1"])
    assert err.value.exit_code == 2
    shown = posixpath.normpath(path)  # the inventory keeps paths in their normal form (#26, lib/inventory/model.py)
    assert (f"ERROR [lock.path] {hosts}/hv1.yaml: lock_path: {shown} is not in a directory meant for locks: put it "
            "under /run/lock or /var/lock") in str(err.value)


@pytest.mark.parametrize("path", ["/run/lock/numa-k3s.lock", "/var/lock/numa-k3s.lock", "/run/lock/x/y.lock"])
def test_lock_path_in_a_lock_directory_passes(tmp_path: Path, path: str) -> None:
    host = load_inventory(write_hv1(tmp_path, path), ["hv1"]).hosts["hv1"].host
    assert list(check_lock_path(host)) == []
