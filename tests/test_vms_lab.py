"""vms.start, verify and teardown on real tiny guests under TCG, with this machine's shape (CPUs 0-1, node 0).

The guests are lab/build-guest.sh's kernel + busybox/dropbear initramfs; they answer SSH on a
user-mode port forward and are reached through the test hypervisor's sshd as a jump host, as the
lab does. Live pins are read back from the running domains through libvirt's API over SSH.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from lib.runner import failure_text
from lib.steps.registry import REGISTRY
from tests.harness.guest import build_guest, free_port
from tests.harness.inventory import ssh_of, write_host
from tests.harness.sshd import SshdFarm
from tests.harness.virsh import virsh
from tests.harness.world import FAST, World
from tests.operator_views import status_shows_the_moved_pin, watch_marks_breaches_in_text

URI = "qemu:///system"
# Real guests take real time to boot under TCG (~8 s alone, more side by side on 2 CPUs, and over
# 280 s with seven other test runs on the machine): the deadline is a safety net, not a speed test.
BOOT = replace(FAST, converge=replace(FAST.converge, wait_initial=1, wait_max=2, deadline=900))
# This machine's shape: one socket, two cores, one NUMA node.
TOPOLOGY = {"sockets": 1, "cores_per_socket": 2, "threads_per_core": 1, "l3_cache_mb": 32,
            "nodes": [{"id": 0, "cpus": "0-1", "memory_mb": 2048}]}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def guest() -> Path:
    return build_guest()


def tiny_vm(name: str, images: Path, guest: Path, pubkey: Path, ssh: dict[str, Any], *,
            data: bool = False) -> dict[str, Any]:
    port = free_port()
    vm: dict[str, Any] = {
        "name": name, "vcpu_count": 1, "memory_mb": 256,
        "disk_path": str(images / f"{name}.qcow2"), "disk_size_gb": 1,
        "base_image_path": str(images / "base.qcow2"), "bridge_network_interface": "lab0",
        "cloud_init_iso_path": str(images / f"{name}-seed.iso"),
        "tuning": {"vcpu_pins": [1], "emulator_cpuset": "0", "numa_memory": {"nodeset": "0", "mode": "strict"}},
        "user_configs": [{"username": "root", "ssh_authorized_key_files": [str(pubkey)]}],
        "boot": {"kernel": str(guest / "vmlinuz"), "initrd": str(guest / "initrd.img"),
                 "cmdline": "console=ttyS0 quiet"},
        "user_nic": {"host_port": port},
        # accept-new: the guest makes its host key at first boot, so it cannot be known beforehand.
        "ssh": ssh | {"port": port, "jump": True, "host_key": "accept-new"},
    }
    if data:
        vm["disks"] = [{"name": "cold", "tier": "hdd", "path": str(images / f"{name}-lake.qcow2"), "size_gb": 8,
                        "target": "vdc", "mount": "/data/lake", "directories": ["raw"]}]
    return vm


@pytest.fixture
def lab(tmp_path: Path, sshd_farm: SshdFarm, guest: Path) -> Iterator[tuple[World, list[str]]]:
    hv = sshd_farm.start(f"lab-{tmp_path.name[-10:]}")
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "base.qcow2"), "64M"], check=True)
    known = tmp_path / "known_hosts_vms"  # the VMs' keys are recorded here on first use (accept-new)
    ssh = ssh_of(hv) | {"known_hosts": str(known)}
    # Random, not from tmp_path: every pytest session has the same tmp names, and a parallel run of
    # this test on the shared libvirtd would define (and tear down) the very same domains.
    suffix = secrets.token_hex(3)
    names = [f"t-{suffix}-a", f"t-{suffix}-b"]
    vms = [tiny_vm(names[0], images, guest, Path(f"{hv.key_file}.pub"), ssh, data=True),
           tiny_vm(names[1], images, guest, Path(f"{hv.key_file}.pub"), ssh)]
    w = World(tmp_path, REGISTRY)
    write_host(w.hosts, "lab", hv, vms=vms, topology=TOPOLOGY, libvirt_uri=URI, virt_type="qemu",
               pin_sharing="allow", host_reserved_memory_mb=256, lab=True, storage_roots=[str(images)])
    yield w, names
    for name in names:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
    sshd_farm.stop(hv.name)


def checks_of(run: Any, step: str, target: str) -> dict[str, tuple[str, str, bool]]:
    result = next(r for r in run.results if r.step == step and r.target == target)
    return {c.name: (c.expected, c.found, c.ok) for c in result.checks}


def test_tiny_guests_start_pinned_answer_ssh_and_tear_down(lab: tuple[World, list[str]], tmp_path: Path) -> None:
    world, (a, b) = lab
    (run,) = world.run("images.clone", "cloudinit.build", "vms.define", "vms.start", sleep=time.sleep,
                       policies=BOOT)
    assert run.exit_code == 0, failure_text([run]) + world.out.getvalue()[-3000:]
    live = checks_of(run, "vms.start", a)
    assert live["state"] == ("running", "running", True)
    assert live["autostart"] == ("enabled", "enabled", True)
    assert live[f"virsh vcpupin {a} 0"] == ("1", "1", True)
    assert live[f"virsh emulatorpin {a}"] == ("0", "0", True)
    assert live[f"virsh numatune {a}"] == ("0 strict", "0 strict", True)
    ssh_check = next(k for k in live if k.startswith("ssh root@127.0.0.1:"))
    assert live[ssh_check][1:] == ("answers", True)
    assert live["cloud-init status"] == ("done", "not installed", True)  # the tiny guest has none
    assert "<vcpupin vcpu='0' cpuset='1'/>" in virsh("dumpxml", a).stdout
    recorded = (tmp_path / "known_hosts_vms").read_text()
    assert recorded.count("ssh-ed25519") >= 2, recorded  # both guests' keys, accepted on first use

    (again,) = world.run("images.clone", "cloudinit.build", "vms.define", "vms.start", policies=BOOT)
    assert again.exit_code == 0 and {r.status for r in again.results} == {"ok"}, [
        (r.step, r.target, r.status, r.reason) for r in again.results]

    # Live drift: an operator moves vCPU 0 of one guest by hand; verify names exactly that.
    virsh("vcpupin", b, "0", "0", "--live")
    status_shows_the_moved_pin(world, a, b)
    (check,) = world.run("vms.define", "vms.start", mode="verify")
    assert check.exit_code == 5
    bad = [(r.target, c.name, c.expected, c.found) for r in check.results for c in r.checks if not c.ok]
    assert bad == [(b, f"virsh vcpupin {b} 0", "1", "0")]
    # vms.start puts the live pin back (the definition was right all along).
    (fixed,) = world.run("vms.start")
    assert fixed.exit_code == 0, failure_text([fixed])
    repinned = next(r for r in fixed.results if r.target == b)
    assert repinned.status == "changed" and repinned.commands == (
        f"virsh -c {URI} vcpupin {b} 0 1 --live",), repinned.commands
    assert checks_of(fixed, "vms.start", b)[f"virsh vcpupin {b} 0"] == ("1", "1", True)

    monitoring_reads_the_real_qemu_processes(world, a, b)
    watch_marks_breaches_in_text(world)
    doctor_finds_a_planted_neighbour(world, a, b)

    # Teardown refuses without --yes and deletes nothing.
    images = tmp_path / "images"
    base_sum, lake_sum = sha(images / "base.qcow2"), sha(images / f"{a}-lake.qcow2")
    (refused,) = world.run("vms.remove", "disks.remove")
    assert refused.exit_code == 2
    assert "nothing was deleted: rerun with --yes" in refused.results[0].error
    assert virsh("domstate", a).stdout.strip() == "running"

    (gone,) = world.run("vms.remove", "disks.remove", flags={"yes": True})
    assert gone.exit_code == 0, failure_text([gone])
    assert virsh("domstate", a, check=False).returncode != 0
    assert not (images / f"{a}.qcow2").exists() and not (images / f"{a}-seed.iso").exists()
    assert sha(images / "base.qcow2") == base_sum and sha(images / f"{a}-lake.qcow2") == lake_sum
    kept = checks_of(gone, "disks.remove", a)
    assert kept[f"kept {images / 'base.qcow2'}"][1] == "present"

    (data,) = world.run("disks.remove", flags={"yes": True, "include_data": True})
    assert data.exit_code == 0
    assert not (images / f"{a}-lake.qcow2").exists() and (images / "base.qcow2").exists()


def monitoring_reads_the_real_qemu_processes(world: World, a: str, b: str) -> None:
    # The spec's monitoring on the guests' real QEMU processes.
    (seen,) = world.run("numa.check", "emulator.check", "monitor.sample", mode="verify", sleep=time.sleep)
    # Every target was read; whether a load threshold passes depends on this machine's other work,
    # so the rows are checked against their own threshold below instead of being asserted to pass.
    assert all(r.checks for r in seen.results), failure_text([seen])
    assert seen.exit_code in (0, 5), failure_text([seen])
    numa = checks_of(seen, "numa.check", a)
    assert numa["numatune mode"] == ("strict", "strict", True)
    assert numa["remote memory"][1:] == ("0.00%", True)
    assert numa["memory per node (numastat -p)"][1].startswith("node0 ")
    emulator = checks_of(seen, "emulator.check", b)
    assert_threshold_kept(emulator["emulator load"], 50.0)
    assert int(emulator["emulator threads"][1]) >= 2
    metrics = checks_of(seen, "monitor.sample", a)
    assert metrics["vCPU utilisation"][1].startswith("0:")
    # "0:1.2ms": the delay of each vCPU over the interval, passing only under 5% of it. The interval
    # is the one measured between the two reads, never shorter than the nominal 1 s (longer on a
    # loaded machine), so: every wait under 50 ms must pass, and a breach needs a wait of 50 ms or more.
    waits = [float(part.split(":")[1].removesuffix("ms")) for part in metrics["vCPU wait (run-queue delay)"][1].split()]
    row = metrics["vCPU wait (run-queue delay)"]
    assert waits
    if all(w < 50.0 for w in waits):
        assert row[2], row
    if not row[2]:
        assert any(w >= 49.95 for w in waits), row  # 49.95: the value is shown to 0.1 ms
    assert set(metrics) >= {"vCPU wait (run-queue delay)", "remote memory", "emulator load", "LLC loads / misses"}


def doctor_finds_a_planted_neighbour(world: World, a: str, b: str) -> None:
    # doctor finds a planted neighbour: a busy loop pinned onto the guests' vCPU CPU.
    busy = subprocess.Popen(["taskset", "-c", "1", "sh", "-c", "while :; do :; done"])
    try:
        time.sleep(1.5)  # so ps sees it busy (its %CPU is over its lifetime)
        (doc,) = world.run("doctor", mode="verify", sleep=time.sleep)
    finally:
        busy.kill()
        busy.wait()
    found = {c.name: c for c in doc.results[0].checks}
    delays = found[f"{a}: vCPU scheduling delays"]
    assert not delays.ok and f"pid {busy.pid} on CPU 1" in delays.found, delays.found
    assert "taskset" in delays.expected
    assert found[f"{a}: high cross-NUMA traffic"].ok  # memory placement: not a matter of load
    bottleneck = found[f"{b}: emulator CPU bottleneck"]  # load: its own threshold, whatever this machine does
    load = bottleneck.found.split(" at ")[1].split("%")[0]
    assert_threshold_kept((bottleneck.expected, f"{load}%", bottleneck.ok), 50.0)


def assert_threshold_kept(row: tuple[str, str, bool], limit_percent: float) -> None:
    """A measured percentage row (expected, found, ok) passes exactly when it is under its limit.

    The value shown is rounded: within a point of the limit either verdict matches what is shown.
    """
    value = float(row[1].rstrip("%"))
    if abs(value - limit_percent) >= 1.0:
        assert row[2] == (value < limit_percent), row


def test_ssh_that_never_answers_fails_at_the_convergence_deadline(lab: tuple[World, list[str]]) -> None:
    world, (a, _b) = lab
    host_file = world.hosts / "lab.yaml"
    data = yaml.safe_load(host_file.read_text())
    data["vms"] = data["vms"][:1]
    data["vms"][0]["ssh"]["port"] = free_port()  # nothing listens there: the guest's forward is elsewhere
    host_file.write_text(yaml.safe_dump(data))
    (run,) = world.run("images.clone", "cloudinit.build", "vms.define", "vms.start")
    assert run.exit_code == 4
    failed = next(r for r in run.results if r.status == "failed")
    assert (failed.step, failed.target) == ("vms.start", a)
    assert "did not converge within 10 s" in failed.error
    text = failure_text([run])
    assert "resume: invoke provision --host=lab --resume" in text
    assert "ssh root@127.0.0.1" in text and "answers" in text
    assert sum(world.sleeps) >= 10  # waited with the convergence policy (injected sleep), then gave up

    # No address in the inventory: vms.start asks libvirt (virsh domifaddr); a user-mode NIC has none.
    del data["vms"][0]["ssh"]["host"]
    host_file.write_text(yaml.safe_dump(data))
    (unknown,) = world.run("vms.start")
    assert unknown.exit_code == 4
    rows = {c.name: c.found for c in unknown.results[0].checks if not c.ok}
    assert rows[f"ssh root@(domifaddr):{data['vms'][0]['ssh']['port']}"] == (
        "no address yet (virsh domifaddr: no lease, no ARP entry)")
