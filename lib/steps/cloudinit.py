"""cloudinit.build: a NoCloud seed ISO per VM at the spec's cloud_init_iso_path, checked by content hash.

The seed files are rendered purely (lib/cloudinit.py) and the ISO is built on this machine with
fixed timestamps (lib/local.build_seed_iso), so the same inventory always gives the same bytes:
the hypervisor's file is compared by sha256, and a seed is uploaded only when it differs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import yaml

from lib import ownership
from lib.cloudinit import seed_files
from lib.facts.sysfs import section, split_sections
from lib.inventory.model import VM
from lib.local import build_seed_iso, read_seed_iso
from lib.reads import FACTS, Answers, Fetch, Reads
from lib.results import Check
from lib.shell import Command, FileBody, seq, sh
from lib.steps.base import Plan, Step, StepMismatch, Target, Upload

# The primary volume descriptor starts at sector 16 (byte 32768); its volume identifier is at +40.
_VOLUME_ID = "dd if={p} bs=1 skip=32808 count=32 2>/dev/null"


@dataclass(frozen=True)
class SeedFacts:
    iso: bytes = field(repr=False)  # built here from the inventory
    sha256: str
    remote_sha256: str  # "" when the hypervisor has no file there
    remote_label: str
    remote_files: dict[str, str] | None = None  # the host's seed files, read for a plan's diff only
    running: bool = False  # the VM's QEMU is up, with the seed's old file open as its CD-ROM
    survey: ownership.Survey | None = None  # the seed path's real path, identity and ownership record


def seed_facts_command(vm: VM, uri: str) -> Command:
    # Only a regular file is read: a FIFO there would hang the read (lib/ownership refuses it).
    return sh(f"{section('sha')}; [ -f {{p}} ] && sha256sum < {{p}} 2>/dev/null | cut -d' ' -f1; {section('label')}; "
              f"[ -f {{p}} ] && {_VOLUME_ID}; echo; {section('state')}; "
              "virsh -c {uri} domstate {name} 2>/dev/null; true",
              p=vm.cloud_init_iso_path, uri=uri, name=vm.name, timeout=60, why="hash the seed ISO; is its VM running")


def parse_seed(iso: bytes, stdout: str) -> SeedFacts:
    parts = split_sections(stdout)
    return SeedFacts(iso, hashlib.sha256(iso).hexdigest(), parts.get("sha", "").strip(),
                     parts.get("label", "").strip(), running=parts.get("state", "").strip() == "running")


def media_command(vm: VM, uri: str) -> Command:
    """The running QEMU still reads the old seed: the upload renames a new file into place, and the
    CD-ROM keeps the old inode open, across a guest reboot too. Ejecting and inserting makes QEMU open
    the path again (`change-media --update` to the same path keeps the old file: measured), so the next
    boot (a reboot in the guest, or virsh reboot) reads the new seed; cloud-init reads it only at boot."""
    # domblklist --details: "file cdrom sda /path"; `set --` splits it without any awk braces.
    return sh("set -- $(virsh -c {uri} domblklist {name} --details | awk -v p={p} '$2 == \"cdrom\" && $4 == p'); "
              'if [ -z "$3" ]; then echo "no CD-ROM of "{name}" holds "{p} >&2; exit 1; fi; '
              'virsh -c {uri} change-media {name} "$3" --eject --live --force >/dev/null && '
              'virsh -c {uri} change-media {name} "$3" --insert --source {p} --live >/dev/null',
              uri=uri, name=vm.name, p=vm.cloud_init_iso_path, timeout=60,
              why=f"{vm.name}'s CD-ROM onto the new seed (read at its next boot)")


def seed_paths(vm: VM) -> list[tuple[str, ownership.Probe]]:
    return [(vm.cloud_init_iso_path, "")]


def judged_real(facts: SeedFacts, vm: VM) -> str:
    return facts.survey.seen[vm.cloud_init_iso_path].real if facts.survey else vm.cloud_init_iso_path


def seed_verdict(vm: VM, facts: SeedFacts) -> tuple[ownership.Seen, ownership.Verdict] | None:
    """May the upload replace what is at the seed path? A file the tool did not make never is."""
    if facts.survey is None:
        return None
    seen = facts.survey.seen[vm.cloud_init_iso_path]
    same = facts.remote_label == "cidata" and facts.remote_sha256 == facts.sha256
    verdict = ownership.judge(seen, facts.survey, adoptable="a seed ISO (volume id cidata) with this VM's content"
                              if same else None)
    if verdict.action == "refuse":
        raise StepMismatch([Check(vm.cloud_init_iso_path, "absent, or a seed ISO numa-k3s made", verdict.why, False)],
                           exit_code=3, message=f"cloudinit.build refused {vm.name}'s seed path "
                                                f"{vm.cloud_init_iso_path}: {verdict.why}: {verdict.fix}; "
                                                "nothing was changed")
    return seen, verdict


def plan_seed(vm: VM, facts: SeedFacts | None, uri: str = "qemu:///system", sysroot: str = "/",
              run: str = "") -> Plan:
    judged = seed_verdict(vm, facts) if facts is not None else None
    record = ownership.record(sysroot, judged[0].real if judged else vm.cloud_init_iso_path, "seed", vm.name, run,
                              why="record the seed ISO as numa-k3s's own")
    if facts is not None and facts.remote_sha256 == facts.sha256:
        if judged and judged[1].action == "adopt":
            return Plan((record,), f"adopt the seed ISO at {vm.cloud_init_iso_path} ({judged[1].why}, made before "
                                   "ownership records)")
        return Plan(reason=f"seed ISO at {vm.cloud_init_iso_path} already has the spec's content")
    iso = facts.iso if facts else b""
    what = f"seed ISO (sha256 {facts.sha256[:12]})" if facts else "seed ISO (built at apply time)"
    why = "missing" if facts is None or not facts.remote_sha256 else "content differs"
    # A seed that was there before is already read by a VM that may be running: cloud-init looks at
    # it only at boot, and only a new instance-id makes it apply the per-instance modules again.
    warnings = (f"{vm.name} applies the new seed (instance-id {seed_instance_id(vm)}) at its next boot only: "
                f"reboot it (virsh reboot {vm.name}) for users, keys, network, mounts and disks to change; "
                "a disk that already holds a partition table or filesystem is never repartitioned or "
                "reformatted",) if why == "content differs" else ()
    # The seed's files in the plan: what the guest will be told, not only the ISO's hash.
    before = facts.remote_files if facts else None  # online: a diff against the host's seed
    shows = tuple(FileBody(f"{vm.cloud_init_iso_path}:{name}", text,
                           None if before is None else before.get(name, ""))
                  for name, text in seed_files(vm).items())
    # Onto the real path (a symlink inside the roots is not replaced by a file), only while the file
    # there is still the one judged, and recorded as the tool's own right after.
    upload = Upload(judged[0].real if judged else vm.cloud_init_iso_path, iso, 0o644, why="cloud-init seed",
                    what=what, shows=shows)
    guard = (ownership.guard(judged[0], why="the seed path still holds what was read"),) if judged else ()
    swap = (media_command(vm, uri),) if facts is not None and facts.running else ()
    recorded = (record,) if judged else ()
    return Plan((*guard, upload, *recorded, *swap), f"upload the seed ISO ({why if facts else 'offline: always'})",
                warnings)


def seed_instance_id(vm: VM) -> str:
    meta = yaml.safe_load(seed_files(vm)["meta-data"])
    return str(meta["instance-id"])


def seed_checks(vm: VM, facts: SeedFacts) -> list[Check]:
    checks = [
        Check(f"seed ISO {vm.cloud_init_iso_path} sha256", facts.sha256[:16], facts.remote_sha256[:16] or "missing",
              facts.remote_sha256 == facts.sha256),
        Check("seed ISO volume label", "cidata", facts.remote_label or "missing", facts.remote_label == "cidata"),
    ]
    if facts.survey is not None and facts.remote_sha256:
        verdict = ownership.judge(facts.survey.seen[vm.cloud_init_iso_path], facts.survey)
        checks.append(Check(f"{vm.cloud_init_iso_path} owned by numa-k3s", "recorded, same file",
                            verdict.why if verdict.action == "owned" else f"not: {verdict.why}",
                            verdict.action == "owned"))
    return checks


class CloudinitBuild(Step[SeedFacts]):
    name = "cloudinit.build"
    summary = "NoCloud seed ISO per VM: users + keys, hostname, network, data VM disks and /data layout"
    targets = "vms"

    def facts_command(self, target: Target) -> Command:
        assert target.vm is not None
        host, vm = target.loaded.host, target.vm
        return seq(seed_facts_command(vm, host.libvirt_uri),
                   ownership.survey_command(host.sysroot, host.storage_roots, [vm.base_image_path], seed_paths(vm)),
                   timeout=90, why="hash the seed ISO; is its VM running; real path and ownership record")

    def reads(self, target: Target, got: Answers) -> Reads:
        """The hash, state and ownership read; in a plan, when the host's seed is the tool's own and
        differs, the seed itself: what the guest was told before, fetched only to show the plan's
        diff, and only from a seed path the tool may write (never a file that is not its own)."""
        assert target.vm is not None
        read = super().reads(target, got)
        if target.mode != "plan" or FACTS not in got:
            return read
        vm, out = target.vm, got.stdout()
        survey = ownership.parse_survey(out, seed_paths(vm))
        mine = ownership.judge(survey.seen[vm.cloud_init_iso_path], survey) if survey else None
        remote = split_sections(out).get("sha", "").strip()
        if mine is None or mine.action != "owned" or not remote:
            return read
        facts = self._facts(vm, out)  # the seed this inventory gives, built here, against the host's
        return (*read, Fetch("seed", judged_real(facts, vm))) if remote != facts.sha256 else read

    def parse(self, target: Target, answers: Answers) -> SeedFacts:
        assert target.vm is not None
        facts = self._facts(target.vm, answers.stdout())
        return replace(facts, remote_files=read_seed_iso(answers.file("seed"))) if "seed" in answers else facts

    @staticmethod
    def _facts(vm: VM, out: str) -> SeedFacts:
        """The host's answer beside the seed ISO this inventory gives (built on this machine by lib/local:
        the same files always give the same bytes)."""
        facts = parse_seed(build_seed_iso(seed_files(vm)), out)
        return replace(facts, survey=ownership.parse_survey(out, seed_paths(vm)))

    def plan(self, target: Target, facts: SeedFacts | None) -> Plan:
        assert target.vm is not None
        host = target.loaded.host
        return plan_seed(target.vm, facts, host.libvirt_uri, host.sysroot, target.run_id)

    def verify(self, target: Target, facts: SeedFacts) -> list[Check]:
        assert target.vm is not None
        return seed_checks(target.vm, facts)
