"""Block devices a VM is given: never one the hypervisor itself uses (issue 26).

A device is in use when it, one of its partitions, or anything built on it (an LVM volume, a RAID
array: the kernel's holders/ links, followed all the way up) is mounted or is swap on the
hypervisor. Read from /proc/mounts, /proc/swaps and /sys/class/block under the inventory's sysroot,
like every other kernel file the steps read; judged purely here. preflight.access runs it, so a
device in use is refused before anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from lib.facts.sysfs import section, split_sections
from lib.shell import Command, root_prefix, sh


def blockdev_command(sysroot: str, devices: list[str]) -> Command:
    """Mount and swap sources by kernel name, every block device's holders and partitions, device-mapper
    names, and each VM device's kernel name: one read, no root needed."""
    root = root_prefix(sysroot)
    # A source such as /dev/disk/by-uuid/... or /dev/mapper/vg-root resolves to its kernel name
    # through /dev; one that does not resolve (a sysroot without /dev/mapper) keeps its own name.
    resolve = f'r=$(readlink -f {root}"$src" 2>/dev/null) || r=$src; echo "$(basename "$r") $dst"'
    return sh(
        # An unreadable /proc/mounts fails the read: it is never taken as "nothing is mounted".
        f"if [ ! -r {root}/proc/mounts ]; then echo cannot read {root}/proc/mounts >&2; exit 1; fi; "
        f"{section('blk_mounts')}; while read -r src dst _; do case $src in /dev/*) {resolve};; esac; "
        f"done < {root}/proc/mounts; "
        f"{section('blk_swaps')}; while read -r src _; do dst='[swap]'; case $src in /dev/*) {resolve};; esac; "
        f"done 2>/dev/null < {root}/proc/swaps; "
        f"{section('blk_tree')}; for d in {root}/sys/class/block/*; do [ -e \"$d\" ] || continue; "
        'n=$(basename "$d"); '
        'echo "holders $n $(ls "$d/holders" 2>/dev/null | tr "\\n" " ")"; '
        'if [ -e "$d/partition" ]; then echo "part $(basename "$(readlink -f "$d/..")") $n"; fi; '
        'if [ -r "$d/dm/name" ]; then echo "dm $(cat "$d/dm/name") $n"; fi; done; '
        f"{section('blk_devices')}; for dev in {{devices}}; do r=$(readlink -f {root}\"$dev\" 2>/dev/null) "
        '|| r=$dev; echo "$dev $(basename "$r")"; done; true',
        devices=list(devices), sudo=False, timeout=30, why="what the hypervisor mounts, and on which devices")


@dataclass(frozen=True)
class BlockFacts:
    mounted: dict[str, str]  # kernel name -> where it is mounted ("[swap]" for swap)
    holders: dict[str, tuple[str, ...]]  # kernel name -> what is built on it (dm-0, md0)
    partitions: dict[str, tuple[str, ...]]  # disk -> its partitions
    devices: dict[str, str]  # a VM's device path as the inventory names it -> its kernel name
    dm_names: dict[str, str]  # device-mapper name (vg-root) -> kernel name (dm-0)


def parse_blockdev(stdout: str) -> BlockFacts:
    parts = split_sections(stdout)
    holders: dict[str, tuple[str, ...]] = {}
    partitions: dict[str, list[str]] = {}
    dm_names: dict[str, str] = {}
    for line in parts.get("blk_tree", "").splitlines():
        kind, _, rest = line.partition(" ")
        words = rest.split()
        if kind == "holders" and words:
            holders[words[0]] = tuple(words[1:])
        elif kind == "part" and len(words) == 2:
            partitions.setdefault(words[0], []).append(words[1])
        elif kind == "dm" and len(words) == 2:
            dm_names[words[0]] = words[1]
    mounted: dict[str, str] = {}
    for line in (parts.get("blk_mounts", "") + "\n" + parts.get("blk_swaps", "")).splitlines():
        name, _, where = line.partition(" ")
        if name:
            mounted.setdefault(dm_names.get(name, name), where)
    devices = {}
    for line in parts.get("blk_devices", "").splitlines():
        dev, _, name = line.partition(" ")
        if dev:
            devices[dev] = name
    return BlockFacts(mounted, holders, {k: tuple(v) for k, v in partitions.items()}, devices, dm_names)


def in_use(facts: BlockFacts, name: str, seen: frozenset[str] = frozenset()) -> str | None:
    """Why the hypervisor uses this device (None: it does not): mounted itself, through a partition,
    or through anything built on it, followed up the holders."""
    if name in seen:
        return None
    seen = seen | {name}
    if name in facts.mounted:
        where = facts.mounted[name]
        return f"{name} is swap" if where == "[swap]" else f"{name} is mounted on {where}"
    for child in facts.partitions.get(name, ()):
        why = in_use(facts, child, seen)
        if why:
            return f"its partition {why}" if why.startswith(f"{child} ") else f"its partition {child}: {why}"
    for holder in facts.holders.get(name, ()):
        why = in_use(facts, holder, seen)
        if why:
            dm = next((n for n, k in facts.dm_names.items() if k == holder), "")
            return f"it is part of {holder}{f' ({dm})' if dm else ''}: {why}"
    return None
