"""Hugepages per node (host.tune) and the performance features bios.check reports: pdpe1gb, free
hugepages per node, resctrl for an exclusive L3.

Hugepages are reserved per NUMA node through node*/hugepages/hugepages-<kB>kB/nr_hugepages, live
and at boot (a `w` line in host.tune's tmpfiles file). The kernel may give fewer pages than asked
when the node's memory is fragmented (likely for 1 GiB pages late after boot), so verification
reads back what it got and says so.
"""

from __future__ import annotations

from lib.facts.perf import PerfFacts
from lib.inventory.model import Host, HugepageReservation
from lib.results import Check
from lib.shell import Command, root_prefix, sh


def nr_path(r: HugepageReservation) -> str:
    return f"/sys/devices/system/node/node{r.node}/hugepages/hugepages-{r.size_kb}kB/nr_hugepages"


def tmpfiles_lines(host: Host) -> str:
    return "".join(f"w {nr_path(r)} - - - - {r.count}\n" for r in host.hugepages)


def plan_hugepages(host: Host, facts: PerfFacts | None) -> tuple[list[Command], list[str]]:
    root = root_prefix(host.sysroot)
    actions: list[Command] = []
    changes: list[str] = []
    for r in host.hugepages:
        got = facts.hugepages.get((r.node, r.size_kb)) if facts else None
        if got is None or got.nr != r.count:
            actions.append(sh(f"echo {{count}} > {root}{nr_path(r)}", count=r.count,
                              why=f"reserve {r.count} x {r.size} hugepages on node {r.node}"))
            changes.append(f"node {r.node} {r.size} hugepages {got.nr if got else '?'} -> {r.count}")
    return actions, changes


def hugepage_checks(host: Host, facts: PerfFacts) -> list[Check]:
    rows = []
    for r in host.hugepages:
        got = facts.hugepages.get((r.node, r.size_kb))
        name = f"node {r.node} {r.size} hugepages"
        if got is None:
            rows.append(Check(name, f"{r.count} reserved", f"size not offered by this kernel on node {r.node}", False))
            continue
        rows.append(Check(name, f"{r.count} reserved", f"{got.nr} reserved, {got.free} free", got.nr == r.count))
    return rows


def bios_perf_checks(host: Host, facts: PerfFacts) -> list[Check]:
    """What the inventory's optional settings need from the hardware, or evidence of what there is."""
    rows: list[Check] = []
    if any(r.size == "1G" and r.count for r in host.hugepages):
        rows.append(Check("1 GiB pages (pdpe1gb)", "pdpe1gb CPU flag", "present" if facts.pdpe1gb else "missing",
                          facts.pdpe1gb))
    for size, kb in sorted({(r.size, r.size_kb) for r in host.hugepages if r.count}, key=lambda x: x[1]):
        mount = facts.hugetlbfs.get(kb)
        rows.append(Check(f"hugetlbfs mount for {size} pages", "mounted (libvirt backs hugepage VMs from it)",
                          mount or f"not mounted: a {size} VM would not start (libvirt: hugetlbfs not mounted); "
                                   f"mount hugetlbfs with pagesize={size} (a systemd .mount unit), then restart "
                                   "libvirtd (it looks for the mounts when it starts)", mount is not None))
    for (node, kb), pages in facts.hugepages.items():
        rows.append(Check.evidence(f"node {node} hugepages {kb} kB", f"{pages.free} free of {pages.nr}"))
    if host.tuning.confinement.host_cpus and any(vm.pins for vm in host.vms):
        ctl = facts.cgroup_controllers
        found = "no cgroup v2 unified hierarchy" if ctl is None else "available" if "cpuset" in ctl else \
            f"not enabled (controllers: {' '.join(ctl) or 'none'})"
        rows.append(Check("cgroup v2 cpuset controller", "available (host confinement's AllowedCPUs needs it)",
                          found, found == "available"))
    wanted = [vm for vm in host.vms if vm.tuning.exclusive_l3_mb]
    rc = facts.resctrl
    if rc is not None:
        mon = ", ".join(rc.monitoring) or "no monitoring"
        rows.append(Check("L3 cache allocation (resctrl)", "available" if wanted else "(reported)",
                          f"available: {rc.ways} ways, {rc.num_closids} CLOSIDs; {mon}", True,
                          None if wanted else "evidence"))
    elif wanted:
        names = ", ".join(f"{vm.name} {vm.tuning.exclusive_l3_mb} MB" for vm in wanted)
        rows.append(Check("L3 cache allocation (resctrl)", f"available for exclusive_l3_mb ({names})",
                          f"not available: {facts.resctrl_why}", False))
    else:
        rows.append(Check.evidence("L3 cache allocation (resctrl)", f"not available: {facts.resctrl_why}"))
    return rows
