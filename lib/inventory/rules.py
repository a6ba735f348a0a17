"""Inventory rules that relate several fields: pins, NUMA, memory, disks, k3s roles.

Each rule has a stable id (the first element of every Finding). Rules are plain functions over a
schema-valid Host; they yield every problem they see so an operator fixes them all in one pass.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

from lib.cpuset import format_cpulist
from lib.errors import Severity
from lib.inventory.model import VM, Host
from lib.pinplan import Core


@dataclass(frozen=True)
class Finding:
    rule: str
    path: str
    message: str
    severity: Severity = "error"


def _vm(i: int, vm: VM) -> str:
    return f"vms[{i}] ({vm.name})"


def check_topology(host: Host) -> Iterator[Finding]:
    topo = host.topology
    seen_ids: set[int] = set()
    owner: dict[int, int] = {}
    for k, node in enumerate(topo.nodes):
        if node.id in seen_ids:
            yield Finding("topology.nodes", f"topology.nodes[{k}].id", f"node id {node.id} is listed twice")
        seen_ids.add(node.id)
        for cpu in sorted(node.cpu_set):
            if cpu in owner and owner[cpu] != node.id:
                yield Finding("topology.cpus", f"topology.nodes[{k}].cpus",
                              f"CPU {cpu} is in node {owner[cpu]} and node {node.id}")
            owner.setdefault(cpu, node.id)
    if len(topo.all_cpus) != topo.cpu_count:
        yield Finding(
            "topology.cpus", "topology.nodes",
            f"the nodes hold {len(topo.all_cpus)} CPUs, but {topo.sockets} sockets x {topo.cores_per_socket} "
            f"cores x {topo.threads_per_core} threads = {topo.cpu_count}",
        )
    unknown = host.reserved_cpus - topo.all_cpus
    if unknown:
        yield Finding("pins.unknown-cpu", "host_reserved_cpus",
                      f"CPUs {format_cpulist(unknown)} do not exist on this host ({format_cpulist(topo.all_cpus)})")


def check_vm_pins(host: Host) -> Iterator[Finding]:
    """Pins of each VM on their own: count, duplicates, CPUs that exist, CPUs on the VM's nodes."""
    topo = host.topology
    cpus = topo.all_cpus
    for i, vm in enumerate(host.vms):
        base = f"vms[{i}].tuning"
        pins = vm.pins
        if len(pins) != vm.vcpu_count:
            yield Finding("pins.count", f"{base}.vcpu_pins",
                          f"vcpu_count is {vm.vcpu_count} but {len(pins)} pins are given; "
                          "every vCPU needs exactly one pin")
        first: dict[int, int] = {}
        for j, cpu in enumerate(pins):
            if cpu in first:
                yield Finding("pins.duplicate", f"{base}.vcpu_pins[{j}]",
                              f"CPU {cpu} is pinned to vCPU {first[cpu]} and vCPU {j}; each vCPU needs its own CPU")
            first.setdefault(cpu, j)
        nodes = vm.tuning.numa_memory.nodes
        missing_nodes = nodes - {n.id for n in topo.nodes}
        if missing_nodes:
            yield Finding("numa.unknown-node", f"{base}.numa_memory.nodeset",
                          f"NUMA node(s) {format_cpulist(missing_nodes)} do not exist on this host "
                          f"(nodes {format_cpulist(n.id for n in topo.nodes)})")
        strict = vm.tuning.numa_memory.mode == "strict"
        nodeset = vm.tuning.numa_memory.nodeset
        for j, cpu in enumerate(pins):
            if cpu not in cpus:
                yield Finding("pins.unknown-cpu", f"{base}.vcpu_pins[{j}]",
                              f"CPU {cpu} does not exist on this host (CPUs {format_cpulist(cpus)})")
            elif strict and topo.node_of_cpu[cpu] not in nodes:
                yield Finding("pins.numa", f"{base}.vcpu_pins[{j}]",
                              f"CPU {cpu} is on NUMA node {topo.node_of_cpu[cpu]}, but numa_memory.nodeset is "
                              f"{nodeset}")
        for cpu in sorted(vm.tuning.emulator_cpus):
            if cpu not in cpus:
                yield Finding("pins.unknown-cpu", f"{base}.emulator_cpuset",
                              f"CPU {cpu} does not exist on this host (CPUs {format_cpulist(cpus)})")
            elif strict and topo.node_of_cpu[cpu] not in nodes:
                yield Finding("pins.numa", f"{base}.emulator_cpuset",
                              f"emulator CPU {cpu} is on NUMA node {topo.node_of_cpu[cpu]}, but "
                              f"numa_memory.nodeset is {nodeset}")


def check_shared_pins(host: Host, cores: list[Core]) -> Iterator[Finding]:
    """Pins across VMs: no CPU is two VMs' vCPU, emulators and host stay off vCPU CPUs."""
    owner: dict[int, int] = {}
    for i, vm in enumerate(host.vms):
        for j, cpu in enumerate(vm.pins):
            if cpu in owner and owner[cpu] != i:
                k = owner[cpu]
                yield Finding("pins.shared", f"vms[{i}].tuning.vcpu_pins[{j}]",
                              f"CPU {cpu} is already a vCPU pin of {_vm(k, host.vms[k])}")
            owner.setdefault(cpu, i)
    for i, vm in enumerate(host.vms):
        clash = vm.tuning.emulator_cpus & owner.keys()
        for k in sorted({owner[c] for c in clash}):
            theirs = frozenset(c for c in clash if owner[c] == k)
            yield Finding("pins.emulator-overlap", f"vms[{i}].tuning.emulator_cpuset",
                          f"CPUs {format_cpulist(theirs)} are vCPU pins of {_vm(k, host.vms[k])}; emulator "
                          "threads must not run on vCPU CPUs")
    reserved = host.reserved_cpus
    for cpu in sorted(reserved & owner.keys()):
        k = owner[cpu]
        yield Finding("pins.host-overlap", "host_reserved_cpus",
                      f"CPU {cpu} is reserved for the host but is a vCPU pin of {_vm(k, host.vms[k])}")
    # Noisy neighbour: one thread of a core to one VM, its sibling to another VM.
    for core in cores:
        owners = {owner[t] for t in core.threads if t in owner}
        if len(owners) < 2:
            continue
        for t in core.threads:
            if t not in owner:
                continue
            i = owner[t]
            others = [f"CPU {s} of {_vm(owner[s], host.vms[owner[s]])}" for s in core.threads
                      if s in owner and owner[s] != i]
            j = host.vms[i].pins.index(t)
            yield Finding("pins.sibling-split", f"vms[{i}].tuning.vcpu_pins[{j}]",
                          f"CPU {t} shares a core with {', '.join(others)}: noisy neighbour", "warning")


