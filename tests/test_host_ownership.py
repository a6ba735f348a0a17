"""The tool touches only what it made (issue 26, host side): real sshd, real qemu-img, real decoys.

Every refusal is checked twice: its message names the path and why, and nothing changed (sha256 of
every decoy, the base image and the tool's own files, before and after). libvirtd has no domains
of these names, so teardown and provision steps run for real without a running VM.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lib.cloudinit import seed_files
from lib.inventory.load import load_inventory
from lib.local import build_seed_iso
from lib.ownership import REGISTRY
from lib.results import HostRun
from lib.steps.registry import REGISTRY as STEPS
from tests.harness.inventory import small_vm, write_host
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.world import World

TEARDOWN = ("disks.owned", "vms.remove", "disks.remove")  # the teardown runbook's host-side steps


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Box:
    """One test's hypervisor: a storage root with a base image, a sysroot holding the registry."""

    def __init__(self, world: World, host: SshHost) -> None:
        self.world, self.host = world, host
        self.root = world.tmp / "images"
        self.sysroot = world.tmp / "sysroot"
        for d in (self.root, self.sysroot):
            d.mkdir(exist_ok=True)
        self.base = self.root / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.base), "64M"], check=True)
        tag = secrets.token_hex(3)  # libvirtd is shared: names no other test uses
        self.a, self.b = f"own{tag}-a", f"own{tag}-b"

    def vm(self, name: str, index: int, **paths: str) -> dict[str, Any]:
        vm = small_vm(name, index)
        vm.update(disk_path=str(self.root / f"{name}.qcow2"), base_image_path=str(self.base),
                  cloud_init_iso_path=str(self.root / f"{name}-seed.iso"))
        vm["disks"] = [{"name": "hot", "tier": "ssd", "path": str(self.root / f"{name}-hot.qcow2"), "size_gb": 1,
                        "target": "vdb", "mount": "/data/hot"}]
        vm.pop("k8s")
        for key, value in paths.items():
            if key == "hot":
                vm["disks"][0]["path"] = value
            else:
                vm[key] = value
        return vm

    def write(self, *vms: dict[str, Any]) -> None:
        write_host(self.world.hosts, "hv1", self.host, sysroot=self.sysroot, storage_roots=[str(self.root)],
                   vms=list(vms))

    def registry(self) -> Path:
        return self.sysroot / REGISTRY.lstrip("/")

    def records(self) -> dict[str, dict[str, str]]:
        """path -> the record's fields, as the hypervisor holds them."""
        out = {}
        for f in self.registry().iterdir() if self.registry().exists() else ():
            fields = dict(line.split("=", 1) for line in f.read_text().splitlines())
            out[fields["path"]] = fields
        return out

    def sums(self) -> dict[str, str]:
        """Every file under the root and its sha256 (symlinks by what they point to)."""
        return {str(p): (f"-> {os.readlink(p)}" if p.is_symlink() else sha(p))
                for p in sorted(self.root.rglob("*")) if p.is_symlink() or p.is_file()}


@pytest.fixture
def box(tmp_path: Path, sshd_farm: SshdFarm) -> Iterator[Box]:
    host = sshd_farm.start(f"own-{tmp_path.name[-12:]}")
    yield Box(World(tmp_path, STEPS), host)
    sshd_farm.stop(host.name)


def failed(run: HostRun) -> list[tuple[str, str, int]]:
    return [(r.step, r.target, r.exit_code) for r in run.results if r.status == "failed"]


def error_of(run: HostRun, step: str, target: str) -> str:
    return next(r.error for r in run.results if r.step == step and r.target == target)


def provision(box: Box) -> HostRun:
    (run,) = box.world.run("images.clone", "cloudinit.build")
    return run


def test_what_the_tool_makes_is_recorded_on_the_host_and_teardown_removes_only_that(box: Box) -> None:
    box.write(box.vm(box.a, 0))
    run = provision(box)
    assert run.exit_code == 0, failed(run)
    made = [box.root / f"{box.a}.qcow2", box.root / f"{box.a}-hot.qcow2", box.root / f"{box.a}-seed.iso"]
    records = box.records()
    assert sorted(records) == sorted(str(p) for p in made)
    for path in made:
        st, rec = path.stat(), records[str(path)]
        assert (int(rec["dev"]), int(rec["ino"]), rec["vm"], rec["run"]) == (st.st_dev, st.st_ino, box.a, run.run_id)
        assert int(rec["birth"]) > 0  # ext4 gives a birth time: an inode reused later is told apart
    assert {r["kind"] for r in records.values()} == {"overlay", "data-disk", "seed"}
    # The registry is root's alone.
    assert stat.S_IMODE(box.registry().stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in box.registry().iterdir()} == {0o600}
    checks = {c.name: c for r in run.results for c in r.checks}
    assert checks[f"{made[0]} owned by numa-k3s"].ok and checks[f"{made[2]} owned by numa-k3s"].ok

    base = sha(box.base)
    (gone,) = box.world.run(*TEARDOWN, flags={"yes": True})
    assert gone.exit_code == 0, failed(gone)
    assert not made[0].exists() and not made[2].exists() and made[1].exists()  # data only with --include-data
    assert sha(box.base) == base
    (data,) = box.world.run(*TEARDOWN, flags={"yes": True, "include_data": True})
    assert data.exit_code == 0, failed(data)
    assert not made[1].exists() and sha(box.base) == base
    assert box.records() == {}  # each record went with its file


