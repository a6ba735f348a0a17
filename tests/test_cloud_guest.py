"""The data VM as a real cloud image sees its seed: Debian's cloud-init on the lab's cloud guest.

The guest (lab/build-cloud-guest.sh) boots the Debian kernel with this machine's own root shared
read-only over 9p under an overlay kept on its OS disk, and runs cloud-init's four stages on the
NoCloud seed the product builds. The product's steps provision it (images.clone, cloudinit.build,
vms.define, vms.start) through a real sshd hypervisor and the real libvirtd; the test then logs in
as the seed's non-root user `admin` and looks at what cloud-init did, with the guest's own tools.
Slow (minutes under TCG): `make test-reliability`.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paramiko
import pytest
import yaml

from lib.cloudinit import seed_files
from lib.runner import failure_text
from lib.steps.registry import REGISTRY
from tests.harness.guest import build_cloud_guest, free_port
from tests.harness.inventory import ssh_of, write_host
from tests.harness.sshd import SshdFarm
from tests.harness.virsh import virsh
from tests.harness.world import FAST, World

pytestmark = pytest.mark.slow

URI = "qemu:///system"
# cloud-init's four stages take minutes of guest time under TCG, many more on a busy machine: a
# safety net for a hung guest, not a timing assertion.
BOOT = replace(FAST, converge=replace(FAST.converge, wait_initial=2, wait_max=5, deadline=2400))
TOPOLOGY = {"sockets": 1, "cores_per_socket": 2, "threads_per_core": 1, "l3_cache_mb": 32,
            "nodes": [{"id": 0, "cpus": "0-1", "memory_mb": 2048}]}
STEPS = ("images.clone", "cloudinit.build", "vms.define", "vms.start")


@dataclass
class CloudLab:
    world: World
    name: str
    port: int
    key: Path
    known_hosts: Path

    def run(self, *steps: str, **kw: Any) -> Any:
        (run,) = self.world.run(*steps, policies=BOOT, sleep=time.sleep, **kw)
        return run

    def reboot(self) -> None:
        """Unmount the data disks cleanly, then restart the machine from the kernel (no systemd here).

        The restart waits 10 s, detached from the session, so the command's exit reaches us first;
        on a machine so loaded that it does not, the session is cut by the reset, which is expected.
        """
        with contextlib.suppress(OSError, paramiko.SSHException):
            self.guest("sudo -n sh -c 'sync; umount /data/hot /data/lake; "
                       "(sleep 10; echo b > /proc/sysrq-trigger) </dev/null >/dev/null 2>&1 &'", timeout=60)
        time.sleep(20)  # past the reset: vms.start must not see the old boot's sshd and status

    def guest(self, command: str, *, check: bool = True, timeout: float = 300) -> str:
        """Run a command in the guest as admin (host key as vms.start recorded it: accept-new)."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", port=self.port, username="admin", key_filename=str(self.key),
                       look_for_keys=False, allow_agent=False, timeout=30)
        try:
            _in, out, err = client.exec_command(command, timeout=timeout)
            text, rc = out.read().decode(), out.channel.recv_exit_status()
            assert rc == 0 or not check, f"{command!r} exit {rc}: {err.read().decode()[-1000:]}"
            return text
        finally:
            client.close()


