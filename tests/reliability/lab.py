"""A private copy of the lab (hosts/lab.yaml's shape) for the reliability tests, driven through the CLI.

Real parts throughout: a farm sshd as the hypervisor's SSH endpoint, a generated sysroot of this
machine's shape for bios.check and host.tune, real libvirtd and qemu-img, two tiny TCG guests (the
k3s server and the data VM with its lake disk), the k3s stand-in through the airgap path. Every
provision is a real `invoke` process, so signals and exit codes are the operator's.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import paramiko
import yaml

from lib.records import runs_of
from tests.harness.guest import free_port
from tests.harness.k3s_standin import standin_artifacts
from tests.harness.sshd import SshHost
from tests.harness.sysfs import HostShape, write_tree
from tests.inventory_helpers import REPO

URI = "qemu:///system"
HOST = "rlab"
WAIT_S = 600.0  # a safety net for a hung product, not a timing assertion
# Left behind only by an interrupted write; never at a path where a file belongs.
TEMP_MARKS = (".creating.", ".uploading", ".tmp", ".numa-k3s-upload-")


def virsh(*args: str, check: bool = True) -> str:
    done = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, check=check, timeout=120)
    return done.stdout


def sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Lab:
    """hosts/lab.yaml with two of its VMs, rewritten to this test's paths, ports and sshd."""

    def __init__(self, tmp: Path, hv: SshHost, guest: Path, token: str, *, initrd: Path | None = None,
                 spare: bool = False) -> None:
        """initrd: another initramfs for the guests (tests/harness/persistent_guest.py); spare: also
        prepare lab.yaml's lab-slm as `self.spare_vm`, kept out of the inventory (`self.spare`)."""
        self.tmp, self.hv, self.token = tmp, hv, token
        self.initrd = initrd or guest / "initrd.img"
        self.hosts, self.runs, self.images = tmp / "hosts", tmp / "runs", tmp / "images"
        self.token_file = tmp / "operator" / "k3s.token"
        self.known_vms = tmp / "known_hosts_vms"
        for d in (self.hosts, self.images / "ssd", self.images / "hdd", self.token_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        self.token_file.write_text(token + "\n")
        self.token_file.chmod(0o600)
        self.base = self.images / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.base), "64M"], check=True)
        self.base_sha = sha(self.base)  # before any provision: no run may ever change it
        self.sysroot = write_tree(tmp / "sysroot", HostShape(sockets=1, cores_per_socket=2, threads_per_core=1,
                                                             memory_mb_per_node=4096, l3_kb=32768))
        self.config = tmp / "invoke.yaml"
        self.config.write_text(yaml.safe_dump({
            "hosts_dir": str(self.hosts), "runs_dir": str(self.runs),
            # Tiny guests boot in seconds: poll every second or two instead of up to ten.
            "retries": {"converge": {"wait_initial": 1, "wait_max": 2, "deadline": 300}}}))
        # Random, not from the tmp dir's name: that repeats across pytest sessions, and a crashed
        # session's domains would then be taken for this one's.
        prefix = f"rl{secrets.token_hex(3)}"
        self.data_vm, self.server_vm = f"{prefix}-data", f"{prefix}-tasks"
        self.spare_vm = f"{prefix}-slm"
        self.spare: dict[str, Any] | None = None
        self.ssh_ports: dict[str, int] = {}
        self._write_host(guest, spare)

    def _write_host(self, guest: Path, spare: bool) -> None:
        lab = yaml.safe_load((REPO / "hosts/lab.yaml").read_text())
        keep = {"lab-data": self.data_vm, "lab-server-tasks": self.server_vm} | (
            {"lab-slm": self.spare_vm} if spare else {})
        api_port = free_port()
        vms = []
        for vm in lab["vms"]:
            if vm["name"] not in keep:
                continue
            name = keep[vm["name"]]
            port = self.ssh_ports[name] = free_port()
            # The tiny guest's 256 MiB (hosts/lab.yaml gives its cloud guests 512): the day-two
            # tests' memory changes and node fit are counted from it.
            vm.update(name=name, memory_mb=256, disk_path=str(self.images / f"{name}.qcow2"),
                      base_image_path=str(self.images / "base.qcow2"),
                      cloud_init_iso_path=str(self.images / f"{name}-seed.iso"),
                      boot={"kernel": str(guest / "vmlinuz"), "initrd": str(self.initrd),
                            "cmdline": "console=ttyS0 quiet"},
                      ssh={"host": "127.0.0.1", "port": port, "user": "root", "host_key": "accept-new"},
                      user_configs=[{"username": "root", "ssh_authorized_key_files": [f"{self.hv.key_file}.pub"]}])
            vm["user_nic"] = {"host_port": port} | ({"forwards": {api_port: 6443}} if name == self.server_vm else {})
            for disk in vm.get("disks", []):
                disk["path"] = str(self.images / disk["tier"] / f"{name}-{disk['name']}.qcow2")
            if name == self.spare_vm:
                self.spare = vm
            else:
                vms.append(vm)
        lab.update(ssh={"host": self.hv.host, "port": self.hv.port, "user": self.hv.user,
                        "key_file": str(self.hv.key_file), "known_hosts": str(self.known_vms)},
                   sysroot=str(self.sysroot), lock_path=str(self.tmp / "locks" / f"{HOST}.lock"), vms=vms,
                   storage_roots=[str(self.images)])  # lab.yaml's root, moved with its files
        lab["k3s"].update(server_url=f"https://10.0.2.2:{api_port}", token_file=str(self.token_file),
                          artifacts_dir=str(standin_artifacts(self.tmp / "k3s-artifacts")))
        if lab["k3s"].get("addon_node") in keep:  # the node the add-ons run on, renamed with its VM
            lab["k3s"]["addon_node"] = keep[lab["k3s"]["addon_node"]]
        (self.hosts / f"{HOST}.yaml").write_text(yaml.safe_dump(lab, sort_keys=False))
        (self.hosts / "defaults.yaml").write_text((REPO / "hosts/defaults.yaml").read_text())
        # The hypervisor's key is known beforehand; the VMs' keys are recorded on first contact.
        self.known_vms.write_text(self.hv.known_hosts.read_text())

    @property
    def vms(self) -> tuple[str, str]:
        return self.server_vm, self.data_vm

    # -- the operator's commands --------------------------------------------------------------
    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "invoke", "--search-root", str(REPO), "-f", str(self.config), *args]

    def popen(self, *args: str, log: Path) -> subprocess.Popen[str]:
        """Started in the background, its output (both streams) in log."""
        with log.open("w") as out:
            return subprocess.Popen(self._argv(*args), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True)

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._argv(*args), cwd=REPO, capture_output=True, text=True, check=False,
                              timeout=WAIT_S)

    def forget_vm_keys(self) -> None:
        """After a teardown the guests come back with new host keys: what README says to do."""
        self.known_vms.write_text(self.hv.known_hosts.read_text())

    def newest_run(self) -> Path | None:
        runs = runs_of(self.runs, HOST)
        return runs[-1] if runs else None

    # -- what is there --------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Every file this lab's runs could have written on this machine (the VMs' disks included)."""
        roots = (self.tmp, Path("/var/log/libvirt/qemu"))
        return sorted(p for root in roots for p in root.rglob("*") if p.is_file() and not p.is_fifo())

    def images_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for path in sorted(self.images.rglob("*")):
            if path.is_dir():
                continue
            rel = str(path.relative_to(self.images))
            if path.suffix == ".qcow2":
                info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                                                 capture_output=True, text=True, check=True).stdout)
                state[rel] = (info["format"], info["virtual-size"], info.get("full-backing-filename"))
            else:
                state[rel] = sha(path)  # the seed ISOs are reproducible: same inputs, same bytes
        return state

    def domain_state(self, name: str) -> dict[str, Any]:
        root = ET.fromstring(virsh("dumpxml", name))  # noqa: S314 - our own libvirtd's answer
        tune = root.find("cputune")
        emulator = root.find("cputune/emulatorpin")
        numa = root.find("numatune/memory")
        return {
            "state": virsh("domstate", name).strip(),
            "autostart": "enable" in virsh("dominfo", name).split("Autostart:")[1].splitlines()[0],
            "vcpu": root.findtext("vcpu"), "memory": root.findtext("memory"),
            "vcpupin": sorted((p.get("vcpu"), p.get("cpuset")) for p in tune.iter("vcpupin")) if tune is not None
            else [],
            "emulatorpin": emulator.get("cpuset") if emulator is not None else None,
            "numatune": (numa.get("mode"), numa.get("nodeset")) if numa is not None else None,
            "disks": sorted(s.get("file", "") for s in root.iter("source") if s.get("file")),
        }

    def domains(self) -> list[str]:
        prefix = self.data_vm.split("-")[0]
        return sorted(n for n in virsh("list", "--all", "--name").split() if n.startswith(prefix))

    def vm_shell(self, name: str, command: str) -> str:
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_vms))  # the keys provision recorded: checked, not trusted anew
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", port=self.ssh_ports[name], username="root", key_filename=str(self.hv.key_file),
                       look_for_keys=False, allow_agent=False, timeout=20)
        try:
            _in, out, _err = client.exec_command(command, timeout=60)
            return str(out.read().decode(errors="replace"))
        finally:
            client.close()

    def cluster_state(self) -> dict[str, Any]:
        nodes = json.loads(self.vm_shell(self.server_vm, "k3s kubectl get nodes -o json"))["items"]
        state: dict[str, Any] = {
            "nodes": sorted((n["metadata"]["name"], sorted(f"{t['key']}={t.get('value', '')}:{t['effect']}"
                                                           for t in n["spec"].get("taints", [])))
                            for n in nodes)}
        for vm in self.vms:
            state[vm] = self.vm_shell(vm, "stat -c '%a %n' /etc/rancher/k3s/config.yaml; "
                                          "sha256sum /etc/rancher/k3s/config.yaml").split()
        return state

    def end_state(self) -> dict[str, Any]:
        sysctl = self.sysroot / "etc/sysctl.d"
        return {
            "domains": {name: self.domain_state(name) for name in self.domains()},
            "images": self.images_state(),
            "persisted": {str(p.relative_to(self.sysroot)): sha(p) for p in sorted(sysctl.glob("*"))},
            "cluster": self.cluster_state(),
            "token file": (self.token_file.read_text(), oct(self.token_file.stat().st_mode & 0o777)),
        }

    def leftovers(self) -> list[str]:
        """Temporary files of an interrupted write, here or in the VMs' config directory."""
        found = [str(p) for p in self.files() if any(m in p.name for m in TEMP_MARKS)]
        for vm in self.vms:
            found += [f"{vm}:{line}" for line in self.vm_shell(vm, "ls -a /etc/rancher/k3s").split()
                      if any(m in line for m in TEMP_MARKS)]
        return found


def remove_crashed_labs() -> list[str]:
    """Domains of earlier sessions that died before their teardown (their disks are gone with their
    tmp dirs): they would hold memory and CPU for nothing."""
    gone = []
    for name in virsh("list", "--all", "--name").split():
        if not re.fullmatch(r"rl[0-9a-f]{6}-(data|tasks|slm)", name):
            continue
        disks = re.findall(r"<source file='([^']+)'", virsh("dumpxml", name, check=False))
        if disks and not any(Path(d).exists() for d in disks):
            virsh("destroy", name, check=False)
            virsh("undefine", name, check=False)
            gone.append(name)
    return gone


def wait_for_line(lab: Lab, proc: subprocess.Popen[str], after: str | None, texts: tuple[str, ...]) -> int | None:
    """The index of the first of texts that the run started after `after` logs; None if it ended first."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        run = lab.newest_run()
        if run is not None and run.name != after and (run / "run.log").exists():
            log = (run / "run.log").read_text(errors="replace")
            found = [i for i, text in enumerate(texts) if text in log]
            if found:
                return found[-1]  # the step running now
        if proc.poll() is not None:
            return None
        time.sleep(0.01)
    raise AssertionError(f"gave up waiting for any of {texts}")
