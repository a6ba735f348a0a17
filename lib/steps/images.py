"""images.clone: each VM's qcow2 overlay on the base image, and the data VM's hot and cold disks.

Never overwrites, resizes or "fixes" an image: a disk that exists with another format, backing
file or size is drift (exit 5), left exactly as it is. A missing or non-qcow2 base image stops the
step before anything is created. Facts come from `qemu-img info --output=json -U` (-U: readable
while a VM runs), all disks of a VM in one command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from lib import ownership
from lib.facts.sysfs import section, split_sections
from lib.inventory.model import VM
from lib.reads import Answers
from lib.results import Check
from lib.shell import Command, seq, sh
from lib.steps.base import Plan, Step, StepMismatch, Target

GIB = 1024**3


@dataclass(frozen=True)
class DiskSpec:
    role: str  # "os" or the extra disk's name (hot, cold)
    path: str
    size_gb: int
    backing: str | None  # the base image for the OS overlay
    device: str | None = None  # a block device the inventory names instead of an image
    cluster: int | None = None  # qcow2 cluster size in bytes; None: qemu-img's default (the OS overlay)


@dataclass(frozen=True)
class ImageInfo:
    exists: bool
    format: str = ""
    virtual_size: int = 0
    backing: str = ""
    backing_format: str = ""
    block_device: bool = False
    error: str = ""
    cluster: int = 0


def disks_of(vm: VM) -> list[DiskSpec]:
    disks = [DiskSpec("os", vm.disk_path, vm.disk_size_gb, vm.base_image_path)]
    disks += [DiskSpec(d.name, d.device or d.path, d.size_gb, None, d.device, d.cluster_bytes) for d in vm.disks]
    return disks


def images_command(vm: VM) -> Command:
    paths = [vm.base_image_path] + [d.path for d in disks_of(vm)]
    parts = []
    for i, _ in enumerate(paths):
        # Only a regular file is opened: a FIFO there would hang qemu-img (lib/ownership refuses it).
        parts.append(f"{section(f'd{i}')}; if [ -b {{p{i}}} ]; then echo block; elif [ -f {{p{i}}} ]; then "
                     f"echo present; qemu-img info --output=json -U {{p{i}}} 2>&1; elif [ -e {{p{i}}} ]; then "
                     "echo present; echo not a regular file; fi")
    values: dict[str, Any] = {f"p{i}": p for i, p in enumerate(paths)}  # one quoted word per path
    return sh("; ".join(parts) + "; true", timeout=60, why="read image formats, backing files and sizes", **values)


def parse_image(text: str) -> ImageInfo:
    head, _, rest = text.partition("\n")
    if head == "block":
        return ImageInfo(True, block_device=True)
    if head != "present":
        return ImageInfo(False)
    try:
        data = json.loads(rest)
    except json.JSONDecodeError:
        return ImageInfo(True, error=rest.strip().splitlines()[-1] if rest.strip() else "unreadable")
    return ImageInfo(True, data.get("format", ""), int(data.get("virtual-size", 0)),
                     data.get("full-backing-filename") or data.get("backing-filename", ""),
                     data.get("backing-filename-format", ""), cluster=int(data.get("cluster-size", 0)))


@dataclass(frozen=True)
class ImagesFacts:
    base: ImageInfo
    disks: dict[str, ImageInfo]  # path -> info
    # Real paths, identities and ownership records of the image disks (None: not read)
    survey: ownership.Survey | None = None


def image_paths(vm: VM) -> list[tuple[str, ownership.Probe]]:
    """The paths the tool creates for a VM (never a block device): each judged by lib/ownership."""
    return [(d.path, "") for d in disks_of(vm) if not d.device]


def survey_command(vm: VM, roots: tuple[str, ...], sysroot: str) -> Command:
    return ownership.survey_command(sysroot, roots, [vm.base_image_path], image_paths(vm))


def parse_images(vm: VM, stdout: str) -> ImagesFacts:
    parts = split_sections(stdout)
    disks = disks_of(vm)
    return ImagesFacts(parse_image(parts.get("d0", "")),
                       {d.path: parse_image(parts.get(f"d{i + 1}", "")) for i, d in enumerate(disks)})


def _size(n: int) -> str:
    return f"{n / GIB:g} GiB"


def _kib(n: int) -> str:
    return f"{n // 1024} KiB" if n else "unknown"


def disk_checks(disk: DiskSpec, info: ImageInfo) -> list[Check]:
    where = f"{disk.role} disk {disk.path}"
    if not info.exists:
        return [Check(where, "exists", "missing", False)]
    if disk.device:
        return [Check(where, "block device", "block device" if info.block_device else "not a block device",
                      info.block_device)]
    if info.error:
        return [Check(where, "a readable qcow2 image", info.error, False)]
    checks = [Check(f"{where} format", "qcow2", info.format, info.format == "qcow2"),
              Check(f"{where} virtual size", _size(disk.size_gb * GIB), _size(info.virtual_size),
                    info.virtual_size == disk.size_gb * GIB)]
    if disk.cluster:
        checks.append(Check(f"{where} cluster size", _kib(disk.cluster), _kib(info.cluster),
                            info.cluster == disk.cluster))
    want_backing = disk.backing or "(none)"
    checks.append(Check(f"{where} backing file", want_backing, info.backing or "(none)",
                        (info.backing or None) == disk.backing))
    return checks


def base_checks(vm: VM, base: ImageInfo) -> list[Check]:
    found = ("missing" if not base.exists else base.error or base.format)
    return [Check(f"base image {vm.base_image_path}", "qcow2", found, base.exists and base.format == "qcow2")]


def kind_of(disk: DiskSpec) -> str:
    return "overlay" if disk.backing else "data-disk"


def refusal(vm: VM, refused: list[tuple[str, ownership.Verdict]], step: str) -> StepMismatch:
    """Exit 3: the host holds something at an inventory path that is not the tool's to touch."""
    checks = [Check(f"{path}", "absent, or a file numa-k3s made", v.why, False) for path, v in refused]
    lines = "; ".join(f"{path}: {v.why}: {v.fix}" for path, v in refused)
    return StepMismatch(checks, exit_code=3, message=f"{step} refused {vm.name}'s {lines}; nothing was changed")