@pytest.fixture
def cloud_lab(tmp_path: Path, sshd_farm: SshdFarm) -> Iterator[CloudLab]:
    guest = build_cloud_guest()
    hv = sshd_farm.start(f"cloud-{tmp_path.name[-10:]}")
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "base.qcow2"), "64M"], check=True)
    known = tmp_path / "known_hosts_vms"
    port = free_port()
    name = f"cg-{secrets.token_hex(3)}"
    vm = {
        "name": name, "vcpu_count": 1, "memory_mb": 512,
        "disk_path": str(images / f"{name}.qcow2"), "disk_size_gb": 1,
        "base_image_path": str(images / "base.qcow2"), "bridge_network_interface": "lab0",
        "cloud_init_iso_path": str(images / f"{name}-seed.iso"),
        # The vCPU on CPU 0 (the other lab guests' vCPUs share CPU 1) and the emulator free to use both:
        # QEMU's 9p server runs there, and the guest waits on it for every file of its root.
        "tuning": {"vcpu_pins": [0], "emulator_cpuset": "0-1", "numa_memory": {"nodeset": "0", "mode": "strict"}},
        "user_configs": [{"username": "admin", "ssh_authorized_key_files": [f"{hv.key_file}.pub"]}],
        "disks": [
            {"name": "hot", "tier": "ssd", "path": str(images / f"{name}-hot.qcow2"), "size_gb": 1, "target": "vdb",
             "mount": "/data/hot", "directories": ["clean", "staging"]},
            {"name": "cold", "tier": "hdd", "path": str(images / f"{name}-lake.qcow2"), "size_gb": 8,
             "target": "vdc", "mount": "/data/lake",
             "directories": ["clean/bronze", "clean/silver", "clean/gold", "archive", "raw"]}],
        "boot": {"kernel": str(guest / "vmlinuz"), "initrd": str(guest / "initrd.img"), "cmdline": "console=ttyS0",
                 "host_root": True},
        "user_nic": {"host_port": port},
        "ssh": ssh_of(hv) | {"port": port, "user": "admin", "jump": True, "host_key": "accept-new",
                             "known_hosts": str(known)},
        "k8s": {"role": "server", "taints": ["workload=data:NoSchedule"]},
    }
    w = World(tmp_path, REGISTRY)
    write_host(w.hosts, "lab", hv, vms=[vm], topology=TOPOLOGY, libvirt_uri=URI, virt_type="qemu",
               pin_sharing="allow", host_reserved_memory_mb=256, lab=True, storage_roots=[str(images)])
    yield CloudLab(w, name, port, hv.key_file, known)
    virsh("destroy", name, check=False)
    virsh("undefine", name, check=False)
    sshd_farm.stop(hv.name)


def stage_times(text: str) -> dict[str, float]:
    """/run/numa-k3s-cloud-init.times: 'stage uptime [rc=N]' per line, written by the guest's init."""
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.strip()}


def what_cloud_init_did(lab: CloudLab) -> tuple[str, str]:
    """Everything the seed asked for, read with the guest's own tools; (instance-id, the lake's UUID)."""
    # cloud-init's own account of the boot, and what it did, read with the guest's tools
    assert lab.guest("cloud-init status --wait").strip() == "status: done"
    # The files real cloud-init wrote in this boot say the same, read with a cat (lib/guest_state.py).
    from lib import guest_state

    assert guest_state.parse(lab.guest(guest_state.command(60))) == "done"
    times = stage_times(lab.guest("cat /run/numa-k3s-cloud-init.times"))
    assert list(times) == ["start", "init-local", "init", "config", "final"]
    print(f"cloud guest: kernel boot to cloud-init done {times['final']:.0f} s (stages {times})")
    assert lab.guest("hostname").strip() == lab.name
    assert lab.guest("id -un; sudo -n id -u").split() == ["admin", "0"]  # real sudo, cloud-init's drop-in
    iid = yaml.safe_load(seed_files(lab.world.loaded()[0].host.vms[0])["meta-data"])["instance-id"]
    assert lab.guest("cat /var/lib/cloud/data/instance-id").strip() == iid
    # network: the NIC matched by the domain's MAC and renamed, and networkd's file rendered for it
    mac = lab.world.loaded()[0].host.vms[0].mac_address
    assert lab.guest("cat /sys/class/net/primary/address").strip() == mac
    networkd = lab.guest("cat /etc/systemd/network/10-cloud-init-primary.network")
    assert f"MACAddress={mac}" in networkd and "DHCP=ipv4" in networkd
    # disks: GPT, one ext4 partition each, mounted from fstab entries with nofail
    blk = lab.guest("sudo -n blkid -o export /dev/vdb /dev/vdb1 /dev/vdc /dev/vdc1")
    assert blk.count("PTTYPE=gpt") == 2 and "LABEL=hot" in blk and "LABEL=cold" in blk
    mounts = lab.guest("findmnt -n -o TARGET,SOURCE,FSTYPE /data/hot; findmnt -n -o TARGET,SOURCE,FSTYPE /data/lake")
    assert mounts.split() == ["/data/hot", "/dev/vdb1", "ext4", "/data/lake", "/dev/vdc1", "ext4"]
    fstab = [line.split() for line in lab.guest("cat /etc/fstab").splitlines() if "/data/" in line]
    assert [(f[0], f[1]) for f in fstab] == [("LABEL=hot", "/data/hot"), ("LABEL=cold", "/data/lake")]
    assert all("nofail" in f[3].split(",") for f in fstab)
    # the seven directories, each on its disk's filesystem (not on the root under the mount point)
    dirs = ["/data/hot/clean", "/data/hot/staging", "/data/lake/clean/bronze", "/data/lake/clean/silver",
            "/data/lake/clean/gold", "/data/lake/archive", "/data/lake/raw"]
    found = lab.guest("for d in " + " ".join(dirs) + "; do findmnt -n -o TARGET -T $d; done").split()
    assert found == ["/data/hot"] * 2 + ["/data/lake"] * 5
    dropin = lab.guest("cat /etc/systemd/system/k3s.service.d/10-data-mounts.conf")
    assert "RequiresMountsFor=/data/hot /data/lake" in dropin
    lake_uuid = lab.guest("sudo -n blkid -s UUID -o value /dev/vdc1").strip()

    return iid, lake_uuid


