"""Teardown: disks.owned (a read-only look first), vms.remove (stop and undefine) and disks.remove
(overlays and seed ISOs). Only files numa-k3s made, still the same files, are deleted (lib/ownership).

Both are destructive: the runner applies their plans only with --yes, and `invoke teardown` prints
the plan first. The base image is never deleted (the operator brought it and other VMs may share
it); the data VM's hot and cold images only with --include-data; a block device is never wiped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from lib import ownership
from lib.cloudinit import seed_files
from lib.facts import libvirt as libvirt_facts
from lib.facts.sysfs import section, split_sections
from lib.inventory.load import LoadedHost
from lib.inventory.model import VM
from lib.local import LocalToolError, build_seed_iso
from lib.options import HostInputs
from lib.reads import Answers
from lib.results import Check
from lib.shell import Command, Value, seq, sh
from lib.steps.base import Mode, Plan, Step, StepMismatch, Target
from lib.steps.images import disk_checks, disks_of, parse_image


def _domstate(vm: VM, uri: str) -> Command:
    """Prints the state or 'not defined'; fails when libvirt does not answer (never read as absent)."""
    return seq(libvirt_facts.domstate(uri, vm.name), libvirt_facts.PRINT_STATE)


class VmsRemove(Step[str]):
    name = "vms.remove"
    summary = "stop (destroy) and undefine each VM; its disks stay for disks.remove (--yes)"
    targets = "vms"
    destructive = True

    def facts_command(self, target: Target) -> Command:
        assert target.vm is not None
        return seq(_domstate(target.vm, target.loaded.host.libvirt_uri), why="is the domain defined")

    def parse(self, target: Target, answers: Answers) -> str:
        return answers.stdout().strip() or "not defined"

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
    # Real paths, identities, ownership records and probes of every path teardown considers.
    survey: ownership.Survey | None = None
    seed_sha256: str = ""  # the seed the tool builds from the inventory now: what adoption compares


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


def probes(vm: VM) -> list[tuple[str, ownership.Probe]]:
    """Every path teardown may delete, with what tells whether an unrecorded one is the tool's work."""
    images: list[tuple[str, ownership.Probe]] = [(d.path, "image") for d in disks_of(vm) if not d.device]
    return [*images, (vm.cloud_init_iso_path, "seed")]


def adoptable(vm: VM, path: str, seen: ownership.Seen, seed_sha256: str) -> str | None:
    """Why a file with no ownership record is what the tool would have made there (None: it is not)."""
    if path == vm.cloud_init_iso_path:
        sha, _, label = seen.probe.partition("\n")
        if seed_sha256 and sha.strip() == seed_sha256 and label.strip() == "cidata":
            return "a seed ISO (volume id cidata) with this VM's content"
        return None
    spec = next(d for d in disks_of(vm) if d.path == path)
    info = parse_image("present\n" + seen.probe)
    if all(c.ok for c in disk_checks(spec, info)):
        return f"{'an overlay' if spec.backing else 'a data disk'} with the spec's format, backing file and size"
    return None


def judged(vm: VM, facts: DiskFacts, include_data: bool) -> list[tuple[str, ownership.Seen, ownership.Verdict]]:
    delete, _keep = removable(vm, include_data)
    assert facts.survey is not None
    out = []
    for path in delete:
        seen = facts.survey.seen[path]
        out.append((path, seen, ownership.judge(seen, facts.survey,
                                                adoptable=adoptable(vm, path, seen, facts.seed_sha256))))
    return out


def refused_of(vm: VM, verdicts: list[tuple[str, ownership.Seen, ownership.Verdict]], step: str,
               host: str) -> StepMismatch | None:
    bad = [(p, v) for p, _s, v in verdicts if v.action == "refuse"]
    if not bad:
        return None
    checks = [Check(f"may delete {p}", "a file numa-k3s made, unchanged", v.why, False) for p, v in bad]
    lines = "; ".join(f"{p}: {v.why}: {v.fix}" for p, v in bad)
    return StepMismatch(checks, exit_code=3, message=(
        f"{step} refused to delete {vm.name}'s {lines}; nothing was changed (teardown stops here: "
        f"invoke teardown --host={host} shows the plan again)"))


