"""bios.check: the host is the machine the inventory describes, before anything is changed.

Read-only. Any difference in topology (sockets, cores, threads, SMT, which CPUs are sibling threads
of one core, NUMA cpulists and memory, L3), a value the parser cannot read, or a missing
virtualization flag stops provisioning with exit 3 and a table. Under TCG
(virt_type: qemu) a missing VT-x/AMD-V or /dev/kvm is a warning only. IOMMU and BIOS identity are
reported as evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

from lib.cpuset import format_cpulist
from lib.facts.host import HostFacts, host_facts_command, parse_host_facts
from lib.facts.perf import PerfFacts, joined, parse_perf_facts, perf_facts_command
from lib.hostperf import bios_perf_checks
from lib.inventory.model import Host
from lib.inventory.rules import inventory_threads
from lib.pinplan import LAYOUTS, layout_threads
from lib.reads import Answers
from lib.results import Check
from lib.shell import Command
from lib.steps.base import Plan, Step, Target

# The kernel keeps some of each node's memory (firmware, kernel image, page tables): a node reports
# a few percent under what is installed. Less than this share of the inventory's figure is a mismatch.
MEMORY_TOLERANCE = 0.90


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def virtualization_warnings(host: Host, facts: HostFacts) -> list[str]:
    if host.virt_type != "qemu":
        return []
    missing = [what for what, ok in (("VT-x/AMD-V flag", bool(facts.virt_flags)), ("/dev/kvm", facts.kvm)) if not ok]
    return [f"{' and '.join(missing)} missing: fine for TCG guests (virt_type: qemu), far too slow for production"] \
        if missing else []


def unreadable_checks(facts: HostFacts) -> list[Check]:
    """A value the parser could not read fails by name: the file, what it should hold, what it holds."""
    return [Check(f"unreadable {bad.path}", bad.wanted, repr(bad.value), False) for bad in facts.unreadable]


def count_checks(host: Host, facts: HostFacts, cores_agree: bool) -> list[Check]:
    topo = host.topology
    checks = []
    for name, want, found in (("sockets", topo.sockets, facts.sockets),
                              ("cores per socket", topo.cores_per_socket, facts.cores_per_socket),
                              ("threads per core", topo.threads_per_core, facts.threads_per_core)):
        if found != want and facts.offline and cores_agree:
            # Offline CPUs hide their cores from the kernel's lists; the online ones match the inventory.
            checks.append(Check.warn(name, str(want), f"{found} online (CPUs {format_cpulist(facts.offline)} "
                                                      "offline)"))
        else:
            checks.append(Check(name, str(want), str(found), found == want))
    want_smt = topo.threads_per_core > 1
    found_smt = "unknown" if facts.smt_active is None else _yes(facts.smt_active)
    checks.append(Check("SMT active", _yes(want_smt), found_smt, facts.smt_active == want_smt))
    return checks


def _kernel_layout(host: Host, facts: HostFacts, online: frozenset[int]) -> str:
    """Which named layout the kernel's cores follow ("listed" when neither), for the mismatch hint.

    Tried at the inventory's counts (offline CPUs left out of each core, as the kernel leaves them
    out) and at the kernel's own, so a host whose counts differ too still gets the right name.
    """
    topo = host.topology
    counts = {(topo.sockets, topo.cores_per_socket, topo.threads_per_core),
              (facts.sockets, facts.cores_per_socket, facts.threads_per_core)}
    for sockets, cores, threads in sorted(counts):
        if min(sockets, cores, threads) < 1:
            continue
        for layout in LAYOUTS:
            sets = {frozenset(t) & online for t in layout_threads(sockets, cores, threads, layout)}
            if sets - {frozenset()} == facts.cores:
                return layout
    return "listed"


def core_checks(host: Host, facts: HostFacts) -> list[Check]:
    """The inventory's cores against the kernel's sibling lists, CPU by CPU; the first difference is named.

    Offline CPUs are out of the kernel's lists, so each inventory core is compared by its online CPUs.
    """
    topo = host.topology
    online = facts.online or frozenset(facts.cpus)
    inventory = {cpu: frozenset(threads) & online for threads in inventory_threads(topo) for cpu in threads}
    kernel = {cpu: c.siblings for cpu, c in facts.cpus.items()}
    differ = sorted(cpu for cpu in (inventory.keys() & online) | kernel.keys()
                    if inventory.get(cpu) != kernel.get(cpu) and cpu in online)
    checks: list[Check] = []
    if differ:
        cpu = differ[0]
        mine, theirs = inventory.get(cpu), kernel.get(cpu)
        cores = {c for c in differ if kernel.get(c) is not None and min(kernel[c]) == c}
        more = len(cores - {min(theirs)} if theirs else cores)
        hint = f"; {more} more cores differ" if more else ""
        layout = _kernel_layout(host, facts, online)
        fix = f"sibling_layout: {layout}" if layout != "listed" else "sibling_layout: listed with sibling_sets"
        checks.append(Check(f"core of CPU {cpu}", format_cpulist(mine) if mine else "not in the inventory",
                            (format_cpulist(theirs) if theirs else "no topology read")
                            + f"{hint} (this host needs {fix})", False))
    else:
        checks.append(Check("sibling cores", f"{len(facts.cores) or 'the'} cores of sibling_layout "
                            f"{topo.sibling_layout}", "the kernel's sibling lists agree", True))
    node_of = {cpu: node for node, cpus in facts.nodes.items() for cpu in cpus}
    split = sorted((sorted(core) for core in facts.cores if len({node_of.get(c) for c in core}) > 1),
                   key=lambda core: core[0])
    if split:
        core = split[0]
        where = ", ".join(f"CPU {c} on {'node ' + str(node_of[c]) if c in node_of else 'no node'}" for c in core)
        checks.append(Check(f"core of CPU {core[0]} on one node", "every thread on one node", where, False))
    return checks


def offline_checks(host: Host, facts: HostFacts) -> list[Check]:
    """Offline CPUs: fine (a warning) while no VM is pinned there; pinning one fails the check."""
    offline = facts.offline & host.topology.all_cpus
    checks = []
    if facts.possible - facts.present and facts.present:  # room for hot-added CPUs: the kernel's word only
        checks.append(Check.evidence("CPUs possible", f"{format_cpulist(facts.possible)} (present "
                                     f"{format_cpulist(facts.present)})", "(reported)"))
    if not offline and host.topology.all_cpus <= facts.online:
        return [*checks, Check("CPUs online", format_cpulist(host.topology.all_cpus), "all", True)]
    used = {cpu: vm.name for vm in host.vms for cpu in (*vm.pins, *sorted(vm.tuning.emulator_cpus))}
    pinned = sorted(cpu for cpu in offline if cpu in used)
    absent = host.topology.all_cpus - facts.online - offline
    found = f"CPUs {format_cpulist(offline)} offline" if offline else "all present CPUs online"
    if absent:
        found += f"; CPUs {format_cpulist(absent)} not present"
    if pinned or absent:
        if pinned:
            found += f"; {used[pinned[0]]} is pinned to CPU {pinned[0]}"
        return [*checks, Check("CPUs online", format_cpulist(host.topology.all_cpus), found, False)]
    return [*checks, Check.warn("CPUs online", format_cpulist(host.topology.all_cpus),
                                f"{found}; no VM is pinned there (put them in host_reserved_cpus so the planner "
                                "skips them)")]


def node_checks(host: Host, facts: HostFacts) -> list[Check]:
    checks = []
    for node in host.topology.nodes:
        found = facts.nodes.get(node.id)
        # An offline CPU leaves its node's cpulist but keeps its nodeN/cpuM link.
        offline = facts.node_links.get(node.id, frozenset()) & facts.offline
        cpus = None if found is None else found | offline
        shown = "missing" if cpus is None else format_cpulist(cpus) or "none"
        if offline:
            shown += f" ({format_cpulist(offline)} offline)"
        checks.append(Check(f"node {node.id} CPUs", format_cpulist(node.cpu_set), shown, cpus == node.cpu_set))
        kb = facts.node_mem_kb.get(node.id)
        want = f"{node.memory_mb} MB (at least {MEMORY_TOLERANCE:.0%})"
        if kb is None:  # old kernels and some VMs have no nodeN/meminfo: unknown, never a guessed number
            checks.append(Check.warn(f"node {node.id} memory", want, "unknown (the kernel reports no "
                                     f"node{node.id}/meminfo)"))
        else:
            checks.append(Check(f"node {node.id} memory", want, f"{kb // 1024} MB",
                                kb // 1024 >= node.memory_mb * MEMORY_TOLERANCE))
    for node_id in sorted(set(facts.nodes) - {n.id for n in host.topology.nodes}):
        if facts.nodes[node_id]:  # a memory-only node holds no CPUs to pin: nothing to describe
            checks.append(Check(f"node {node_id} CPUs", "not in the inventory", format_cpulist(facts.nodes[node_id]),
                                False))
    return checks


def l3_checks(host: Host, facts: HostFacts) -> list[Check]:
    """L3 per socket against `l3_cache_mb`; without that figure the L3 is reported, not compared.

    Leaving it out is how an inventory says "any L3": a host that reports none (some virtual
    machines), or the lab, which runs on whatever machine it is given (32 MB and 260 MB seen)."""
    want_mb = host.topology.l3_cache_mb
    checks = []
    for socket in sorted({c.package for c in facts.cpus.values()} | set(facts.l3_kb)) or [0]:
        kb = facts.l3_kb.get(socket)
        count = facts.l3_instances.get(socket, 0)
        found = "none reported" if kb is None else f"{kb / 1024:g} MB" + (f" ({count} instances)" if count > 1 else "")
        if want_mb is None:
            checks.append(Check.evidence(f"socket {socket} L3", found, "(l3_cache_mb not set: reported)"))
        else:
            checks.append(Check(f"socket {socket} L3", f"{want_mb} MB", found, kb == want_mb * 1024))
    return checks


def topology_checks(host: Host, facts: HostFacts) -> list[Check]:
    tcg = host.virt_type == "qemu"
    checks = unreadable_checks(facts)
    checks += [
        _virt_check("virtualization flag", "vmx or svm", " ".join(facts.virt_flags), tcg),
        _virt_check("/dev/kvm", "present", "present" if facts.kvm else "", tcg),
    ]
    cores = core_checks(host, facts)
    checks += count_checks(host, facts, cores_agree=all(c.ok for c in cores))
    checks += cores + offline_checks(host, facts) + node_checks(host, facts) + l3_checks(host, facts)
    # Evidence, not requirements: the spec needs no device passthrough.
    iommu = ", ".join(facts.iommu) or ("on in kernel cmdline" if facts.iommu_enabled else "not enabled")
    checks.append(Check.evidence("IOMMU", iommu))
    dmi = facts.dmi
    checks.append(Check.evidence("BIOS", f"{dmi.get('bios_vendor') or '?'} {dmi.get('bios_version') or '?'} "
                                 f"({dmi.get('bios_date') or '?'}), {dmi.get('product_name') or '?'}"))
    return checks


def _virt_check(name: str, expected: str, found: str, tcg: bool) -> Check:
    """Present: passed. Missing: failed, or under TCG (virt_type: qemu) a warning, never a pass."""
    if found:
        return Check(name, expected, found, True)
    if tcg:
        return Check.warn(name, expected, "missing (TCG: warning)")
    return Check(name, expected, "missing", False)


@dataclass(frozen=True)
class BiosFacts:
    """The hardware (lib/facts/host.py) and the features the optional VM settings need (lib/facts/perf.py)."""

    host: HostFacts
    perf: PerfFacts


class BiosCheck(Step[BiosFacts]):
    name = "bios.check"
    summary = "read-only: VT-x/AMD-V, /dev/kvm, SMT, sockets x cores x threads, NUMA, L3, IOMMU, BIOS"
    mismatch_exit = 3

    def facts_command(self, target: Target) -> Command:
        sysroot = target.loaded.host.sysroot
        return joined(host_facts_command(sysroot), perf_facts_command(sysroot))

    def parse(self, target: Target, answers: Answers) -> BiosFacts:
        out, sysroot = answers.stdout(), target.loaded.host.sysroot
        return BiosFacts(parse_host_facts(out, sysroot), parse_perf_facts(out, sysroot))

    def plan(self, target: Target, facts: BiosFacts | None) -> Plan:
        warnings = virtualization_warnings(target.loaded.host, facts.host) if facts else []
        return Plan(reason="read-only check", warnings=tuple(warnings))

    def verify(self, target: Target, facts: BiosFacts) -> list[Check]:
        return topology_checks(target.loaded.host, facts.host) + bios_perf_checks(target.loaded.host, facts.perf)