def changed_seed_applied_at_reboot(lab: CloudLab, tmp_path: Path, iid: str, lake_uuid: str, token: str) -> None:
    # a changed seed (a second key) is a new instance, applied at the next boot; disks are not redone
    extra = tmp_path / "second_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(extra)], check=True)
    host_file = lab.world.hosts / "lab.yaml"
    data = yaml.safe_load(host_file.read_text())
    data["vms"][0]["user_configs"][0]["ssh_authorized_key_files"].append(f"{extra}.pub")
    host_file.write_text(yaml.safe_dump(data))
    seed = lab.run("cloudinit.build")
    (result,) = seed.results
    assert result.status == "changed" and any("next boot only: reboot it" in w for w in result.warnings)
    new_iid = yaml.safe_load(seed_files(lab.world.loaded()[0].host.vms[0])["meta-data"])["instance-id"]
    assert new_iid != iid
    lab.reboot()
    back = lab.run("vms.start")
    assert back.exit_code == 0, failure_text([back])
    assert lab.guest("cat /var/lib/cloud/data/instance-id").strip() == new_iid, lab.guest(
        "cut -d' ' -f1 /proc/uptime; sudo -n grep -E 'instance|cache|NoCloud|seed' /var/log/cloud-init.log "
        "| tail -n 40", check=False)
    assert extra.with_suffix(".pub").read_text().split()[1] in lab.guest("cat ~/.ssh/authorized_keys")
    assert lab.guest("cat /data/lake/raw/survivor").strip() == token
    assert lab.guest("sudo -n blkid -s UUID -o value /dev/vdc1").strip() == lake_uuid  # never reformatted
    assert lab.guest("findmnt -n -o SOURCE /data/lake").strip() == "/dev/vdc1"


def test_real_cloud_init_partitions_mounts_and_keeps_the_lake(cloud_lab: CloudLab, tmp_path: Path,
                                                               record_property: Any) -> None:
    lab = cloud_lab
    started = time.monotonic()
    run = lab.run(*STEPS)
    wall = time.monotonic() - started
    assert run.exit_code == 0, failure_text([run]) + lab.world.out.getvalue()[-3000:]
    start = {c.name: c for r in run.results if r.step == "vms.start" for c in r.checks}
    assert (start["cloud-init status"].found, start["cloud-init status"].ok) == ("done", True)

    iid, lake_uuid = what_cloud_init_did(lab)
    times = stage_times(lab.guest("cat /run/numa-k3s-cloud-init.times"))
    record_property("boot_to_cloud_init_done_s", times["final"])
    record_property("provision_wall_s", round(wall, 1))
    print(f"cloud guest: provision wall time {wall:.0f} s")

    token = secrets.token_hex(16)
    lab.guest(f"echo {token} | sudo -n tee /data/lake/raw/survivor >/dev/null && sync")

    # a second provision changes nothing and keeps the lake
    again = lab.run(*STEPS)
    assert again.exit_code == 0 and {r.status for r in again.results} == {"ok"}, failure_text([again])
    assert lab.guest("cat /data/lake/raw/survivor").strip() == token

    changed_seed_applied_at_reboot(lab, tmp_path, iid, lake_uuid, token)