def _device_row(disk: DiskSpec, *, online: bool, drift: list[Check], unknown: list[str]) -> None:
    if online:
        drift.append(Check(f"{disk.role} disk {disk.path}", "block device", "missing", False))
    else:  # offline: no facts to compare
        unknown.append(f"{disk.role} disk {disk.path}: a block device, unknown offline (read when the host is)")


def plan_images(vm: VM, facts: ImagesFacts | None, sysroot: str = "/", run: str = "") -> Plan:
    if facts is not None:
        bad_base = [c for c in base_checks(vm, facts.base) if not c.ok]
        if bad_base:
            raise StepMismatch(bad_base, exit_code=4, message=(
                f"the base image {vm.base_image_path} is {bad_base[0].found}; put a qcow2 base image there "
                "first: nothing was created"))
    actions: list[Command] = []
    created: list[str] = []
    adopted: list[str] = []
    drift: list[Check] = []
    unknown: list[str] = []
    refused: list[tuple[str, ownership.Verdict]] = []
    for disk in disks_of(vm):
        info = facts.disks.get(disk.path) if facts else None
        seen = facts.survey.seen.get(disk.path) if facts and facts.survey and not disk.device else None
        if seen is not None and facts is not None and facts.survey is not None:
            matches = None
            if info is not None and info.exists and all(c.ok for c in disk_checks(disk, info)):
                matches = f"{kind_of(disk)} with the spec's format, backing file and size"
            verdict = ownership.judge(seen, facts.survey, adoptable=matches)
            if verdict.action == "refuse" and not verdict.unrecorded:
                refused.append((disk.path, verdict))  # an unrecorded image unlike the spec's is drift, below
                continue
            if verdict.action == "adopt":
                # Made by a version before ownership records: recorded now, as it is.
                actions.append(ownership.record(sysroot, disk.path, kind_of(disk), vm.name, run,
                                                why=f"adopt the {disk.role} disk"))
                adopted.append(f"{disk.role} {disk.path} ({verdict.why}, made before ownership records)")
                continue
        if info is not None and info.exists:
            drift += [c for c in disk_checks(disk, info) if not c.ok]
            continue
        if disk.device:  # a device is never created: missing is drift, and offline it is unknown
            _device_row(disk, online=facts is not None, drift=drift, unknown=unknown)
            continue
        backing = "-b {base} -F qcow2 " if disk.backing else ""
        opts = f"-o cluster_size={disk.cluster} " if disk.cluster else ""
        create = f"qemu-img create -q -f qcow2 {opts}{backing}"
        # Created under a temporary name, then hard-linked to its own: an interrupted create never
        # leaves a partial image at the path, and `ln` (unlike mv) refuses to replace a file that
        # appeared since the facts were read. The guard before says so before any work.
        # Recorded as the tool's own at once (lib/ownership): teardown deletes only what is recorded.
        actions.append(sh(
            "mkdir -p {dir} || exit 1; if [ -e {path} ]; then echo {path} exists, not overwriting >&2; exit 17; fi; "
            f"t={{path}}.creating.$$; if {create}\"$t\" {{size}} && ln \"$t\" {{path}}; "
            f"then rc=0; rp={{path}}; {ownership.record_command()} || rc=1; "
            "elif [ -e {path} ]; then echo {path} appeared meanwhile, not overwriting >&2; rc=17; "
            'else rc=1; fi; rm -f "$t"; exit $rc',
            dir=disk.path.rsplit("/", 1)[0] or "/", path=disk.path, base=disk.backing or "",
            size=f"{disk.size_gb}G", why=f"create the {disk.role} disk",
            **ownership.record_values(sysroot, kind_of(disk), vm.name, run)))
        extra = ", overlay on the base" if disk.backing else f", {_kib(disk.cluster)} clusters" if disk.cluster else ""
        created.append(f"{disk.role} {disk.path} ({disk.size_gb} GiB{extra})")
    if refused:
        raise refusal(vm, refused, "images.clone")
    if drift:
        raise StepMismatch(drift, exit_code=5, message=(
            "existing disk(s) differ from the spec; they are never overwritten or resized: move them aside "
            "or fix the inventory"))
    if not actions:
        return Plan(reason="every disk exists with the spec's format, backing file and size", warnings=tuple(unknown))
    return Plan(tuple(actions), "; ".join(x for x in ("create " + "; ".join(created) if created else "",
                                                     "adopt " + "; ".join(adopted) if adopted else "") if x),
                tuple(unknown))


