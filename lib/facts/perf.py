"""Host facts the VMs' performance settings depend on: hugepages per node, 1 GiB page support,
resctrl (L3 cache allocation and monitoring), the cgroup v2 cpuset controller.

One batched read under the sysroot, parsed purely (tests feed generated trees). Kept apart from
lib/facts/host.py, which describes the hardware the inventory must match; these are the features
the inventory's optional settings need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lib.facts.sysfs import grep_values, section, split_sections
from lib.shell import Command, seq, sh

NODE_HUGEPAGES = "/sys/devices/system/node/node[0-9]*/hugepages/hugepages-*kB"
RESCTRL = "/sys/fs/resctrl"
CGROUP_CONTROLLERS = "/sys/fs/cgroup/cgroup.controllers"
_HUGE = re.compile(r"/node([0-9]+)/hugepages/hugepages-([0-9]+)kB/(nr|free)_hugepages$")


def perf_facts_command(sysroot: str) -> Command:
    script = "; ".join([
        "r={root}", section("perf_values"),
        f'grep -Hs . "$r"{NODE_HUGEPAGES}/nr_hugepages "$r"{NODE_HUGEPAGES}/free_hugepages '
        f'"$r"{RESCTRL}/info/L3/cbm_mask "$r"{RESCTRL}/info/L3/num_closids "$r"{RESCTRL}/info/L3/min_cbm_bits '
        f'"$r"{RESCTRL}/info/L3_MON/mon_features "$r"{CGROUP_CONTROLLERS}',
        section("perf_resctrl"), f'[ -e "$r"{RESCTRL}/schemata ] && echo mounted',
        section("perf_hugetlbfs"), 'grep -s " hugetlbfs " "$r"/proc/mounts',
        section("perf_flags"), 'grep -m1 "^flags" "$r"/proc/cpuinfo', "true",
    ])
    return sh(script, root="" if sysroot in ("", "/") else sysroot, sudo=False, timeout=60,
              why="read hugepages per node, pdpe1gb, resctrl and the cgroup controllers")


def joined(first: Command, then: Command) -> Command:
    """Two reads in one round trip (their sections have distinct names, so one stdout splits into both)."""
    return seq(first, then, timeout=first.timeout + then.timeout, sudo=first.sudo or then.sudo,
               ok_codes=first.ok_codes, why=f"{first.why}; {then.why}")


@dataclass(frozen=True)
class NodePages:
    nr: int
    free: int


@dataclass(frozen=True)
class Resctrl:
    cbm_mask: str  # hex, one bit per L3 way
    num_closids: int
    min_cbm_bits: int
    monitoring: tuple[str, ...]  # L3_MON features (llc_occupancy, mbm_total_bytes, ...)

    @property
    def ways(self) -> int:
        return bin(int(self.cbm_mask, 16)).count("1") if self.cbm_mask else 0


@dataclass(frozen=True)
class PerfFacts:
    hugepages: dict[tuple[int, int], NodePages]  # (node, page kB) -> counts
    pdpe1gb: bool
    resctrl: Resctrl | None
    resctrl_why: str  # why resctrl is not available ("" when it is)
    cgroup_controllers: tuple[str, ...] | None  # None: no cgroup v2 unified hierarchy
    hugetlbfs: dict[int, str] = field(default_factory=dict)  # page kB -> a hugetlbfs mount point for it


def _int(text: str) -> int:
    return int(text.strip()) if text.strip().isdigit() else 0


def parse_perf_facts(stdout: str, sysroot: str) -> PerfFacts:
    parts = split_sections(stdout)
    values = grep_values(parts.get("perf_values", ""), sysroot)
    counts: dict[tuple[int, int], dict[str, int]] = {}
    for path, value in values.items():
        match = _HUGE.search(path)
        if match:
            counts.setdefault((int(match[1]), int(match[2])), {})[match[3]] = _int(value)
    flags = set(parts.get("perf_flags", "").partition(":")[2].split())
    mounted = parts.get("perf_resctrl", "").strip() == "mounted"
    mask = values.get(f"{RESCTRL}/info/L3/cbm_mask", "").strip()
    resctrl = None
    if mounted and mask:
        resctrl = Resctrl(mask, _int(values.get(f"{RESCTRL}/info/L3/num_closids", "")),
                          _int(values.get(f"{RESCTRL}/info/L3/min_cbm_bits", "")),
                          tuple(values.get(f"{RESCTRL}/info/L3_MON/mon_features", "").split()))
    controllers = values.get(CGROUP_CONTROLLERS)
    return PerfFacts(
        hugepages={k: NodePages(v.get("nr", 0), v.get("free", 0)) for k, v in sorted(counts.items())},
        pdpe1gb="pdpe1gb" in flags, resctrl=resctrl, resctrl_why=_resctrl_why(flags, mounted, mask),
        cgroup_controllers=tuple(controllers.split()) if controllers is not None else None,
        hugetlbfs=parse_hugetlbfs(parts.get("perf_hugetlbfs", "")))


_PAGESIZE = re.compile(r"(?:^|,)pagesize=(\d+)([KMG])(?:,|$)")


def parse_hugetlbfs(mounts: str) -> dict[int, str]:
    """/proc/mounts' hugetlbfs lines -> {page kB: mount point}: what libvirt finds when it starts (it backs
    a hugepage VM from a mount of that page size; the kernel always prints pagesize= for hugetlbfs)."""
    found: dict[int, str] = {}
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "hugetlbfs" and (m := _PAGESIZE.search(fields[3])):
            found.setdefault(int(m[1]) * {"K": 1, "M": 1024, "G": 1024 * 1024}[m[2]], fields[1])
    return found


def _resctrl_why(flags: set[str], mounted: bool, mask: str) -> str:
    if mounted and mask:
        return ""
    if not flags & {"cat_l3", "rdt_a"}:
        return "the CPU has no L3 cache allocation (no cat_l3/rdt_a flag: Intel CAT or AMD L3 QoS)"
    if not mounted:
        return "resctrl is not mounted (mount -t resctrl resctrl /sys/fs/resctrl; libvirt needs it)"
    return "resctrl is mounted but has no L3 resource (info/L3/cbm_mask)"
