"""preflight.access: SSH works, root or passwordless sudo, and every tool the later steps run is there:
on the hypervisor the commands its steps call, on this machine (the control node) xorriso, which
builds the seed ISOs. Each missing tool is named with the Debian package that provides it. A block
device given to a VM must be on block_devices and not used by the hypervisor (lib/facts/blockdev).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace

from lib.facts.blockdev import BlockFacts, blockdev_command, in_use, parse_blockdev
from lib.inventory.load import LoadedHost
from lib.inventory.model import Host
from lib.options import HostInputs
from lib.reads import Answers
from lib.results import Check
from lib.shell import Command, seq, sh
from lib.steps.base import Mode, Plan, Step, Target
from lib.sudo import sudo_advice

# tool -> the Debian package that provides it: what the hypervisor's steps run.
HYPERVISOR_TOOLS = {
    "virsh": "libvirt-clients",           # every vms.* step, teardown
    "virt-install": "virtinst",           # vms.define writes the domain XML
    "virt-ssh-helper": "libvirt-daemon",  # the libvirt API over SSH (vms.start's live pins)
    "qemu-img": "qemu-utils",             # images.clone
    "sha256sum": "coreutils",             # cloudinit.build compares the seed
    "numastat": "numactl",                # numa.check, monitor
}
# Run on the operator's machine.
LOCAL_TOOLS = {"xorriso": "xorriso"}  # cloudinit.build: reproducible seed ISOs
@dataclass(frozen=True)
class AccessFacts:
    user: str
    sudo: str  # "root", "yes" (passwordless), "password" (sudo asks for one), "missing" (no sudo)
    tools: dict[str, str]  # tool -> path, "" when missing
    blocks: BlockFacts | None = None  # what the hypervisor mounts (only read when a VM has a device)


def vm_devices(host: Host) -> list[tuple[str, str]]:
    """(VM name, device) for every block device the inventory gives a VM."""
    return [(vm.name, disk.device) for vm in host.vms for disk in vm.disks if disk.device]


def device_checks(host: Host, facts: BlockFacts) -> list[Check]:
    """A VM's block device must be on block_devices and unused by the hypervisor: nothing mounted on it,
    on its partitions, or on an LVM volume or RAID array built on it; no swap."""
    checks = []
    allowed = set(host.block_devices)
    for vm, dev in vm_devices(host):
        name = facts.devices.get(dev, "")
        if dev not in allowed:
            found = (f"{dev} is not on block_devices ({', '.join(host.block_devices) or 'empty'}): add it there "
                     "only if the hypervisor does not use it")
            checks.append(Check(f"{vm} device {dev}", "on block_devices, unused by the hypervisor", found, False))
            continue
        why = in_use(facts, name) if name else "its kernel name cannot be read"
        found = f"{dev} ({name}): {why}; never given to a VM" if why else f"{dev} ({name}): not in use"
        checks.append(Check(f"{vm} device {dev}", "on block_devices, unused by the hypervisor", found, not why))
    return checks


def parse_access(stdout: str) -> AccessFacts:
    values: dict[str, str] = {}
    tools: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        if key.startswith("tool:"):
            tools[key[5:]] = value
        else:
            values[key] = value
    return AccessFacts(values.get("user", "?"), values.get("sudo", "missing"), tools)


def parse_preflight(stdout: str) -> AccessFacts:
    """The access lines, then (when read) the block device sections."""
    access, mark, rest = stdout.partition("\n@@blk_")
    facts = parse_access(access)
    return replace(facts, blocks=parse_blockdev(mark.lstrip("\n") + rest)) if mark else facts


def sudo_check(host: str, facts: AccessFacts) -> Check:
    if facts.sudo in ("root", "yes"):
        return Check("root or passwordless sudo", "yes", "root" if facts.sudo == "root" else f"sudo -n as {facts.user}",
                     True)
    return Check("root or passwordless sudo", "yes", sudo_advice(host, facts.user, facts.sudo), False)


def tool_checks(where: str, wanted: Mapping[str, str], found: Mapping[str, str]) -> list[Check]:
    checks = []
    for tool, package in wanted.items():
        path = found.get(tool, "")
        checks.append(Check(f"{where} tool {tool}", "installed",
                            path or f"missing (apt-get install {package})", bool(path)))
    return checks


class PreflightAccess(Step[AccessFacts]):
    name = "preflight.access"
    summary = "ssh, root or passwordless sudo, the tools the steps run (hypervisor + local xorriso; read-only)"
    mismatch_exit = 3

    def host_inputs(self, loaded: LoadedHost, mode: Mode) -> HostInputs:
        return HostInputs(local_tools={tool: shutil.which(tool) or "" for tool in LOCAL_TOOLS})

    def facts_command(self, target: Target) -> Command:
        access = self.access_command()
        host = target.loaded.host
        devices = sorted({dev for _vm, dev in vm_devices(host)})
        if not devices:
            return access
        return seq(access, blockdev_command(host.sysroot, devices), sudo=False, timeout=60,
                   why="check access and tools; what the hypervisor mounts")

    @staticmethod
    def access_command() -> Command:
        # virt-ssh-helper lives in /usr/bin on Debian but libexec elsewhere: look there too.
        return sh(
            'echo "user=$(id -un)"; '
            'if [ "$(id -u)" = 0 ]; then echo sudo=root; elif ! command -v sudo >/dev/null 2>&1; then '
            'echo sudo=missing; elif sudo -n true 2>/dev/null; then echo sudo=yes; else echo sudo=password; fi; '
            'for t in {tools}; do p=$(command -v "$t" || ls /usr/libexec/"$t" /usr/lib/libvirt/"$t" 2>/dev/null '
            '| head -n1); echo "tool:$t=$p"; done',
            tools=list(HYPERVISOR_TOOLS), sudo=False, timeout=30, why="check access and tools")

    def parse(self, target: Target, answers: Answers) -> AccessFacts:
        return parse_preflight(answers.stdout())

    def plan(self, target: Target, facts: object | None) -> Plan:
        return Plan(reason="read-only check")

    def verify(self, target: Target, facts: AccessFacts) -> list[Check]:
        checks = [sudo_check(target.name, facts)]
        checks += tool_checks("hypervisor", HYPERVISOR_TOOLS, facts.tools)
        checks += tool_checks("control node", LOCAL_TOOLS, target.inputs.local_tools)
        if facts.blocks is not None:
            checks += device_checks(target.loaded.host, facts.blocks)
        return checks
