"""cloudinit.build: pure rendering against fixture files, reproducible ISOs read back, upload over sshd."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lib.cloudinit import network_config, seed_files, user_data
from lib.inventory.load import load_inventory
from lib.inventory.model import VM
from lib.local import build_seed_iso
from lib.steps.cloudinit import parse_seed, plan_seed
from lib.steps.registry import REGISTRY
from tests.harness.inventory import small_vm, write_host
from tests.harness.sshd import SshdFarm
from tests.harness.world import World
from tests.inventory_helpers import REPO

FIXTURES = REPO / "tests" / "fixtures" / "cloudinit"


def spec_vms() -> dict[str, VM]:
    return {vm.name: vm for vm in load_inventory(REPO / "hosts", ["hv1"]).hosts["hv1"].host.vms}


@pytest.mark.parametrize("name", ["k3s-worker-data", "k3s-server-tasks"])
def test_seed_files_match_fixtures(name: str) -> None:
    files = seed_files(spec_vms()[name])
    for kind, text in files.items():
        assert text == (FIXTURES / f"{name}.{kind}").read_text(), kind


def test_user_data_carries_users_keys_and_the_data_layout() -> None:
    text = user_data(spec_vms()["k3s-worker-data"])
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    (admin,) = doc["users"]
    assert admin["name"] == "admin" and admin["ssh_authorized_keys"] == ["ssh-rsa AAAAB3NzaC1yc2E... user@host"]
    assert doc["hostname"] == "k3s-worker-data"
    assert doc["disk_setup"]["/dev/vdb"]["overwrite"] is False and "/dev/vdc" in doc["disk_setup"]
    assert [m[:2] for m in doc["mounts"]] == [["LABEL=hot", "/data/hot"], ["LABEL=cold", "/data/lake"]]
    assert doc["runcmd"] == [
        ["sh", "-c", 'mountpoint -q "$1" && mkdir -p "$@"', "sh", "/data/hot", "/data/hot/clean", "/data/hot/staging"],
        ["sh", "-c", 'mountpoint -q "$1" && mkdir -p "$@"', "sh", "/data/lake", "/data/lake/clean/bronze",
         "/data/lake/clean/silver", "/data/lake/clean/gold", "/data/lake/archive", "/data/lake/raw"]]
    assert "disk_setup" not in yaml.safe_load(user_data(spec_vms()["k3s-worker-slm"]))


def test_static_network_when_the_inventory_gives_one() -> None:
    vm = spec_vms()["k3s-worker-slm"].model_copy(update={"network": None})
    assert yaml.safe_load(network_config(vm))["ethernets"]["primary"]["dhcp4"] is True
    from lib.inventory.model import VmNetwork

    static = vm.model_copy(update={"network": VmNetwork.model_validate(
        {"address": "10.0.0.13/24", "gateway": "10.0.0.1", "dns": ["10.0.0.2"]})})
    nic = yaml.safe_load(network_config(static))["ethernets"]["primary"]
    assert nic["addresses"] == ["10.0.0.13/24"] and nic["routes"] == [{"to": "0.0.0.0/0", "via": "10.0.0.1"}]
    assert nic["nameservers"] == {"addresses": ["10.0.0.2"]}


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init is not installed here")
@pytest.mark.parametrize("name", ["k3s-worker-data", "k3s-server-tasks"])
def test_user_data_passes_cloud_init_schema(tmp_path: Path, name: str) -> None:
    path = tmp_path / "user-data"
    path.write_text(user_data(spec_vms()[name]))
    done = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    path.write_text("#cloud-config\nusers: 5\n")  # and the check can fail
    assert subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True,
                          check=False).returncode != 0


def read_iso_file(iso: Path, name: str) -> str:
    return subprocess.run(["isoinfo", "-i", str(iso), "-R", "-x", f"/{name}"], capture_output=True, text=True,
                          check=True).stdout


def test_iso_is_reproducible_and_reads_back(tmp_path: Path) -> None:
    vm = spec_vms()["k3s-worker-data"]
    first, second = build_seed_iso(seed_files(vm)), build_seed_iso(seed_files(vm))
    assert first == second
    other = build_seed_iso(seed_files(spec_vms()["k3s-worker-slm"]))
    assert hashlib.sha256(other).digest() != hashlib.sha256(first).digest()
    iso = tmp_path / "seed.iso"
    iso.write_bytes(first)
    label = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True, check=True).stdout
    assert "Volume id: cidata" in label
    for name, text in seed_files(vm).items():
        assert read_iso_file(iso, name) == text
    meta = yaml.safe_load(read_iso_file(iso, "meta-data"))
    assert meta["local-hostname"] == vm.name and meta["instance-id"].startswith(f"{vm.name}-")


def test_plan_uploads_only_when_the_content_differs() -> None:
    vm = spec_vms()["k3s-worker-slm"]
    iso = build_seed_iso(seed_files(vm))
    sha = hashlib.sha256(iso).hexdigest()
    same = parse_seed(iso, f"@@sha@@\n{sha}\n@@label@@\ncidata\n")
    assert plan_seed(vm, same).empty
    stale = parse_seed(iso, "@@sha@@\n0000\n@@label@@\ncidata\n")
    (upload,) = plan_seed(vm, stale).actions
    assert upload.shown == f"upload seed ISO (sha256 {sha[:12]}) to {vm.cloud_init_iso_path} (root:root mode 644)"
    assert plan_seed(vm, stale).reason == "upload the seed ISO (content differs)"
    (reboot,) = plan_seed(vm, stale).warnings
    iid = yaml.safe_load(seed_files(vm)["meta-data"])["instance-id"]
    assert f"instance-id {iid}) at its next boot only: reboot it (virsh reboot {vm.name})" in reboot
    # A running VM keeps the old file open as its CD-ROM (the upload renames a new one into place):
    # the plan swaps the media, so the next boot, even a reboot inside the guest, reads the new seed.
    running = parse_seed(iso, "@@sha@@\n0000\n@@label@@\ncidata\n@@state@@\nrunning\n")
    upload, swap = plan_seed(vm, running, "qemu:///system").actions
    assert f"change-media {vm.name} \"$3\" --eject --live --force" in swap.shown
    assert f"change-media {vm.name} \"$3\" --insert --source {vm.cloud_init_iso_path} --live" in swap.shown
    missing = parse_seed(iso, "@@sha@@\n\n@@label@@\n\n")
    assert plan_seed(vm, missing).reason == "upload the seed ISO (missing)" and not plan_seed(vm, missing).warnings


@pytest.fixture
def world(tmp_path: Path, sshd_farm: SshdFarm) -> Iterator[World]:
    host = sshd_farm.start(f"ci-{tmp_path.name[-12:]}")
    w = World(tmp_path, REGISTRY)
    vms = [small_vm("slm", 0, role="server"), small_vm("data", 1)]
    for vm in vms:
        vm["cloud_init_iso_path"] = str(tmp_path / "images" / f"{vm['name']}-seed.iso")
    # A sysroot of its own: the seeds' ownership records stay in the test's tree (lib/ownership).
    write_host(w.hosts, "hv1", host, vms=vms, sysroot=tmp_path / "sysroot")
    yield w
    sshd_farm.stop(host.name)


def test_seeds_uploaded_verified_then_unchanged(world: World, tmp_path: Path) -> None:
    (run,) = world.run("cloudinit.build")
    assert [r.status for r in run.results] == ["changed", "changed"], run.results
    iso = tmp_path / "images" / "slm-seed.iso"
    assert yaml.safe_load(read_iso_file(iso, "meta-data"))["local-hostname"] == "slm"
    assert oct(iso.stat().st_mode & 0o777) == "0o644"
    assert all(c.ok for r in run.results for c in r.checks)
    (again,) = world.run("cloudinit.build")
    assert [r.status for r in again.results] == ["ok", "ok"]
    iso.write_bytes(b"tampered")
    (fixed,) = world.run("cloudinit.build")
    slm = next(r for r in fixed.results if r.target == "slm")
    assert slm.status == "changed" and slm.reason == "upload the seed ISO (content differs)"
    assert "Volume id: cidata" in subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True,
                                                 text=True, check=True).stdout


def test_online_plan_diffs_the_seed_against_the_one_on_the_host(world: World, tmp_path: Path) -> None:
    world.run("cloudinit.build")
    iso = tmp_path / "images" / "slm-seed.iso"
    files = seed_files(load_inventory(world.hosts, ["hv1"]).hosts["hv1"].host.vms[0])
    old = files["user-data"].replace("hostname: slm", "hostname: slm-old")
    assert old != files["user-data"]
    iso.write_bytes(build_seed_iso({**files, "user-data": old}))  # the seed a previous inventory gave
    before = iso.read_bytes()
    (plan,) = world.run("cloudinit.build", mode="plan")
    slm = next(r for r in plan.results if r.target == "slm")
    shown = "\n".join(slm.planned)
    assert f"{iso}:user-data: diff against the host" in shown
    assert "-hostname: slm-old" in shown and "+hostname: slm" in shown
    assert f"{iso}:meta-data: same as on the host" in shown  # only what differs is a diff
    data = next(r for r in plan.results if r.target == "data")
    assert data.planned == () and data.status == "ok"  # unchanged: nothing fetched, nothing shown
    assert iso.read_bytes() == before  # a plan changes nothing
