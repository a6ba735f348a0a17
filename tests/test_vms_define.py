"""vms.define against the real libvirtd (qemu:///system, started by `make test` via lab/services.sh).

The spec's four domains define on any host (ENVIRONMENT.md): every vcpupin, the emulatorpin and
the strict numatune are read back from `virsh dumpxml --inactive` and compared with hv1.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lib.domain import parse_domifaddr
from lib.steps.registry import REGISTRY
from tests.harness.inventory import write_host
from tests.harness.sshd import SshdFarm
from tests.harness.virsh import virsh
from tests.harness.world import World
from tests.inventory_helpers import hv1

URI = "qemu:///system"
SPEC_NAMES = ["k3s-worker-slm-heavy", "k3s-worker-data", "k3s-worker-slm", "k3s-server-tasks"]


def pools_under(path: Path) -> list[str]:
    """Storage pools (any state) whose target directory lies under path: only ones this test made."""
    names = virsh("pool-list", "--all", "--name").stdout.split()
    found = []
    for name in names:
        xml = virsh("pool-dumpxml", name, check=False).stdout
        if f"<path>{path}" in xml:
            found.append(name)
    return found


def remove_pools_under(path: Path) -> None:
    for name in pools_under(path):
        virsh("pool-destroy", name, check=False)
        virsh("pool-undefine", name, check=False)


def undefine_spec_domains() -> None:
    for name in SPEC_NAMES:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)


@pytest.fixture(scope="module", autouse=True)
def libvirtd() -> Iterator[None]:
    done = subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, f"libvirtd is not answering on {URI}: run lab/services.sh (make test does)"
    undefine_spec_domains()
    yield
    undefine_spec_domains()


def spec_vms_in(images: Path) -> list[dict[str, Any]]:
    vms: list[dict[str, Any]] = hv1()["vms"]
    for vm in vms:
        short = vm["name"].removeprefix("k3s-")
        vm["disk_path"] = str(images / f"{short}.qcow2")
        vm["base_image_path"] = str(images / "base.qcow2")
        vm["cloud_init_iso_path"] = str(images / f"{short}-seed.iso")
        for disk in vm.get("disks", []):
            disk["path"] = str(images / f"{short}-{disk['name']}.qcow2")
    return vms


@pytest.fixture
def world(tmp_path: Path, sshd_farm: SshdFarm) -> Iterator[World]:
    host = sshd_farm.start(f"virt-{tmp_path.name[-12:]}")
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "base.qcow2"), "64M"], check=True)
    w = World(tmp_path, REGISTRY)
    topology = hv1()["topology"]
    write_host(w.hosts, "hv1", host, vms=spec_vms_in(images), topology=topology, libvirt_uri=URI,
               hugepages=hv1()["hugepages"], storage_roots=[str(images)])
    yield w
    undefine_spec_domains()
    remove_pools_under(tmp_path)  # only when the test failed: defining makes none
    sshd_farm.stop(host.name)


def set_pin_in_xml(name: str, vcpu: int, cpuset: str, tmp: Path) -> None:
    """Change one configured pin the way an operator's hand edit would."""
    xml = virsh("dumpxml", "--inactive", name).stdout
    old = f"<vcpupin vcpu='{vcpu}' cpuset='"
    start = xml.index(old) + len(old)
    end = xml.index("'", start)
    path = tmp / f"{name}.xml"
    path.write_text(xml[:start] + cpuset + xml[end:])
    virsh("define", str(path))


def set_memory_in_xml(name: str, kib: int, tmp: Path) -> None:
    xml = virsh("dumpxml", "--inactive", name).stdout
    start = xml.index("<memory unit='KiB'>") + len("<memory unit='KiB'>")
    end = xml.index("</memory>", start)
    xml = xml[:start] + str(kib) + xml[end:]
    start = xml.index("<currentMemory unit='KiB'>") + len("<currentMemory unit='KiB'>")
    end = xml.index("</currentMemory>", start)
    path = tmp / f"{name}-memory.xml"
    path.write_text(xml[:start] + str(kib) + xml[end:])
    virsh("define", str(path))