def test_decoys_at_inventory_paths_survive_a_real_provision_and_teardown(box: Box, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "precious.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(secret), "1G"], check=True)
    (box.root / "theirs.iso").write_bytes(b"an operator's file, not a seed\n")
    (box.root / "link-to-base.qcow2").symlink_to(box.base)
    (box.root / "link-outside.qcow2").symlink_to(secret)
    # The base image by another spelling: `//./` is caught by the inventory (normal forms, rule
    # disk.base-image); a symlinked directory is only seen on the host, by its real path.
    (box.root / "via").symlink_to(box.root)
    odd = str(box.root / "via" / "base.qcow2")
    box.write(box.vm(box.a, 0, disk_path=odd, cloud_init_iso_path=str(box.root / "theirs.iso"),
                     hot=str(box.root / "link-outside.qcow2")),
              box.vm(box.b, 1, disk_path=str(box.root / "link-to-base.qcow2")))
    before, secret_sum = box.sums(), sha(secret)

    (images,) = box.world.run("images.clone")
    (run,) = box.world.run("cloudinit.build")
    assert (images.exit_code, run.exit_code) == (3, 3), failed(images) + failed(run)
    a_images, a_seed = error_of(images, "images.clone", box.a), error_of(run, "cloudinit.build", box.a)
    assert f"{odd}: it is the shared base image (real path {box.base})" in a_images
    assert f"real path {secret} is outside the storage roots ({box.root})" in a_images
    assert f"{box.root}/theirs.iso: the tool has no record of making it" in a_seed
    assert f"mv {box.root}/theirs.iso {box.root}/theirs.iso.old" in a_seed
    assert f"it is the shared base image (real path {box.base})" in error_of(images, "images.clone", box.b)
    assert "nothing was changed" in a_images and "nothing was changed" in a_seed
    # b's seed was the tool's to make: it is the only new file; no decoy, no base changed.
    assert box.sums() == before | {str(box.root / f"{box.b}-seed.iso"): sha(box.root / f"{box.b}-seed.iso")}
    before = box.sums()

    for flags in ({"yes": True}, {"yes": True, "include_data": True}):
        (torn,) = box.world.run(*TEARDOWN, flags=flags)
        assert torn.exit_code == 3, failed(torn)
        # disks.owned stops the host before vms.remove: nothing at all was done, b's own seed included.
        assert {r.step for r in torn.results if r.status != "skipped"} == {"disks.owned"}
        text = "\n".join(f"{c.name}: {c.found}" for r in torn.results for c in r.checks if not c.ok)
        assert f"may delete {odd}: it is the shared base image" in text
        assert f"may delete {box.root}/link-to-base.qcow2: it is the shared base image" in text
        assert f"may delete {box.root}/theirs.iso: the tool has no record of making it" in text
        assert (f"may delete {box.root}/link-outside.qcow2: its real path {secret} is outside" in text) == bool(
            flags.get("include_data"))
        assert box.sums() == before and sha(secret) == secret_sum

    # disks.remove alone refuses just the same (defence in depth, and what the teardown plan shows).
    (alone,) = box.world.run("disks.remove", flags={"yes": True, "include_data": True})
    assert alone.exit_code == 3
    assert f"disks.remove refused to delete {box.a}'s {odd}: it is the shared base image" in error_of(
        alone, "disks.remove", box.a)
    assert box.sums() == before and sha(secret) == secret_sum


def replace_file(path: Path, data: bytes) -> None:
    """Another file at the same path: a new inode, as `cp x.new x && mv` or an editor's save makes."""
    new = path.with_name(path.name + ".new")
    new.write_bytes(data)
    new.rename(path)


def test_a_file_replaced_after_the_tool_made_it_is_refused_by_every_step(box: Box) -> None:
    box.write(box.vm(box.a, 0))
    assert provision(box).exit_code == 0
    overlay, seed = box.root / f"{box.a}.qcow2", box.root / f"{box.a}-seed.iso"
    replace_file(overlay, overlay.read_bytes())  # the same bytes, even: another file all the same
    replace_file(seed, b"not a seed any more")
    before = box.sums()

    (images,) = box.world.run("images.clone")
    (run,) = box.world.run("cloudinit.build")
    assert (images.exit_code, run.exit_code) == (3, 3), failed(images) + failed(run)
    assert (f"{overlay}: the tool made this overlay in run" in error_of(images, "images.clone", box.a)
            and "but the file there now is another" in error_of(images, "images.clone", box.a))
    assert f"{seed}: the tool made this seed in run" in error_of(run, "cloudinit.build", box.a)
    assert f"rm {seed}" in error_of(run, "cloudinit.build", box.a)
    (torn,) = box.world.run(*TEARDOWN, flags={"yes": True, "include_data": True})
    assert torn.exit_code == 3
    bad = {c.name for r in torn.results for c in r.checks if not c.ok}
    assert bad == {f"may delete {overlay}", f"may delete {seed}"}
    assert box.sums() == before


def earlier_version(box: Box, name: str) -> list[Path]:
    """Files as a version without ownership records made them: right shape, no record."""
    vm = dict(box.vm(name, 0))
    overlay, hot = box.root / f"{name}.qcow2", box.root / f"{name}-hot.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(box.base), "-F", "qcow2", str(overlay),
                    "10G"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(hot), "1G"], check=True)
    loaded = load_inventory(box.world.hosts, ["hv1"]).hosts["hv1"].host
    spec = next(v for v in loaded.vms if v.name == vm["name"])
    seed = box.root / f"{name}-seed.iso"
    seed.write_bytes(build_seed_iso(seed_files(spec)))
    return [overlay, hot, seed]


