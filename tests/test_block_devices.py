"""A block device the hypervisor uses is never given to a VM (issue 26): preflight.access reads the
host's /proc/mounts, /proc/swaps and /sys/class/block (a generated sysroot over real sshd) and
refuses before anything changes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lib.facts.blockdev import BlockFacts, in_use
from lib.results import HostRun
from lib.steps.preflight import device_checks
from lib.steps.registry import REGISTRY
from tests.harness.inventory import small_vm, write_host
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.sysfs import HostShape, write_tree
from tests.harness.world import World

MOUNTS = """/dev/sda2 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
/dev/sda1 /boot ext4 rw,relatime 0 0
/dev/mapper/vg-data /srv xfs rw,relatime 0 0
/dev/md0 /mnt/raid ext4 rw,relatime 0 0
"""
SWAPS = ("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
         "/dev/sdf                                partition\t1048572\t\t0\t\t-2\n")


def fake_blocks(root: Path) -> None:
    """sda: / and /boot on partitions; sdb: under LVM volume vg-data (dm-0) on /srv; sdc: its partition
    in RAID md0 on /mnt/raid; sdd and sde: unused; sdf: swap. Laid out as sysfs does: class/block
    entries are links into block/<disk>/<partition>."""
    (root / "proc" / "mounts").write_text(MOUNTS)
    (root / "proc" / "swaps").write_text(SWAPS)
    block, cls = root / "sys" / "block", root / "sys" / "class" / "block"
    cls.mkdir(parents=True)
    disks = {"sda": ["sda1", "sda2"], "sdb": [], "sdc": ["sdc1"], "sdd": [], "sde": [], "sdf": [], "dm-0": [],
             "md0": []}
    holders = {"sdb": ["dm-0"], "sdc1": ["md0"]}
    for disk, parts in disks.items():
        (block / disk / "holders").mkdir(parents=True)
        (cls / disk).symlink_to(f"../../block/{disk}")
        for part in parts:
            (block / disk / part / "holders").mkdir(parents=True)
            (block / disk / part / "partition").write_text("1\n")
            (cls / part).symlink_to(f"../../block/{disk}/{part}")
    for name, up in holders.items():
        for holder in up:
            (cls / name / "holders" / holder).symlink_to(f"../../{holder}")
    (block / "dm-0" / "dm").mkdir()
    (block / "dm-0" / "dm" / "name").write_text("vg-data\n")
    by_id = root / "dev" / "disk" / "by-id"
    by_id.mkdir(parents=True)
    (by_id / "wwn-0x5000c500a1b2c3d4").symlink_to("../../sda")


DEVICES = {"lvm": "/dev/sdb", "raid": "/dev/sdc", "root": "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
           "free": "/dev/sdd", "swap": "/dev/sdf"}
# A device not on block_devices never gets this far: the inventory refuses it (rule disk.device,
# tests/test_inventory_safety.py); preflight's own check of the list is defence in depth.


@pytest.fixture
def world(tmp_path: Path, sshd_farm: SshdFarm) -> Iterator[World]:
    host: SshHost = sshd_farm.start(f"blk-{tmp_path.name[-12:]}")
    sysroot = write_tree(tmp_path / "sysroot", HostShape())
    fake_blocks(sysroot)
    w = World(tmp_path, REGISTRY)
    vms: list[dict[str, Any]] = []
    for i, (name, dev) in enumerate(DEVICES.items()):
        vm = small_vm(f"vm-{name}", i)
        vm.pop("k8s")
        vm.update(disk_path=str(tmp_path / "images" / f"{name}.qcow2"),
                  base_image_path=str(tmp_path / "images" / "base.qcow2"),
                  cloud_init_iso_path=str(tmp_path / "images" / f"{name}.iso"))
        vm["disks"] = [{"name": "hot", "tier": "ssd", "path": str(tmp_path / "images" / f"{name}-hot.qcow2"),
                        "device": dev, "size_gb": 1, "target": "vdb", "mount": "/data/hot"}]
        vms.append(vm)
    write_host(w.hosts, "hv1", host, sysroot=sysroot, vms=vms, block_devices=list(DEVICES.values()))
    (tmp_path / "images").mkdir()
    yield w
    sshd_farm.stop(host.name)


def rows(run: HostRun) -> dict[str, tuple[str, bool]]:
    return {c.name: (c.found, c.ok) for r in run.results for c in r.checks if " device " in c.name}


def test_devices_the_hypervisor_uses_are_refused_at_preflight(world: World, tmp_path: Path) -> None:
    (run,) = world.run("preflight.access", "images.clone")
    assert run.exit_code == 3, run.error
    got = rows(run)
    assert got["vm-lvm device /dev/sdb"] == (
        "/dev/sdb (sdb): it is part of dm-0 (vg-data): dm-0 is mounted on /srv; never given to a VM", False)
    assert got["vm-raid device /dev/sdc"] == (
        "/dev/sdc (sdc): its partition sdc1: it is part of md0: md0 is mounted on /mnt/raid; never given to a VM",
        False)
    assert got[f"vm-root device {DEVICES['root']}"] == (
        f"{DEVICES['root']} (sda): its partition sda1 is mounted on /boot; never given to a VM", False)
    assert got["vm-swap device /dev/sdf"] == ("/dev/sdf (sdf): sdf is swap; never given to a VM", False)
    assert got["vm-free device /dev/sdd"] == ("/dev/sdd (sdd): not in use", True)
    # Refused before anything changes: images.clone never ran, nothing was created.
    assert [r.step for r in run.results if r.status != "skipped"] == ["preflight.access"]
    assert list((tmp_path / "images").iterdir()) == []


def test_an_unreadable_proc_mounts_fails_the_read(world: World, tmp_path: Path) -> None:
    os.remove(tmp_path / "sysroot" / "proc" / "mounts")
    (run,) = world.run("preflight.access")
    (result,) = run.results
    assert run.exit_code == 4 and "cannot read" in result.error and "/proc/mounts" in result.error, result.error


def test_in_use_follows_partitions_and_holders_all_the_way_up() -> None:
    facts = BlockFacts(mounted={"dm-1": "/var"}, holders={"sdx1": ("md1",), "md1": ("dm-1",)},
                       partitions={"sdx": ("sdx1",)}, devices={}, dm_names={"vg-var": "dm-1"})
    assert in_use(facts, "sdx") == ("its partition sdx1: it is part of md1: it is part of dm-1 (vg-var): "
                                    "dm-1 is mounted on /var")
    assert in_use(facts, "sdy") is None
    loop = BlockFacts(mounted={}, holders={"a": ("b",), "b": ("a",)}, partitions={}, devices={}, dm_names={})
    assert in_use(loop, "a") is None  # a cycle ends, unmounted


def test_preflight_refuses_a_device_off_the_list_even_if_the_inventory_let_it_through(world: World) -> None:
    """Defence in depth: the rule disk.device refuses it first, but a host model that names a device
    off block_devices still gets a failed row from preflight, never a pass."""
    (loaded,) = world.loaded("hv1")
    host = loaded.host.model_copy(update={"block_devices": ("/dev/sdd",)})
    facts = BlockFacts(mounted={}, holders={}, partitions={}, devices={"/dev/sdd": "sdd", "/dev/sdb": "sdb"},
                       dm_names={})
    rows_ = {c.name: c for c in device_checks(host, facts)}
    assert rows_["vm-free device /dev/sdd"].ok
    bad = rows_["vm-lvm device /dev/sdb"]
    assert not bad.ok and bad.found.startswith("/dev/sdb is not on block_devices (/dev/sdd): add it there")
