"""lib/ownership's judgement, pure, and its read and record commands run for real in a shell."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lib import ownership
from lib.ownership import Identity, Record, Seen, Survey, judge

ROOTS, BASE = ("/srv/images",), "/srv/images/base.qcow2"
MINE = Identity(2049, 100, 1700000000, 4096)


def survey(*seen: Seen) -> Survey:
    return Survey(ROOTS, (BASE,), {s.path: s for s in seen})


def seen(path: str, real: str | None = None, kind: str = "regular file", ident: Identity | None = MINE,
         record: Record | None = None) -> Seen:
    return Seen(path, path if real is None else real, kind if ident or kind else "", ident, record)


def test_identity_is_device_inode_and_birth_when_both_have_one() -> None:
    assert MINE.same_file(Identity(2049, 100, 1700000000, 999_999))  # qcow2 images grow
    assert not MINE.same_file(Identity(2049, 101, 1700000000, 4096))  # another inode
    assert not MINE.same_file(Identity(2049, 100, 1700000099, 4096))  # a reused inode, born later
    assert MINE.same_file(Identity(2049, 100, 0, 4096))  # no birth time on that filesystem


@pytest.mark.parametrize(("case", "action", "why"), [
    (seen("/srv/images/x", real=""), "refuse", "cannot be resolved"),
    (seen("/srv/images/x", real="/srv/images2/x"), "refuse", "outside the storage roots (/srv/images)"),
    (seen("/srv/images/x", real="/etc/shadow"), "refuse", "real path /etc/shadow is outside"),
    (seen("/srv/images//./base.qcow2", real=BASE), "refuse", "it is the shared base image"),
    (seen("/srv/images/x", kind="", ident=None), "absent", ""),
    (seen("/srv/images/x", kind="block special file"), "refuse", "it is a block special file"),
    (seen("/srv/images/x", record=Record(MINE, "overlay", "vm", "R1", "")), "owned", "made by run R1"),
    (seen("/srv/images/x", record=Record(Identity(2049, 7, 1, 4096), "overlay", "vm", "R1", "")), "refuse",
     "the tool made this overlay in run R1 (device 2049 inode 7 born 1, 4096 bytes), but the file there now is "
     "another (device 2049 inode 100 born 1700000000, 4096 bytes)"),
    # A seed written into in place is still the tool's file (cloudinit.build rewrites its content).
    (seen("/srv/images/x", record=Record(Identity(2049, 100, 1700000000, 10), "seed", "vm", "R1", "")), "owned",
     "made by run R1"),
    (seen("/srv/images/x"), "refuse", "the tool has no record of making it"),
])
def test_judge(case: Seen, action: str, why: str) -> None:
    verdict = judge(case, survey(case))
    assert verdict.action == action and why in verdict.why, verdict


def test_an_unrecorded_file_is_adopted_only_when_it_matches() -> None:
    case = seen("/srv/images/x")
    assert judge(case, survey(case), adoptable="an overlay like the spec's") == ownership.Verdict(
        "adopt", "an overlay like the spec's")
    # Never the base image, whatever it looks like.
    base = seen("/srv/images/b", real=BASE)
    assert judge(base, survey(base), adoptable="a qcow2").action == "refuse"


def sh(command: str) -> str:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout


def test_survey_record_and_remove_in_a_real_shell(tmp_path: Path) -> None:
    root, sysroot, outside = tmp_path / "root", tmp_path / "sysroot", tmp_path / "outside"
    for d in (root, sysroot, outside):
        d.mkdir()
    (root / "base.qcow2").write_bytes(b"base")
    (root / "disk.qcow2").write_bytes(b"disk")
    (outside / "secret").write_bytes(b"secret")
    (root / "escape").symlink_to(outside / "secret")
    entries: list[tuple[str, ownership.Probe]] = [
        (f"{root}/./disk.qcow2", ""), (f"{root}//base.qcow2", ""), (f"{root}/escape", ""), (f"{root}/none", "")]
    read = ownership.survey_command(str(sysroot), [str(root)], [f"{root}/base.qcow2"], entries)
    facts = ownership.parse_survey(sh(read.real), entries)
    disk, base, escape, none = (facts.seen[p] for p, _ in entries)
    assert judge(disk, facts).why == "the tool has no record of making it and it is not what the tool would have made"
    assert judge(base, facts).why.startswith("it is the shared base image")
    assert f"real path {outside}/secret is outside" in judge(escape, facts).why
    assert judge(none, facts).action == "absent"

    sh(ownership.record(str(sysroot), f"{root}/./disk.qcow2", "overlay", "vm1", "R7", why="").real)
    registry = Path(ownership.registry(str(sysroot)))
    (record,) = registry.iterdir()
    assert (registry.stat().st_mode & 0o777, record.stat().st_mode & 0o777) == (0o700, 0o600)
    facts = ownership.parse_survey(sh(read.real), entries)
    disk = facts.seen[entries[0][0]]
    assert judge(disk, facts) == ownership.Verdict("owned", "made by run R7")
    assert disk.real == f"{root}/disk.qcow2" and disk.identity and disk.identity.ino == os.stat(disk.real).st_ino

    # The apply-time re-check: a file swapped in after the read is not deleted.
    (root / "swap").write_bytes(b"disk")
    os.replace(root / "swap", root / "disk.qcow2")
    gone = subprocess.run(["sh", "-c", ownership.remove(str(sysroot), disk, why="").real], capture_output=True,
                          text=True, check=False)
    assert gone.returncode == 1 and "changed since it was read; nothing done" in gone.stderr
    assert (root / "disk.qcow2").read_bytes() == b"disk" and record.exists()