class _DiskSurvey(Step[DiskFacts]):
    """The read disks.owned and disks.remove share: the domain's state and every path's ownership."""

    def host_inputs(self, loaded: LoadedHost, mode: Mode) -> HostInputs:
        # The seeds the tool would build now: an unrecorded seed is adopted only with this content.
        if mode == "offline":
            return HostInputs()
        try:
            return HostInputs(seed_sha256={vm.name: hashlib.sha256(build_seed_iso(seed_files(vm))).hexdigest()
                                           for vm in loaded.host.vms})
        except LocalToolError:
            return HostInputs()  # no xorriso here: a seed without a record is then refused, never guessed at

    def facts_command(self, target: Target) -> Command:
        assert target.vm is not None
        vm, host = target.vm, target.loaded.host
        return seq(section("domain"), _domstate(vm, host.libvirt_uri),
                   ownership.survey_command(host.sysroot, host.storage_roots, [vm.base_image_path], probes(vm)),
                   section("present"), _present(removable(vm, True)), timeout=90,
                   why="which disks exist, their real paths and ownership records")

    def parse(self, target: Target, answers: Answers) -> DiskFacts:
        assert target.vm is not None
        out = answers.stdout()
        parts = split_sections(out)
        return DiskFacts(parts.get("domain", "").strip() or "not defined", frozenset(parts.get("present", "").split()),
                         ownership.parse_survey(out, probes(target.vm)),
                         target.inputs.seed_sha256.get(target.vm.name, ""))


def _present(lists: tuple[list[str], list[str]]) -> Command:
    paths = sorted(set(lists[0] + lists[1]))
    checks = " ".join(f"{{p{i}}}" for i in range(len(paths)))
    values: dict[str, Any] = {f"p{i}": p for i, p in enumerate(paths)}
    return sh(f"for p in {checks}; do if [ -e \"$p\" ]; then echo \"$p\"; fi; done", **values)


class DisksOwned(_DiskSurvey):
    """Teardown's first look, before anything is stopped: every file it would delete is the tool's."""

    name = "disks.owned"
    summary = "every file teardown would delete is one numa-k3s made and still the same file (read-only)"
    targets = "vms"
    mismatch_exit = 3

    def plan(self, target: Target, facts: DiskFacts | None) -> Plan:
        return Plan(reason="read-only check")

    def verify(self, target: Target, facts: DiskFacts) -> list[Check]:
        assert target.vm is not None
        checks = []
        for path, _seen, v in judged(target.vm, facts, target.flags.include_data):
            found = {"owned": v.why, "adopt": f"adoptable: {v.why}", "absent": "absent"}.get(v.action, v.why)
            checks.append(Check(f"may delete {path}", "a file numa-k3s made, unchanged", found, v.action != "refuse"))
        return checks


class DisksRemove(_DiskSurvey):
    name = "disks.remove"
    summary = "delete each VM's overlay and seed ISO; data disks only with --include-data; never the base (--yes)"
    targets = "vms"
    destructive = True

    def plan(self, target: Target, facts: DiskFacts | None) -> Plan:
        assert target.vm is not None
        vm = target.vm
        include_data = target.flags.include_data
        delete, _keep = removable(vm, include_data)
        after_vms_remove: tuple[str, ...] = ()
        if facts is not None and facts.domain != "not defined" and target.mode == "plan":
            # Planning the whole teardown: vms.remove runs first and undefines the domain.
            after_vms_remove = (f"domain {vm.name} is {facts.domain}: these are deleted only after vms.remove",)
        elif facts is not None and facts.domain != "not defined":
            raise StepMismatch([Check(f"domain {vm.name}", "not defined", facts.domain, False)], exit_code=4,
                               message=f"domain {vm.name} still uses its disks; remove it first: "
                                       f"invoke step vms.remove --host={target.loaded.name} --yes")
        if facts is None or facts.survey is None:  # offline: what would go if it is all the tool's
            if not delete:
                return Plan(reason=f"nothing of {vm.name} left to delete")
            rm = sh("rm -f -- {paths}", paths=list[Value](delete), why=f"delete {vm.name}'s disks")
            return Plan((rm,), "delete " + ", ".join(delete) + " (each only if numa-k3s made it)")
        verdicts = judged(vm, facts, include_data)
        refused = refused_of(vm, verdicts, self.name, target.loaded.name)
        if refused:
            raise refused
        sysroot = target.loaded.host.sysroot
        gone = [(p, s, v) for p, s, v in verdicts if v.action in ("owned", "adopt")]
        if not gone:
            return Plan(reason=f"nothing of {vm.name} left to delete")
        # Each by its real path, only while it is still the file judged here (lib/ownership.remove).
        actions = tuple(ownership.remove(sysroot, s, why=f"delete {p}") for p, s, _v in gone)
        shown = ", ".join(p + (f" (adopted: {v.why}, made before ownership records)" if v.action == "adopt" else "")
                          for p, _s, v in gone)
        return Plan(actions, "delete " + shown, warnings=after_vms_remove)

    def verify(self, target: Target, facts: DiskFacts) -> list[Check]:
        assert target.vm is not None
        delete, keep = removable(target.vm, target.flags.include_data)
        checks = [Check(f"deleted {p}", "absent", "present" if p in facts.present else "absent",
                        p not in facts.present) for p in delete]
        # What was kept is shown too, so the report proves the base and the data disks survived.
        checks += [Check.evidence(f"kept {p}", "present" if p in facts.present else "absent", "untouched")
                   for p in keep]
        return checks
