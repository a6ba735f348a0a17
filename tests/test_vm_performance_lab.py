"""The domain settings live, on a real tiny guest under TCG.

The host is described as one core with two threads (CPUs 0 and 1): the VM's two vCPUs are pinned to
them, so QEMU must be started with one socket, one core, two threads (its command line, as libvirt
built it from the XML). Inside the guest util-linux's lscpu (run with --sysroot on the guest's own
/sys/devices/system/cpu and /proc/cpuinfo; the tiny guest has no lscpu) sees one socket and both
CPUs as the two threads of one core: TCG's default qemu64 (AMD, no topoext) would hide them, so the
domain names an Intel model whose CPUID leaf 0xB QEMU fills from -smp (lib/vmperf.TCG_THREADS_MODEL;
on KVM, host-passthrough gives the guest the host's own topology leaves).
The data disk's I/O thread is found in the running QEMU and its CPU affinity read from the kernel.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lib.runner import failure_text
from lib.steps.registry import REGISTRY
from tests.harness.guest import build_guest
from tests.harness.inventory import ssh_of, write_host
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.virsh import virsh
from tests.harness.world import World
from tests.test_vms_lab import BOOT, URI, tiny_vm

# What the inventory says this machine is, for this test: one core, its two threads 0 and 1.
ONE_CORE_TWO_THREADS = {"sockets": 1, "cores_per_socket": 1, "threads_per_core": 2, "sibling_layout": "adjacent",
                        "l3_cache_mb": 32, "nodes": [{"id": 0, "cpus": "0-1", "memory_mb": 2048}]}
# Every file lscpu reads for the topology, as "== path" then its content.
_DUMP = ("cd /sys/devices/system/cpu && for f in possible present online kernel_max cpu[0-9]*/topology/*; do "
         '[ -f "$f" ] && { echo "== sys/devices/system/cpu/$f"; cat "$f"; }; done; echo "== proc/cpuinfo"; '
         "cat /proc/cpuinfo")


@pytest.fixture
def guest_vm(tmp_path: Path, sshd_farm: SshdFarm) -> Iterator[tuple[World, str, SshHost]]:
    hv = sshd_farm.start(f"perf-{tmp_path.name[-10:]}")
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "base.qcow2"), "64M"], check=True)
    ssh = ssh_of(hv) | {"known_hosts": str(tmp_path / "known_hosts_vms")}
    name = f"t20-{tmp_path.name[-6:].replace('_', '')}"
    vm = tiny_vm(name, images, build_guest(), Path(f"{hv.key_file}.pub"), ssh, data=True)
    vm["vcpu_count"] = 2
    vm["tuning"]["vcpu_pins"] = [0, 1]
    world = World(tmp_path, REGISTRY)
    write_host(world.hosts, "lab", hv, vms=[vm], topology=ONE_CORE_TWO_THREADS, libvirt_uri=URI, virt_type="qemu",
               pin_sharing="allow", host_reserved_memory_mb=256, lab=True, storage_roots=[str(images)])
    yield world, name, hv
    virsh("destroy", name, check=False)
    virsh("undefine", name, check=False)
    sshd_farm.stop(hv.name)


def guest_tree(port: int, key: Path, into: Path) -> None:
    done = subprocess.run(["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "root@127.0.0.1", _DUMP],
                          capture_output=True, text=True, check=True, timeout=60)
    current: Path | None = None
    for line in done.stdout.splitlines():
        if line.startswith("== "):
            current = into / line[3:]
            current.parent.mkdir(parents=True, exist_ok=True)
            current.write_text("")
        elif current is not None:
            with current.open("a") as f:
                f.write(line + "\n")


@pytest.mark.slow  # a real guest booted under TCG: one to three minutes here
def test_guest_sees_sibling_threads_and_the_data_disk_has_its_pinned_iothread(
        guest_vm: tuple[World, str, SshHost], tmp_path: Path) -> None:
    world, name, hv = guest_vm
    (run,) = world.run("images.clone", "cloudinit.build", "vms.define", "vms.start", sleep=time.sleep, policies=BOOT)
    assert run.exit_code == 0, failure_text([run]) + world.out.getvalue()[-3000:]
    define = {c.name: (c.found, c.ok) for r in run.results if r.step == "vms.define" for c in r.checks}
    assert define["guest topology"] == ("sockets=1,cores=1,threads=2", True)

    port = next(int(line.split()[-1]) for line in (world.hosts / "lab.yaml").read_text().splitlines()
                if "host_port:" in line)
    guest_tree(port, hv.key_file, tmp_path / "guest")
    lscpu = subprocess.run(["lscpu", f"--sysroot={tmp_path / 'guest'}"], capture_output=True, text=True, check=True,
                           env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}).stdout
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lscpu.splitlines())}
    # lscpu, not this test, says what the guest sees: one socket, one core, its two threads.
    assert (fields["CPU(s)"], fields["Socket(s)"], fields["Core(s) per socket"], fields["Thread(s) per core"]) == (
        "2", "1", "1", "2"), lscpu
    pid = Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"-smp") + 1] == b"2,sockets=1,dies=1,cores=1,threads=2"

    live = virsh("dumpxml", name).stdout
    assert "cache='none'" in live and "io='native'" in live and "discard='unmap'" in live and "iothread='1'" in live
    assert "<iothreadpin iothread='1' cpuset='0'/>" in live and "<memballoon model='none'/>" in live
    tasks = {p.name: (p / "comm").read_text().strip() for p in Path(f"/proc/{pid}/task").iterdir()}
    (iothread,) = [tid for tid, comm in tasks.items() if comm == "IO iothread1"]
    affinity = subprocess.run(["taskset", "-pc", iothread], capture_output=True, text=True, check=True).stdout
    assert affinity.strip().endswith("list: 0"), affinity  # the emulator cpuset, as iothreadpin says