def test_spec_domains_define_with_every_pin_then_drift_is_reported_not_fixed(world: World, tmp_path: Path) -> None:
    (run,) = world.run("images.clone", "cloudinit.build", "vms.define")
    assert run.exit_code == 0, [r.error for r in run.results if r.error]
    define = {r.target: r for r in run.results if r.step == "vms.define"}
    assert {t: r.status for t, r in define.items()} == dict.fromkeys(SPEC_NAMES, "changed")
    heavy = {c.name: c for c in define["k3s-worker-slm-heavy"].checks}
    assert len([n for n in heavy if n.startswith("vcpupin ")]) == 32
    assert (heavy["vcpupin 1"].expected, heavy["vcpupin 1"].found) == ("36", "36")
    assert heavy["emulatorpin"].found == "16-17,52-53"
    assert heavy["numatune"].found == "0 strict"
    # libvirtd keeps what lib/vmperf.py adds (hugepages and cachetune are checked when the VM starts).
    assert heavy["guest topology"].found == "sockets=1,cores=16,threads=2"
    assert heavy["hugepages"].found == "1048576 KiB, locked"
    assert heavy["L3 cachetune"].found == "vCPUs 0-31: L3 id 0 36864 KiB"
    data = {c.name: c for c in define["k3s-worker-data"].checks}
    assert data["iothreadpin 2"].found == "34-35,70-71" and data["disk vdc driver"].ok
    xml = virsh("dumpxml", "--inactive", "k3s-server-tasks").stdout
    assert "<vcpupin vcpu='11' cpuset='69'/>" in xml and "<emulatorpin cpuset='34-35,70-71'/>" in xml
    assert "<memory mode='strict' nodeset='1'/>" in xml
    # virt-install used to make a persistent pool per image folder (images, images-1, ...): none now
    assert pools_under(tmp_path) == []
    data_xml = virsh("dumpxml", "--inactive", "k3s-worker-data").stdout
    assert f"<mac address='{world.loaded()[0].host.vms[1].mac_address}'/>" in data_xml
    assert "<source file='" + str(tmp_path / "images" / "worker-data-cold.qcow2") + "'/>" in data_xml

    (again,) = world.run("vms.define")
    assert [r.status for r in again.results] == ["ok"] * 4

    set_pin_in_xml("k3s-worker-slm-heavy", 3, "40", tmp_path)
    (check,) = world.run("vms.define", mode="verify")
    heavy_result = next(r for r in check.results if r.target == "k3s-worker-slm-heavy")
    bad = [(c.name, c.expected, c.found) for c in heavy_result.checks if not c.ok]
    assert bad == [("vcpupin 3", "37", "40")]
    assert check.exit_code == 5
    assert [r.status for r in check.results if r.target != "k3s-worker-slm-heavy"] == ["ok"] * 3

    # A pin that stays on the VM's node changes without a restart: here the definition alone (shut off).
    # (Not applied on this machine: virsh vcpupin refuses CPU 37 on a host with two CPUs.)
    (planned,) = world.run("vms.define", mode="plan")
    heavy_plan = next(r for r in planned.results if r.target == "k3s-worker-slm-heavy")
    assert heavy_plan.reason == "k3s-worker-slm-heavy is shut off: persistent definition only: vcpupin 3 40 -> 37"
    assert heavy_plan.planned == (f"virsh -c {URI} vcpupin k3s-worker-slm-heavy 3 37 --config",)

    # Memory only changes when QEMU starts again: refused, naming the field and the flag; nothing changed.
    set_memory_in_xml("k3s-worker-slm-heavy", 65536, tmp_path)
    before = virsh("dumpxml", "--inactive", "k3s-worker-slm-heavy").stdout
    (drift,) = world.run("vms.define")
    heavy_drift = next(r for r in drift.results if r.target == "k3s-worker-slm-heavy")
    assert (heavy_drift.status, heavy_drift.exit_code) == ("failed", 5)
    assert "need a restart (memory 64 MiB -> 120832 MiB)" in heavy_drift.error
    assert "rerun with --restart" in heavy_drift.error and "--redefine while it is shut off" in heavy_drift.error
    assert virsh("dumpxml", "--inactive", "k3s-worker-slm-heavy").stdout == before  # not redefined

    (fixed,) = world.run("vms.define", flags={"redefine": True})
    heavy_fixed = next(r for r in fixed.results if r.target == "k3s-worker-slm-heavy")
    assert heavy_fixed.status == "changed" and heavy_fixed.reason.startswith("redefine k3s-worker-slm-heavy")
    assert "<vcpupin vcpu='3' cpuset='37'/>" in virsh("dumpxml", "--inactive", "k3s-worker-slm-heavy").stdout
    assert "<memory unit='KiB'>123731968</memory>" in virsh("dumpxml", "--inactive", "k3s-worker-slm-heavy").stdout


def test_domifaddr_first_ipv4_address() -> None:
    # The table `virsh domifaddr` prints (libvirt 9.0): header, rule, one row per address.
    text = (" Name       MAC address          Protocol     Address\n"
            "-------------------------------------------------------------------------------\n"
            " vnet0      52:54:00:8c:2e:5e    ipv6         fe80::5054:ff:fe8c:2e5e/64\n"
            " -          -                    ipv4         192.168.122.42/24\n")
    assert parse_domifaddr(text) == "192.168.122.42"
    assert parse_domifaddr(text.split("\n", 2)[0]) is None


def test_virt_install_gets_no_disk_path_it_could_make_a_pool_for() -> None:
    from lib.domain import virt_install_args
    from lib.inventory.load import load_inventory
    from lib.inventory.model import DirectBoot
    from lib.vmperf import domain_tuning
    from tests.inventory_helpers import REPO

    loaded = load_inventory(REPO / "hosts", ["hv1"]).hosts["hv1"]
    vm = next(v for v in loaded.host.vms if v.disks)
    tuning = domain_tuning(loaded.host, loaded.cores, vm)
    args = virt_install_args(vm, uri=URI, virt_type="kvm", tuning=tuning)
    assert args[args.index("--disk") + 1] == "none" and args.count("--disk") == 1
    edits = [args[i + 1] for i, a in enumerate(args) if a == "--xml"]
    assert f"./devices/disk[1]/source/@file={vm.disk_path}" in edits
    assert f"./devices/disk[3]/source/@file={vm.disks[1].path}" in edits
    assert "./devices/disk[4]/@device=cdrom" in edits and "xpath.create=./devices/disk[4]/readonly" in edits
    assert not any("-fsdev" in a for a in args)  # the lab's shared root only when boot.host_root says so
    lab = vm.model_copy(update={"boot": DirectBoot(kernel="/k", initrd="/i", host_root=True)})
    (share,) = [a for a in virt_install_args(lab, uri=URI, virt_type="qemu", tuning=tuning) if "-fsdev" in a]
    assert "path=/,security_model=none,readonly=on" in share and "mount_tag=hostroot" in share
