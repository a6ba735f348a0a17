"""images.clone with real qemu-img over a real sshd host: overlays, data disks, drift, missing base."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lib.inventory.model import VM
from lib.shell import Command
from lib.steps.base import StepMismatch
from lib.steps.images import GIB, ImagesFacts, disks_of, parse_image, plan_images
from lib.steps.registry import REGISTRY
from tests.harness.inventory import small_vm, write_host
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.world import World


def vm_dicts(images: Path) -> list[dict[str, Any]]:
    slm = small_vm("slm", 0, role="server")
    data = small_vm("data", 1)
    for vm in (slm, data):
        vm["disk_path"] = str(images / f"{vm['name']}.qcow2")
        vm["base_image_path"] = str(images / "base.qcow2")
        vm["cloud_init_iso_path"] = str(images / f"{vm['name']}-seed.iso")
    data["disks"] = [
        {"name": "hot", "tier": "ssd", "path": str(images / "data-hot.qcow2"), "size_gb": 80, "target": "vdb",
         "mount": "/data/hot", "directories": ["clean", "staging"]},
        {"name": "cold", "tier": "hdd", "path": str(images / "hdd" / "data-lake.qcow2"), "size_gb": 8192,
         "target": "vdc", "mount": "/data/lake", "directories": ["clean/bronze", "raw"]},
    ]
    return [slm, data]


def info(path: Path) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)], capture_output=True, text=True,
                         check=True).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    path = tmp_path / "images"
    path.mkdir()
    return path


@pytest.fixture
def world(tmp_path: Path, images: Path, sshd_farm: SshdFarm) -> Iterator[World]:
    host: SshHost = sshd_farm.start(f"img-{tmp_path.name[-12:]}")
    w = World(tmp_path, REGISTRY)
    # A sysroot of its own: the images' ownership records stay in the test's tree (lib/ownership).
    write_host(w.hosts, "hv1", host, vms=vm_dicts(images), sysroot=tmp_path / "sysroot")
    yield w
    sshd_farm.stop(host.name)


def make_base(images: Path) -> Path:
    base = images / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    return base


def test_overlays_and_data_disks_created_then_nothing_to_do(world: World, images: Path) -> None:
    base = make_base(images)
    (run,) = world.run("images.clone")
    assert {r.target: r.status for r in run.results} == {"slm": "changed", "data": "changed"}, run.results
    slm = info(images / "slm.qcow2")
    assert (slm["format"], slm["virtual-size"], slm["full-backing-filename"]) == ("qcow2", 10 * GIB, str(base))
    hot, cold = info(images / "data-hot.qcow2"), info(images / "hdd" / "data-lake.qcow2")
    assert (hot["virtual-size"], cold["virtual-size"]) == (80 * GIB, 8192 * GIB)
    # 80 GiB: qemu-img's 64 KiB clusters already let the default L2 cache map it all; 8 TiB needs 2 MiB.
    assert (hot["cluster-size"], cold["cluster-size"]) == (64 * 1024, 2 * 1024 * 1024)
    assert "backing-filename" not in hot and "backing-filename" not in cold
    assert (images / "hdd" / "data-lake.qcow2").stat().st_size < 10 * 1024 * 1024  # sparse: 8 TiB virtual
    checks = {c.name: c for r in run.results for c in r.checks}
    assert checks[f"os disk {images}/slm.qcow2 backing file"].found == str(base)

    before = {p: digest(p) for p in images.rglob("*.qcow2")}
    (again,) = world.run("images.clone")
    assert [r.status for r in again.results] == ["ok", "ok"]
    assert again.results[0].reason == "every disk exists with the spec's format, backing file and size"
    assert {p: digest(p) for p in images.rglob("*.qcow2")} == before


def test_missing_base_image_creates_nothing(world: World, images: Path) -> None:
    (run,) = world.run("images.clone")
    assert run.exit_code == 4
    failed = [r for r in run.results if r.status == "failed"]
    assert failed and f"the base image {images}/base.qcow2 is missing" in failed[0].error
    assert "nothing was created" in failed[0].error
    assert list(images.iterdir()) == []


def test_existing_disk_with_another_backing_file_is_drift_and_untouched(world: World, images: Path) -> None:
    make_base(images)
    other = images / "other-base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(other), "64M"], check=True)
    disk = images / "slm.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(other), "-F", "qcow2", str(disk), "10G"],
                   check=True)
    before = digest(disk)
    (run,) = world.run("images.clone")
    slm = next(r for r in run.results if r.target == "slm")
    assert (slm.status, slm.exit_code, run.exit_code) == ("failed", 5, 5)
    (bad,) = [c for c in slm.checks if not c.ok]
    assert (bad.name, bad.expected, bad.found) == (f"os disk {disk} backing file", f"{images}/base.qcow2", str(other))
    assert "never overwritten or resized" in slm.error
    assert digest(disk) == before


def test_existing_disk_of_another_size_is_drift(world: World, images: Path) -> None:
    make_base(images)
    hot = images / "data-hot.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(hot), "40G"], check=True)
    (run,) = world.run("images.clone")
    data = next(r for r in run.results if r.target == "data")
    assert data.status == "failed" and data.exit_code == 5
    (bad,) = [c for c in data.checks if not c.ok]
    assert (bad.expected, bad.found) == ("80 GiB", "40 GiB")
    assert info(hot)["virtual-size"] == 40 * GIB
    assert not (images / "hdd").exists()  # nothing else was created for that VM either


def test_existing_disk_with_another_cluster_size_is_drift_and_untouched(world: World, images: Path) -> None:
    make_base(images)
    (images / "hdd").mkdir()
    cold = images / "hdd" / "data-lake.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(cold), "8192G"], check=True)  # 64 KiB clusters
    before = digest(cold)
    (run,) = world.run("images.clone")
    data = next(r for r in run.results if r.target == "data")
    assert (data.status, data.exit_code) == ("failed", 5)
    (bad,) = [c for c in data.checks if not c.ok]
    assert (bad.name, bad.expected, bad.found) == (f"cold disk {cold} cluster size", "2048 KiB", "64 KiB")
    assert digest(cold) == before


@pytest.mark.parametrize(("size_gb", "kib", "want"), [(1, None, 64), (256, None, 64), (257, None, 128),
                                                      (8192, None, 2048), (100000, None, 2048), (8192, 512, 512)])
def test_cluster_size_fits_the_disk(size_gb: int, kib: int | None, want: int) -> None:
    from lib.inventory.model import ExtraDisk

    disk = ExtraDisk(name="d", path="/d.qcow2", size_gb=size_gb, target="vdb", tier="hdd", mount="/d",
                     cluster_kib=kib)
    assert disk.cluster_bytes == want * 1024


def spec_vm() -> VM:
    from lib.inventory.load import load_inventory
    from tests.inventory_helpers import REPO

    return next(v for v in load_inventory(REPO / "hosts", ["hv1"]).hosts["hv1"].host.vms if v.name == "k3s-worker-data")


def test_offline_plan_creates_all_three_data_vm_disks() -> None:
    plan = plan_images(spec_vm(), None)
    shown = [a.shown for a in plan.actions]
    assert len(shown) == 3
    # Created under a temporary name, then linked to its own (never over an existing file).
    assert ('t=/var/lib/libvirt/images/data.qcow2.creating.$$; if qemu-img create -q -f qcow2 -b '
            '/var/lib/libvirt/images/base.qcow2 -F qcow2 "$t" 40G && ln "$t" /var/lib/libvirt/images/data.qcow2; '
            ) in shown[0]
    assert ('qemu-img create -q -f qcow2 -o cluster_size=2097152 "$t" 8192G && ln "$t" /srv/hdd/data-lake.qcow2;'
            in shown[2])
    assert "cold /srv/hdd/data-lake.qcow2 (8192 GiB, 2048 KiB clusters)" in plan.reason
    assert all("exists, not overwriting" in s and s.endswith('rm -f "$t"; exit $rc') for s in shown)


def test_parse_real_qemu_img_output(tmp_path: Path) -> None:
    base = make_base(tmp_path)
    overlay = tmp_path / "o.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay), "2G"],
                   check=True)
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(overlay)], capture_output=True, text=True,
                         check=True).stdout
    parsed = parse_image("present\n" + out)
    assert (parsed.format, parsed.virtual_size, parsed.backing, parsed.backing_format) == (
        "qcow2", 2 * GIB, str(base), "qcow2")
    assert parse_image("") == parse_image("").__class__(False)
    assert parse_image("block").block_device
    assert parse_image("present\nqemu-img: Could not open 'x': Permission denied").error.startswith("qemu-img:")


def test_block_device_disk_must_exist_and_is_never_created() -> None:
    vm = spec_vm()
    cold = vm.disks[1].model_copy(update={"device": "/dev/sdz"})
    vm = vm.model_copy(update={"disks": (vm.disks[0], cold)})
    assert [d.path for d in disks_of(vm)][-1] == "/dev/sdz"
    from lib.steps.images import ImageInfo

    facts = ImagesFacts(ImageInfo(True, "qcow2"), {d.path: ImageInfo(False) for d in disks_of(vm)})
    with pytest.raises(StepMismatch) as err:
        plan_images(vm, facts)
    assert [(c.name, c.found) for c in err.value.checks] == [("cold disk /dev/sdz", "missing")]


def test_create_never_replaces_a_disk_that_appears_after_the_facts(tmp_path: Path,
                                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    # The facts said "missing"; by the time the create command runs, someone else made the file.
    base = make_base(tmp_path)
    vm = spec_vm().model_copy(update={"disk_path": str(tmp_path / "os.qcow2"), "base_image_path": str(base),
                                      "disks": ()})
    facts = ImagesFacts(parse_image("present\n" + json.dumps({"format": "qcow2", "virtual-size": 64 << 20})),
                        {vm.disk_path: parse_image("")})
    # The create records the disk as owned: in a registry of the test's own, outside tmp_path.
    (create,) = plan_images(vm, facts, sysroot=str(tmp_path_factory.mktemp("sysroot"))).actions
    assert isinstance(create, Command)
    theirs = tmp_path / "os.qcow2"
    theirs.write_bytes(b"somebody's data")
    # Past the first guard too (it would catch this case earlier): only the link step stands between.
    racing = create.real.replace(f"if [ -e {theirs} ]; then", "if false; then", 1)
    done = subprocess.run(["sh", "-c", racing], capture_output=True, text=True, check=False)
    assert done.returncode == 17 and f"{theirs} appeared meanwhile, not overwriting" in done.stderr
    assert theirs.read_bytes() == b"somebody's data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.qcow2", "os.qcow2"]  # no temporary left

    theirs.unlink()
    done = subprocess.run(["sh", "-c", create.real], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert info(theirs)["full-backing-filename"] == str(base)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.qcow2", "os.qcow2"]
