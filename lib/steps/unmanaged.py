"""vms.unmanaged: domains this tool defined for the host that the inventory no longer lists.

A VM removed from the inventory is never deleted by provision (only `teardown` deletes, and only
what the inventory lists): it is reported, and while it runs its pins and memory still count. A VM
added to the inventory is created by vms.define; here it is first checked against those running
leftovers (the inventory rules already checked it against every listed VM).
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass

from lib.cpuset import format_cpulist
from lib.domain import DomainSpec, parse_domain_xml
from lib.inventory.model import Host
from lib.reads import Answers
from lib.results import Check
from lib.shell import Command, sh
from lib.steps.base import Plan, Step, StepMismatch, Target
from lib.steps.virt import owner_mark

_MARK = "@@numa-k3s-domain@@"


@dataclass(frozen=True)
class Leftover:
    state: str
    domain: DomainSpec


@dataclass(frozen=True)
class DomainsFacts:
    defined: frozenset[str]  # every domain name libvirt knows
    ours: dict[str, Leftover]  # domains carrying our mark, by name


def parse_domains(stdout: str) -> DomainsFacts:
    head, *blocks = stdout.split(_MARK + "\n")
    ours: dict[str, Leftover] = {}
    for block in blocks:
        name, state, xml = [*block.split("\n", 2), "", ""][:3]
        with contextlib.suppress(ET.ParseError):  # undefined while we read it: nothing left to count
            ours[name.strip()] = Leftover(state.strip(), parse_domain_xml(xml))
    return DomainsFacts(frozenset(head.split()), ours)


def conflicts(host: Host, facts: DomainsFacts) -> list[Check]:
    """Pure: the inventory's new VMs against running unmanaged domains: shared vCPU CPUs, memory per node."""
    listed = {vm.name for vm in host.vms}
    running = {n: d.domain for n, d in facts.ours.items() if n not in listed and d.state in ("running", "paused")}
    new = [vm for vm in host.vms if vm.name not in facts.defined]
    checks: list[Check] = []
    if not new or not running:
        return checks
    taken = {cpu: name for name, dom in running.items() for pins in dom.vcpu_pins.values() for cpu in pins}
    for vm in new:
        clash = sorted((set(vm.pins) | vm.tuning.emulator_cpus) & taken.keys())
        if clash:
            who = ", ".join(sorted({taken[c] for c in clash}))
            checks.append(Check(f"{vm.name} CPUs", "free of running unmanaged domains",
                                f"CPU(s) {format_cpulist(frozenset(clash))} are vCPU pins of {who}", False))
    demand: dict[int, float] = defaultdict(float)
    for vm in host.vms:
        for node in vm.tuning.numa_memory.nodes:
            demand[node] += vm.memory_mb / len(vm.tuning.numa_memory.nodes)
    for dom in running.values():
        for node in dom.numa_nodes:
            demand[node] += dom.memory_mb / len(dom.numa_nodes)
    for numa in host.topology.nodes:
        need = int(demand.get(numa.id, 0)) + host.host_reserved_memory_mb
        if need > numa.memory_mb and any(numa.id in vm.tuning.numa_memory.nodes for vm in new):
            checks.append(Check(f"node {numa.id} memory", f"at most {numa.memory_mb} MB",
                                f"{need} MB with the running unmanaged domain(s) {', '.join(sorted(running))} "
                                "and the host reserve", False))
    return checks


class VmsUnmanaged(Step[DomainsFacts]):
    name = "vms.unmanaged"
    summary = "report domains we defined that the inventory no longer lists (never deleted); new VMs fit beside them"
    targets = "hypervisor"

    def facts_command(self, target: Target) -> Command:
        return sh('for d in $(virsh -c {uri} list --all --name); do echo "$d"; done; '
                  'for d in $(virsh -c {uri} list --all --name); do '
                  'if [ "$(virsh -c {uri} desc "$d" 2>/dev/null)" = {mark} ]; then echo {sep}; echo "$d"; '
                  'virsh -c {uri} domstate "$d"; virsh -c {uri} dumpxml --inactive "$d"; fi; done; true',
                  uri=target.loaded.host.libvirt_uri, mark=owner_mark(target.loaded.name), sep=_MARK, timeout=120,
                  why="the domains this tool defined for the host")

    def parse(self, target: Target, answers: Answers) -> DomainsFacts:
        return parse_domains(answers.stdout())

    def _unmanaged(self, target: Target, facts: DomainsFacts) -> dict[str, Leftover]:
        listed = {vm.name for vm in target.loaded.host.vms}
        return {n: d for n, d in sorted(facts.ours.items()) if n not in listed}

    def plan(self, target: Target, facts: DomainsFacts | None) -> Plan:
        if facts is None:
            return Plan(reason="offline: unmanaged domains are found on the hypervisor")
        host = target.loaded.host
        bad = conflicts(host, facts)
        if bad and (host.pin_sharing != "allow" or any(c.name.endswith("memory") for c in bad)):
            raise StepMismatch(bad, message=(
                "a VM added to the inventory does not fit beside the running unmanaged domain(s); nothing was "
                "created: change its pins or memory, or stop the unmanaged domain"))
        left = self._unmanaged(target, facts)
        warnings = tuple(f"{c.name}: {c.found} (pin_sharing: allow)" for c in bad)
        if not left:
            return Plan(reason="every domain defined for this host is in the inventory", warnings=warnings)
        return Plan(reason="unmanaged, left as they are (only teardown deletes, and only listed VMs): " +
                    ", ".join(f"{n} ({d.state})" for n, d in left.items()), warnings=warnings)

    def verify(self, target: Target, facts: DomainsFacts) -> list[Check]:
        return [Check.warn(f"unmanaged domain {name}", "listed in the inventory",
                           f"not listed, {d.state}: never deleted by provision")
                for name, d in self._unmanaged(target, facts).items()]
