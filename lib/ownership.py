"""What the tool owns on a hypervisor: the files it made, recorded there, and who may touch what.

Every image, data disk and seed ISO the tool creates gets a record in a root-only registry on the
hypervisor itself (`<sysroot>/var/lib/numa-k3s/owned/`, 0700; one 0600 file per owned file, named by
the sha256 of its real path), so losing the control node loses nothing. A record holds the file's
identity when the tool made it (device, inode, birth time where the filesystem has one, size),
the run that made it, its kind and its VM. A file at the same path with another identity is not
the tool's: a replaced file gets a new inode (and birth time). The size is kept as information
only: qcow2 images grow, and a seed written into in place is still the tool's file to rewrite.

Pure, like lib/lock.py: builds the commands and parses their answers; the steps run them. Every
path is judged by its REAL path on the host (`realpath -m`), so `./`, `//`, `..` and symlinks
cannot lead outside the storage roots or around the base image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lib.facts.sysfs import section, split_sections
from lib.shell import Command, Value, rooted, sh

REGISTRY = "/var/lib/numa-k3s/owned"
Probe = Literal["", "image", "seed"]
# The seed's primary volume descriptor starts at byte 32768; its volume identifier is at +40.
_VOLUME_ID = 'dd if="$rp" bs=1 skip=32808 count=32 2>/dev/null'


def registry(sysroot: str) -> str:
    """The registry directory, under the inventory's sysroot like the /etc files the steps manage."""
    return rooted(sysroot, REGISTRY)


@dataclass(frozen=True)
class Identity:
    dev: int
    ino: int
    birth: int  # 0: the filesystem does not report one
    size: int

    def same_file(self, other: Identity) -> bool:
        births = self.birth and other.birth
        return (self.dev, self.ino) == (other.dev, other.ino) and (not births or self.birth == other.birth)

    def shown(self) -> str:
        return f"device {self.dev} inode {self.ino}" + (f" born {self.birth}" if self.birth else "")

    def guard(self) -> str:
        """What `stat -c '%d %i %W'` prints for this file: the apply-time re-check."""
        return f"{self.dev} {self.ino} {self.birth}"


@dataclass(frozen=True)
class Record:
    identity: Identity
    kind: str  # overlay, data-disk, seed
    vm: str
    run: str
    created: str


@dataclass(frozen=True)
class Seen:
    """One inventory path as the host answers for it."""

    path: str  # as the inventory spells it
    real: str  # realpath -m on the host; "" when it cannot be resolved (a symlink loop)
    type: str = ""  # stat's %F of the real path ("regular file", "block special file", ...); "": missing
    identity: Identity | None = None
    record: Record | None = None
    probe: str = ""  # the probe's raw output (qemu-img info JSON, or the seed's sha256 and volume id)

    @property
    def exists(self) -> bool:
        return bool(self.type)


@dataclass(frozen=True)
class Survey:
    roots: tuple[str, ...]  # the storage roots' real paths
    bases: tuple[str, ...]  # the base images' real paths
    seen: dict[str, Seen]  # inventory path -> what is there


def survey_command(sysroot: str, roots: Sequence[str], bases: Sequence[str],
                   entries: Sequence[tuple[str, Probe]]) -> Command:
    """One read: the roots' and bases' real paths, then per path its real path, type, identity, record
    and an optional probe (qemu-img info for an image, sha256 and volume id for a seed)."""
    values: dict[str, Any] = {"reg": registry(sysroot), "roots": list[Value](roots),
                              "bases": list[Value](bases)}
    parts = [section("roots"), 'for r in {roots}; do realpath -m -- "$r" 2>/dev/null || echo; done',
             section("bases"), 'for b in {bases}; do realpath -m -- "$b" 2>/dev/null || echo; done']
    for i, (path, probe) in enumerate(entries):
        values[f"p{i}"] = path
        parts.append(f"{section(f'o{i}')}; rp=$(realpath -m -- {{p{i}}} 2>/dev/null) || rp=''; "
                     'printf "real=%s\\n" "$rp"; if [ -n "$rp" ] && ( [ -e "$rp" ] || [ -L "$rp" ] ); then '
                     "stat --printf 'type=%F\\nid=%d %i %W %s\\n' -- \"$rp\"; fi; "
                     'k=$(printf %s "$rp" | sha256sum | cut -c1-64); '
                     'if [ -n "$rp" ] && [ -f {reg}/"$k" ]; then sed "s/^/rec./" {reg}/"$k"; fi')
        if probe == "image":
            parts.append(f'{section(f"q{i}")}; if [ -f "$rp" ]; then qemu-img info --output=json -U "$rp" 2>&1; fi')
        elif probe == "seed":
            parts.append(f'{section(f"q{i}")}; if [ -f "$rp" ]; then sha256sum < "$rp" | cut -c1-64; '
                         f'{_VOLUME_ID}; echo; fi')
    return sh("; ".join(parts) + "; true", timeout=60, why="real paths, identities and ownership records",
              **values)


def _identity(text: str) -> Identity | None:
    words = text.split()
    if len(words) != 4 or not all(w.lstrip("-").isdigit() for w in words):
        return None
    dev, ino, birth, size = (int(w) for w in words)
    return Identity(dev, ino, max(birth, 0), size)


def parse_record(fields: dict[str, str]) -> Record | None:
    ident = _identity(" ".join(fields.get(k, "") for k in ("dev", "ino", "birth", "size")))
    if ident is None:
        return None  # an unreadable record proves nothing: the file is then not owned
    return Record(ident, fields.get("kind", ""), fields.get("vm", ""), fields.get("run", ""),
                  fields.get("created", ""))