def check_memory(host: Host) -> Iterator[Finding]:
    # Exact fractions: a float overflows on a huge (mistyped) memory_mb instead of saying it does not fit.
    demand: dict[int, Fraction] = defaultdict(Fraction)
    users: dict[int, list[str]] = defaultdict(list)
    for vm in host.vms:
        nodes = vm.tuning.numa_memory.nodes
        for node_id in nodes:
            # A VM bound to several nodes spreads its memory over them.
            demand[node_id] += Fraction(vm.memory_mb, len(nodes))
            users[node_id].append(f"{vm.name} {vm.memory_mb // len(nodes)}")
    reserve = host.host_reserved_memory_mb
    for k, node in enumerate(host.topology.nodes):
        need = int(demand.get(node.id, 0))
        if need and need + reserve > node.memory_mb:
            yield Finding(
                "memory.fit", f"topology.nodes[{k}].memory_mb",
                f"node {node.id}: VMs need {need} MB ({', '.join(users[node.id])}) + {reserve} MB host reserve = "
                f"{need + reserve} MB, more than the node's {node.memory_mb} MB",
            )


def check_disks(host: Host) -> Iterator[Finding]:
    seen: dict[str, str] = {}
    bases: dict[str, int] = {}
    for i, vm in enumerate(host.vms):
        bases.setdefault(vm.base_image_path, i)
    for i, vm in enumerate(host.vms):
        paths = [(f"vms[{i}].disk_path", vm.disk_path), (f"vms[{i}].cloud_init_iso_path", vm.cloud_init_iso_path)]
        paths += [(f"vms[{i}].disks[{k}].path", d.path) for k, d in enumerate(vm.disks)]
        for where, path in paths:
            if path in seen:
                yield Finding("disk.duplicate", where, f"{path} is also {seen[path]}")
            seen.setdefault(path, where)
            if path in bases:
                b = bases[path]
                yield Finding("disk.base-image", where,
                              f"{path} is the base image of {_vm(b, host.vms[b])}; it must never be a VM's own disk")
        # virt-install reads ",name=value" inside --disk path=... and --boot kernel=... as another
        # sub-option, and a bare ",part" as an unknown one; it has no escape for a comma.
        given = list(paths)
        given += [(f"vms[{i}].disks[{k}].device", d.device) for k, d in enumerate(vm.disks) if d.device]
        if vm.boot:
            given += [(f"vms[{i}].boot.kernel", vm.boot.kernel), (f"vms[{i}].boot.initrd", vm.boot.initrd)]
        for where, path in given:
            if "," in path:
                yield Finding("path.comma", where, f"{path!r} contains ',', which virt-install would read as the "
                                                   "start of another disk or boot option")
        targets: dict[str, int] = {}
        for k, d in enumerate(vm.disks):
            if d.target in targets:
                yield Finding("disk.target", f"vms[{i}].disks[{k}].target",
                              f"{d.target} is also the target of vms[{i}].disks[{targets[d.target]}]")
            targets.setdefault(d.target, k)


def check_names(host: Host) -> Iterator[Finding]:
    first: dict[str, int] = {}
    for i, vm in enumerate(host.vms):
        if vm.name in first:
            yield Finding("name.duplicate", f"vms[{i}].name", f"{vm.name!r} is also the name of vms[{first[vm.name]}]")
        first.setdefault(vm.name, i)
    macs: dict[str, int] = {}
    for i, vm in enumerate(host.vms):
        mac = vm.mac_address
        if mac in macs:
            how = "set" if vm.mac else "derived from the name"
            yield Finding("mac.duplicate", f"vms[{i}].mac",
                          f"MAC {mac} ({how}) is also the MAC of vms[{macs[mac]}] ({host.vms[macs[mac]].name}); "
                          "give one of them an explicit mac:")
        macs.setdefault(mac, i)


def check_k3s(host: Host) -> Iterator[Finding]:
    members = [vm for vm in host.vms if vm.k8s]
    if not members:
        return
    servers = [vm.name for vm in members if vm.k8s and vm.k8s.role == "server"]
    if len(servers) % 2 == 0:
        found = f"{len(servers)} ({', '.join(servers)})" if servers else "none"
        yield Finding("k3s.server-count", "vms",
                      f"a k3s cluster needs exactly one server, or an odd number for HA; found {found}")


def check_host(host: Host, cores: list[Core]) -> Iterator[Finding]:
    yield from check_names(host)
    yield from check_vm_pins(host)
    shared = check_shared_pins(host, cores)
    if host.pin_sharing == "allow":
        shared = (Finding(f.rule, f.path, f"{f.message} (pin_sharing: allow)", "warning") for f in shared)
    yield from shared
    yield from check_memory(host)
    yield from check_disks(host)
    yield from check_k3s(host)