def test_files_of_an_earlier_version_are_adopted_when_they_are_what_the_tool_makes(box: Box) -> None:
    box.write(box.vm(box.a, 0), box.vm(box.b, 1))
    made = earlier_version(box, box.a)
    run = provision(box)
    assert run.exit_code == 0, failed(run)
    a_images = next(r for r in run.results if r.step == "images.clone" and r.target == box.a)
    assert a_images.status == "changed" and "adopt os" in a_images.reason and "made before ownership" in (
        a_images.reason)
    a_seed = next(r for r in run.results if r.step == "cloudinit.build" and r.target == box.a)
    assert a_seed.status == "changed" and "adopt the seed ISO" in a_seed.reason
    assert {str(p) for p in made} <= set(box.records())

    # Teardown adopts what it deletes too: b's files, unrecorded (its records dropped), still go.
    for record in box.registry().iterdir():
        if f"vm={box.b}\n" in record.read_text():
            record.unlink()
    (torn,) = box.world.run(*TEARDOWN, flags={"yes": True, "include_data": True})
    assert torn.exit_code == 0, failed(torn)
    b_removed = next(r for r in torn.results if r.step == "disks.remove" and r.target == box.b)
    assert "adopted: an overlay with the spec's format, backing file and size" in b_removed.reason
    assert not any(p.name.startswith(box.a) or p.name.startswith(box.b) for p in box.root.iterdir())


def test_an_unrecorded_file_unlike_the_tools_is_never_adopted(box: Box) -> None:
    box.write(box.vm(box.a, 0))
    made = earlier_version(box, box.a)
    made[1].unlink()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(made[1]), "2G"], check=True)  # not the spec's
    replace_file(made[2], b"\0" * 4096)  # no cidata volume
    before = box.sums()
    (torn,) = box.world.run(*TEARDOWN, flags={"yes": True, "include_data": True})
    assert torn.exit_code == 3
    bad = {c.name: c.found for r in torn.results for c in r.checks if not c.ok}
    assert set(bad) == {f"may delete {made[1]}", f"may delete {made[2]}"}
    assert all(found.startswith("the tool has no record of making it") for found in bad.values())
    assert box.sums() == before


def test_a_fifo_or_directory_at_an_image_or_seed_path_is_refused_and_never_read(box: Box) -> None:
    fifo, directory = box.root / "fifo.iso", box.root / "dir.qcow2"
    os.mkfifo(fifo)
    directory.mkdir()
    (directory / "keep").write_text("mine")
    box.write(box.vm(box.a, 0, cloud_init_iso_path=str(fifo), disk_path=str(directory)))
    (seed,) = box.world.run("cloudinit.build")  # a read of the FIFO would hang until the timeout
    (images,) = box.world.run("images.clone")
    assert (seed.exit_code, images.exit_code) == (3, 3)
    assert f"{fifo}: it is a fifo, not a file the tool made" in error_of(seed, "cloudinit.build", box.a)
    assert f"{directory}: it is a directory, not a file the tool made" in error_of(images, "images.clone", box.a)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and (directory / "keep").read_text() == "mine"