def parse_seen(path: str, text: str, probe: str = "") -> Seen:
    values: dict[str, str] = {}
    rec: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.startswith("rec."):
            rec[key[4:]] = value
        else:
            values.setdefault(key, value)
    return Seen(path, values.get("real", ""), values.get("type", ""), _identity(values.get("id", "")),
                parse_record(rec) if rec else None, probe)


def parse_survey(stdout: str, entries: Sequence[tuple[str, Probe]]) -> Survey:
    parts = split_sections(stdout)
    seen = {path: parse_seen(path, parts.get(f"o{i}", ""), parts.get(f"q{i}", ""))
            for i, (path, _probe) in enumerate(entries)}
    return Survey(tuple(parts.get("roots", "").splitlines()), tuple(parts.get("bases", "").splitlines()), seen)


def under(path: str, root: str) -> bool:
    return bool(root) and (path == root or path.startswith(root.rstrip("/") + "/"))


@dataclass(frozen=True)
class Verdict:
    action: Literal["owned", "adopt", "absent", "refuse"]
    why: str = ""  # refuse: what is wrong; adopt: what matched
    fix: str = ""  # refuse: what the operator can do
    unrecorded: bool = False  # refused only for want of a record (a regular file in the roots)


def judge(seen: Seen, survey: Survey, *, adoptable: str | None = None) -> Verdict:
    """May the tool replace or remove what is at this path? `adoptable`: why an unrecorded file matches
    what the tool would have made (None: it does not)."""
    real = seen.real
    if not real:
        return Verdict("refuse", "its real path cannot be resolved on the host (a symlink loop?)",
                       "fix the symlink or point the inventory at a plain path")
    if not any(under(real, root) for root in survey.roots):
        return Verdict("refuse", f"its real path {real} is outside the storage roots "
                                 f"({', '.join(survey.roots) or 'none'})",
                       "point the inventory at a path under storage_roots, or add its directory there")
    if real in survey.bases:
        return Verdict("refuse", f"it is the shared base image (real path {real}); the tool never "
                                 "replaces or removes it", "give the VM its own disk_path / seed path")
    if not seen.exists:
        return Verdict("absent")
    if seen.type != "regular file" or seen.identity is None:
        return Verdict("refuse", f"it is a {seen.type or 'file of unknown type'}, not a file the tool made",
                       "point the inventory at a path under storage_roots that the tool may create")
    record = seen.record
    if record is not None:
        # The same file written into in place (a tampered seed) is still the tool's own to rewrite.
        if record.identity.same_file(seen.identity):
            return Verdict("owned", f"made by run {record.run}")
        return Verdict("refuse", f"the tool made this {record.kind} in run {record.run} "
                                 f"({record.identity.shown()}, {record.identity.size} bytes), but the file there "
                                 f"now is another ({seen.identity.shown()}, {seen.identity.size} bytes)",
                       f"someone replaced it: if it is not needed, remove it yourself (rm {real}), then run again")
    if adoptable is not None:
        return Verdict("adopt", adoptable)
    return Verdict("refuse", "the tool has no record of making it and it is not what the tool would have made",
                   f"if it is yours, point the inventory elsewhere; if it is an old copy, move it aside "
                   f"(mv {real} {real}.old), then run again", unrecorded=True)


def record_command() -> str:
    """Shell code (inside a step's command, its values from record_values()) recording the file at
    "$rp" as the tool's own. Written beside and renamed into place, root-only (umask 077): a record is
    whole or absent."""
    return ('rp=$(realpath -e -- "$rp") && k=$(printf %s "$rp" | sha256sum | cut -c1-64) && '
            '(umask 077; mkdir -p {reg} && chmod 700 {reg} && '
            "stat --printf 'dev=%d\\nino=%i\\nbirth=%W\\nsize=%s\\n' -- \"$rp\" > {reg}/.\"$k\".new && "
            "printf 'path=%s\\nkind=%s\\nvm=%s\\nrun=%s\\ncreated=%s\\n' \"$rp\" {kind} {vm} {run} "
            '"$(date -u +%Y-%m-%dT%H:%M:%SZ)" >> {reg}/."$k".new && mv -f {reg}/."$k".new {reg}/"$k")')


def record_values(sysroot: str, kind: str, vm: str, run: str) -> dict[str, Any]:
    return {"reg": registry(sysroot), "kind": kind, "vm": vm, "run": run or "unknown"}


def record(sysroot: str, path: str, kind: str, vm: str, run: str, *, why: str) -> Command:
    """A command recording the file at path as the tool's own (after an upload, or adopting it)."""
    return sh("rp={path}; " + record_command(), path=path, timeout=30, why=why,
              **record_values(sysroot, kind, vm, run))


GUARD = ('set -- $(stat -c "%d %i %W" -- {real} 2>/dev/null); if [ "$*" != {ident} ]; then '
         'echo {real}": changed since it was read; nothing done" >&2; exit 1; fi')


def remove(sysroot: str, seen: Seen, *, why: str) -> Command:
    """Delete an owned (or adopted) file by its real path, only if it is still the file that was
    judged, and its record with it."""
    assert seen.identity is not None
    return sh(GUARD + '; rm -f -- {real} && '
              'rm -f -- {reg}/"$(printf %s {real} | sha256sum | cut -c1-64)"',
              real=seen.real, ident=seen.identity.guard(), reg=registry(sysroot), timeout=30, why=why)


def guard(seen: Seen, *, why: str) -> Command:
    """Before replacing a file: stop unless it is still the one judged (or still absent)."""
    if seen.identity is None:
        return sh('if [ -e {real} ] || [ -L {real} ]; then echo {real}": appeared since it was read; nothing done" '
                  ">&2; exit 1; fi", real=seen.real, timeout=30, why=why)
    return sh(GUARD, real=seen.real, ident=seen.identity.guard(), timeout=30, why=why)
