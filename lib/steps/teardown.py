"""Teardown: vms.remove (stop and undefine) and disks.remove (overlays and seed ISOs).

Both are destructive: the runner applies their plans only with --yes, and `invoke teardown` prints
the plan first. The base image is never deleted (the operator brought it and other VMs may share
it); the data VM's hot and cold images only with --include-data; a block device is never wiped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lib.facts import libvirt as libvirt_facts
from lib.facts.sysfs import section, split_sections
from lib.inventory.model import VM
from lib.results import Check
from lib.shell import Command, Value, seq, sh
from lib.steps.base import Plan, Step, StepMismatch, Target
from lib.transport import CmdResult


def _domstate(vm: VM, uri: str) -> Command:
    """Prints the state or 'not defined'; fails when libvirt does not answer (never read as absent)."""
    return seq(libvirt_facts.domstate(uri, vm.name), libvirt_facts.PRINT_STATE)


class VmsRemove(Step):
    name = "vms.remove"
    summary = "stop (destroy) and undefine each VM; its disks stay for disks.remove (--yes)"
    targets = "vms"
    destructive = True

    def facts_command(self, target: Target) -> Command:
        assert target.vm is not None
        return seq(_domstate(target.vm, target.loaded.host.libvirt_uri), why="is the domain defined")

    def parse(self, target: Target, result: CmdResult | None) -> str:
        return (result.stdout.strip() if result else "") or "not defined"

    def plan(self, target: Target, facts: str | None) -> Plan:
        assert target.vm is not None
        vm, uri = target.vm, target.loaded.host.libvirt_uri
        destroy = sh("virsh -c {uri} destroy {name}", uri=uri, name=vm.name, why=f"stop {vm.name} (power off)")
        # --managed-save: a saved state would otherwise block undefine; disks are never touched here.
        undefine = sh("virsh -c {uri} undefine --managed-save {name}", uri=uri, name=vm.name,
                      why=f"undefine {vm.name}")
        if facts == "not defined":
            return Plan(reason=f"domain {vm.name} is not defined")
        if facts is None or facts != "shut off":
            return Plan((destroy, undefine), f"domain {vm.name} ({facts or 'state unknown'}): power off, undefine")
        return Plan((undefine,), f"domain {vm.name} (shut off): undefine")

    def verify(self, target: Target, facts: str) -> list[Check]:
        assert target.vm is not None
        return [Check(f"domain {target.vm.name}", "not defined", facts, facts == "not defined")]


@dataclass(frozen=True)
class DiskFacts:
    domain: str
    present: frozenset[str]


def removable(vm: VM, include_data: bool) -> tuple[list[str], list[str]]:
    """(paths to delete, paths kept and why-kept labels): pure, so the plan says exactly what goes."""
    delete = [vm.disk_path, vm.cloud_init_iso_path]
    keep = [vm.base_image_path]
    for disk in vm.disks:
        if disk.device:
            keep.append(disk.device)  # a block device is never wiped by this tool
        elif include_data:
            delete.append(disk.path)
        else:
            keep.append(disk.path)
    return delete, keep


class DisksRemove(Step):
    name = "disks.remove"
    summary = "delete each VM's overlay and seed ISO; data disks only with --include-data; never the base (--yes)"
    targets = "vms"
    destructive = True

    def facts_command(self, target: Target) -> Command:
        assert target.vm is not None
        vm = target.vm
        delete, keep = removable(vm, True)
        paths = sorted(set(delete + keep))
        checks = " ".join(f"{{p{i}}}" for i in range(len(paths)))
        values: dict[str, Any] = {f"p{i}": p for i, p in enumerate(paths)}
        present = sh(f"for p in {checks}; do if [ -e \"$p\" ]; then echo \"$p\"; fi; done", **values)
        return seq(section("domain"), _domstate(vm, target.loaded.host.libvirt_uri), section("present"), present,
                   why="which disks exist")

    def parse(self, target: Target, result: CmdResult | None) -> DiskFacts:
        parts = split_sections(result.stdout if result else "")
        return DiskFacts(parts.get("domain", "").strip() or "not defined",
                         frozenset(parts.get("present", "").split()))

    def plan(self, target: Target, facts: DiskFacts | None) -> Plan:
        assert target.vm is not None
        vm = target.vm
        delete, _keep = removable(vm, bool(target.options.get("include_data")))
        after_vms_remove: tuple[str, ...] = ()
        if facts is not None and facts.domain != "not defined" and target.mode == "plan":
            # Planning the whole teardown: vms.remove runs first and undefines the domain.
            after_vms_remove = (f"domain {vm.name} is {facts.domain}: these are deleted only after vms.remove",)
        elif facts is not None and facts.domain != "not defined":
            raise StepMismatch([Check(f"domain {vm.name}", "not defined", facts.domain, False)], exit_code=4,
                               message=f"domain {vm.name} still uses its disks; remove it first: "
                                       f"invoke step vms.remove --host={target.loaded.name} --yes")
        present = [p for p in delete if facts is None or p in facts.present]
        if not present:
            return Plan(reason=f"nothing of {vm.name} left to delete")
        rm = sh("rm -f -- {paths}", paths=list[Value](present), why=f"delete {vm.name}'s disks")
        return Plan((rm,), "delete " + ", ".join(present), warnings=after_vms_remove)

    def verify(self, target: Target, facts: DiskFacts) -> list[Check]:
        assert target.vm is not None
        delete, keep = removable(target.vm, bool(target.options.get("include_data")))
        checks = [Check(f"deleted {p}", "absent", "present" if p in facts.present else "absent",
                        p not in facts.present) for p in delete]
        # What was kept is shown too, so the report proves the base and the data disks survived.
        checks += [Check.evidence(f"kept {p}", "present" if p in facts.present else "absent", "untouched")
                   for p in keep]
        return checks