def ownership_checks(vm: VM, survey: ownership.Survey) -> list[Check]:
    """Each image disk the tool made is recorded as its own, the record matching the file there."""
    checks = []
    for path, _probe in image_paths(vm):
        seen = survey.seen.get(path)
        if seen is None or not seen.exists:
            continue  # disk_checks says it is missing
        verdict = ownership.judge(seen, survey)
        checks.append(Check(f"{path} owned by numa-k3s", "recorded, same file",
                            verdict.why if verdict.action == "owned" else f"not: {verdict.why}",
                            verdict.action == "owned"))
    return checks


class ImagesClone(Step[ImagesFacts]):
    name = "images.clone"
    summary = "qcow2 overlays on the base image, data VM hot and cold disks; never overwrites"
    targets = "vms"

    def facts_command(self, target: Target) -> Command:
        assert target.vm is not None
        host = target.loaded.host
        return seq(images_command(target.vm), survey_command(target.vm, host.storage_roots, host.sysroot),
                   timeout=90, why="read images, their real paths and ownership records")

    def parse(self, target: Target, answers: Answers) -> ImagesFacts:
        assert target.vm is not None
        out = answers.stdout()
        facts = parse_images(target.vm, out)
        return replace(facts, survey=ownership.parse_survey(out, image_paths(target.vm)))

    def plan(self, target: Target, facts: ImagesFacts | None) -> Plan:
        assert target.vm is not None
        return plan_images(target.vm, facts, target.loaded.host.sysroot, target.run_id)

    def verify(self, target: Target, facts: ImagesFacts) -> list[Check]:
        assert target.vm is not None
        checks = base_checks(target.vm, facts.base)
        for disk in disks_of(target.vm):
            checks += disk_checks(disk, facts.disks.get(disk.path, ImageInfo(False)))
        return checks + (ownership_checks(target.vm, facts.survey) if facts.survey else [])
