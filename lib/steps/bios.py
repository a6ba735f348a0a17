"""bios.check: the host is the machine the inventory describes, before anything is changed.

Read-only. Any difference in topology (sockets, cores, threads, SMT, NUMA cpulists and memory, L3)
or a missing virtualization flag stops provisioning with exit 3 and a table. Under TCG
(virt_type: qemu) a missing VT-x/AMD-V or /dev/kvm is a warning only. IOMMU and BIOS identity are
reported as evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

from lib.cpuset import format_cpulist
from lib.facts.host import HostFacts, host_facts_command, parse_host_facts
from lib.facts.perf import PerfFacts, joined, parse_perf_facts, perf_facts_command
from lib.inventory.model import Host
from lib.remote import CmdResult
from lib.results import Check
from lib.shell import Command
from lib.steps.base import Plan, Step, Target
from lib.steps.hostperf import bios_perf_checks

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


def topology_checks(host: Host, facts: HostFacts) -> list[Check]:
    topo = host.topology
    tcg = host.virt_type == "qemu"
    checks = [
        Check("virtualization flag", "vmx or svm", " ".join(facts.virt_flags) or "missing" + (" (TCG: warning)"
              if tcg else ""), bool(facts.virt_flags) or tcg),
        Check("/dev/kvm", "present", "present" if facts.kvm else "missing" + (" (TCG: warning)" if tcg else ""),
              facts.kvm or tcg),
        Check("sockets", str(topo.sockets), str(facts.sockets), facts.sockets == topo.sockets),
        Check("cores per socket", str(topo.cores_per_socket), str(facts.cores_per_socket),
              facts.cores_per_socket == topo.cores_per_socket),
        Check("threads per core", str(topo.threads_per_core), str(facts.threads_per_core),
              facts.threads_per_core == topo.threads_per_core),
    ]
    want_smt = topo.threads_per_core > 1
    found_smt = "unknown" if facts.smt_active is None else _yes(facts.smt_active)
    checks.append(Check("SMT active", _yes(want_smt), found_smt, facts.smt_active == want_smt))
    for node in topo.nodes:
        found = facts.nodes.get(node.id)
        checks.append(Check(f"node {node.id} CPUs", format_cpulist(node.cpu_set),
                            "missing" if found is None else format_cpulist(found) or "none",
                            found == node.cpu_set))
        kb = facts.node_mem_kb.get(node.id)
        found_mem = "missing" if kb is None else f"{kb // 1024} MB"
        checks.append(Check(f"node {node.id} memory", f"{node.memory_mb} MB (at least {MEMORY_TOLERANCE:.0%})",
                            found_mem, kb is not None and kb // 1024 >= node.memory_mb * MEMORY_TOLERANCE))
    for node_id in sorted(set(facts.nodes) - {n.id for n in topo.nodes}):
        checks.append(Check(f"node {node_id} CPUs", "not in the inventory", format_cpulist(facts.nodes[node_id]),
                            False))
    want_l3 = topo.l3_cache_mb * 1024
    for socket in sorted(facts.l3_kb) or [0]:
        kb = facts.l3_kb.get(socket)
        checks.append(Check(f"socket {socket} L3", f"{topo.l3_cache_mb} MB",
                            "missing" if kb is None else f"{kb / 1024:g} MB", kb == want_l3))
    # Evidence, not requirements: the spec needs no device passthrough.
    iommu = ", ".join(facts.iommu) or ("on in kernel cmdline" if facts.iommu_enabled else "not enabled")
    checks.append(Check("IOMMU", "(reported)", iommu, True))
    dmi = facts.dmi
    checks.append(Check("BIOS", "(reported)", f"{dmi.get('bios_vendor') or '?'} {dmi.get('bios_version') or '?'} "
                        f"({dmi.get('bios_date') or '?'}), {dmi.get('product_name') or '?'}", True))
    return checks


@dataclass(frozen=True)
class BiosFacts:
    """The hardware (lib/facts/host.py) and the features the optional VM settings need (lib/facts/perf.py)."""

    host: HostFacts
    perf: PerfFacts


class BiosCheck(Step):
    name = "bios.check"
    summary = "read-only: VT-x/AMD-V, /dev/kvm, SMT, sockets x cores x threads, NUMA, L3, IOMMU, BIOS"
    mismatch_exit = 3

    def facts_command(self, target: Target) -> Command:
        sysroot = target.loaded.host.sysroot
        return joined(host_facts_command(sysroot), perf_facts_command(sysroot))

    def parse(self, target: Target, result: CmdResult | None) -> BiosFacts:
        out, sysroot = result.stdout if result else "", target.loaded.host.sysroot
        return BiosFacts(parse_host_facts(out, sysroot), parse_perf_facts(out, sysroot))

    def plan(self, target: Target, facts: BiosFacts | None) -> Plan:
        warnings = virtualization_warnings(target.loaded.host, facts.host) if facts else []
        return Plan(reason="read-only check", warnings=tuple(warnings))

    def verify(self, target: Target, facts: BiosFacts) -> list[Check]:
        return topology_checks(target.loaded.host, facts.host) + bios_perf_checks(target.loaded.host, facts.perf)
