"""Inventory rules that relate several fields: pins, NUMA, memory, disks, k3s roles.

Each rule has a stable id (the first element of every Finding). Rules are plain functions over a
schema-valid Host; they yield every problem they see so an operator fixes them all in one pass.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from ipaddress import IPv4Address

from lib import taints
from lib.cores import socket_of, unpaired_whole_cores
from lib.cpuset import format_cpulist, parse_cpulist
from lib.errors import Severity
from lib.inventory.model import VM, Host, Topology
from lib.pinplan import Core, LayoutError, layout_problems, layout_threads


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
    yield from check_layout(host)


def shape_name(topo: Topology) -> str:
    return f"{topo.sockets}x{topo.cores_per_socket}x{topo.threads_per_core}"


def inventory_threads(topo: Topology) -> list[tuple[int, ...]]:
    """The inventory's cores, each as its CPUs: from the named layout or the listed sibling sets."""
    if topo.sibling_layout == "listed":
        return [tuple(sorted(parse_cpulist(text))) for text in topo.sibling_sets or ()]
    return layout_threads(topo.sockets, topo.cores_per_socket, topo.threads_per_core, topo.sibling_layout)


def check_sibling_sets(topo: Topology) -> Iterator[Finding]:
    where = "topology.sibling_sets"
    if topo.sibling_layout != "listed":
        if topo.sibling_sets is not None:
            yield Finding("topology.sibling-sets", where, f"sibling_sets are read only with sibling_layout: listed, "
                          f"but the layout is {topo.sibling_layout}; drop them or say listed")
        return
    if not topo.sibling_sets:
        yield Finding("topology.sibling-sets", where, "sibling_layout: listed needs sibling_sets, one cpulist per "
                      "core (as cpuN/topology/core_cpus_list shows them)")
        return
    want = topo.sockets * topo.cores_per_socket
    if len(topo.sibling_sets) != want:
        yield Finding("topology.sibling-sets", where, f"{len(topo.sibling_sets)} sibling sets, but "
                      f"{topo.sockets} sockets x {topo.cores_per_socket} cores = {want} cores")
    first: dict[int, int] = {}
    for k, text in enumerate(topo.sibling_sets):
        cpus = parse_cpulist(text)
        if len(cpus) != topo.threads_per_core:
            yield Finding("topology.sibling-sets", f"{where}[{k}]", f"core {text!r} has {len(cpus)} threads, but "
                          f"threads_per_core is {topo.threads_per_core}")
        for cpu in sorted(cpus):
            if cpu in first:
                yield Finding("topology.sibling-sets", f"{where}[{k}]",
                              f"CPU {cpu} is in sibling set {first[cpu]} and sibling set {k}")
            first.setdefault(cpu, k)


def check_layout(host: Host) -> Iterator[Finding]:
    """The cores the layout (or the listed sibling sets) makes must fit the nodes' cpulists."""
    topo = host.topology
    listed = list(check_sibling_sets(topo))
    yield from listed
    # With the wrong number of CPUs check_topology has said so; a mistyped "sockets: 100000" must
    # not build millions of cores to say more.
    if listed or len(topo.all_cpus) != topo.cpu_count:
        return
    try:
        threads = inventory_threads(topo)
    except LayoutError as exc:  # unreachable through the schema (Literal layouts, positive counts)
        yield from (Finding(p.rule, "topology", p.message) for p in exc.problems)
        return
    path = "topology.sibling_sets" if topo.sibling_layout == "listed" else "topology.sibling_layout"
    for problem in layout_problems(threads, {n.id: n.cpu_set for n in topo.nodes}, shape_name(topo)):
        if problem.rule != "topology.cpus":  # a CPU in two nodes: check_topology has said it
            yield Finding(problem.rule, path if problem.rule == "topology.core-nodes" else "topology.nodes",
                          problem.message + ("" if problem.rule != "topology.core-nodes"
                                             else f" (sibling_layout: {topo.sibling_layout})"))


def check_vm_pins(host: Host) -> Iterator[Finding]:
    """Pins of each VM on their own: count, duplicates, CPUs that exist, CPUs on the VM's nodes."""
    topo = host.topology
    cpus = topo.all_cpus
    for i, vm in enumerate(host.vms):
        base = f"vms[{i}].tuning"
        pins = vm.pins
        # No pins at all means the planner refused this VM: its pins.plan error says why.
        if vm.tuning.vcpu_pins is not None and len(pins) != vm.vcpu_count:
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
    first: dict[int, int] = {}  # CPU -> its index in its first owner's vcpu_pins
    for i, vm in enumerate(host.vms):
        for j, cpu in enumerate(vm.pins):
            if cpu in owner and owner[cpu] != i:
                k = owner[cpu]
                # Both sides: the operator may have changed either VM, and the later one is flagged.
                yield Finding("pins.shared", f"vms[{i}].tuning.vcpu_pins[{j}]",
                              f"this field and {_vm(k, host.vms[k])}.tuning.vcpu_pins[{first[cpu]}] both pin CPU "
                              f"{cpu} (change either): CPU {cpu} is already a vCPU pin of {_vm(k, host.vms[k])}")
            owner.setdefault(cpu, i)
            first.setdefault(cpu, j)
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
    """Per node: VMs on normal pages + the hugepage reservation + the host reserve fit the node, and
    the VMs backed by hugepages fit the reservation."""
    # Exact fractions: a float overflows on a huge (mistyped) memory_mb instead of saying it does not fit.
    demand: dict[int, Fraction] = defaultdict(Fraction)
    huge_demand: dict[int, Fraction] = defaultdict(Fraction)
    users: dict[int, list[str]] = defaultdict(list)
    huge_users: dict[int, list[str]] = defaultdict(list)
    for vm in host.vms:
        nodes = vm.tuning.numa_memory.nodes
        for node_id in nodes:
            # A VM bound to several nodes spreads its memory over them.
            share = Fraction(vm.memory_mb, len(nodes))
            (huge_demand if vm.tuning.hugepages else demand)[node_id] += share
            (huge_users if vm.tuning.hugepages else users)[node_id].append(f"{vm.name} {vm.memory_mb // len(nodes)}")
    reserved = {r.node: r.mb for r in host.hugepages}
    reserve = host.host_reserved_memory_mb
    for k, node in enumerate(host.topology.nodes):
        need = int(demand.get(node.id, 0))
        pages = reserved.get(node.id, 0)
        if (need or pages) and need + pages + reserve > node.memory_mb:
            who = f"VMs need {need} MB ({', '.join(users[node.id])}) + " if need else ""
            yield Finding(
                "memory.fit", f"topology.nodes[{k}].memory_mb",
                f"node {node.id}: {who}{pages} MB hugepages + {reserve} MB host reserve = "
                f"{need + pages + reserve} MB, more than the node's {node.memory_mb} MB"
                if pages else f"node {node.id}: {who}{reserve} MB host reserve = "
                f"{need + reserve} MB, more than the node's {node.memory_mb} MB",
            )
        huge = int(huge_demand.get(node.id, 0))
        if huge > pages:
            yield Finding(
                "memory.hugepages", "hugepages",
                f"node {node.id}: VMs backed by hugepages need {huge} MB ({', '.join(huge_users[node.id])}), "
                f"but only {pages} MB of hugepages are reserved there")


def check_hugepages(host: Host) -> Iterator[Finding]:
    nodes = {n.id for n in host.topology.nodes}
    seen: set[int] = set()
    for k, r in enumerate(host.hugepages):
        if r.node not in nodes:
            yield Finding("numa.unknown-node", f"hugepages[{k}].node", f"NUMA node {r.node} does not exist on this "
                          f"host (nodes {format_cpulist(nodes)})")
        if r.node in seen:
            yield Finding("memory.hugepages", f"hugepages[{k}].node",
                          f"node {r.node} is listed twice: one hugepage size per node")
        seen.add(r.node)


def check_guest_topology(host: Host, cores: list[Core]) -> Iterator[Finding]:
    """An SMT host whose pins hold whole cores out of (2k, 2k+1) order: the guest is told threads=1."""
    for i, vm in enumerate(host.vms):
        unpaired = unpaired_whole_cores(vm.pins, cores)
        if unpaired:
            pairs = ", ".join(f"{c.threads[0]}+{c.threads[1]}" for c in unpaired[:4])
            yield Finding("topology.unpaired-siblings", f"vms[{i}].tuning.vcpu_pins",
                          f"the pins hold both threads of {len(unpaired)} core(s) ({pairs}"
                          f"{', ...' if len(unpaired) > 4 else ''}) but not on vCPUs 2k, 2k+1: the guest sees "
                          "threads=1; list each core's two threads next to each other to give it threads=2",
                          "warning")


def check_l3(host: Host, cores: list[Core]) -> Iterator[Finding]:
    """Exclusive L3 per socket leaves some L3 to the host: resctrl's default group keeps at least one way."""
    per_socket: dict[int, list[tuple[int, VM]]] = defaultdict(list)
    for i, vm in enumerate(host.vms):
        if vm.tuning.exclusive_l3_mb and vm.pins:
            per_socket[socket_of(vm.pins[0], cores, host.topology.cores_per_socket)].append((i, vm))
    l3 = host.topology.l3_cache_mb
    for socket, vms in sorted(per_socket.items()):
        total = sum(vm.tuning.exclusive_l3_mb or 0 for _, vm in vms)
        # No L3 size in the inventory: nothing to compare here; bios.check reports resctrl's absence.
        if l3 is not None and total >= l3:
            i = vms[-1][0]
            asked = ", ".join(f"{vm.name} {vm.tuning.exclusive_l3_mb} MB" for _, vm in vms)
            yield Finding("l3.exclusive", f"vms[{i}].tuning.exclusive_l3_mb",
                          f"socket {socket}: exclusive L3 of {asked} = {total} MB leaves nothing of its {l3} MB "
                          "L3 to the host and the emulators")


# Trees of the host's own system: never a storage root, whatever the inventory says.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run",
                "/sbin", "/sys", "/usr", "/var/lib/dpkg", "/var/lib/rpm", "/var/log")
# Roots wider than any image directory: they hold every service's state (and /var/lib/dpkg, ...).
TOO_WIDE = ("/", "/home", "/var", "/var/lib")
# A data disk mounted over one of these inside the guest would hide the guest's own system.
GUEST_SYSTEM = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/root", "/run",
                "/sbin", "/sys", "/tmp", "/usr", "/var")


def _under(path: str, root: str) -> bool:
    """Strictly inside root (both in normal form, as the model stores every path)."""
    return path != root and path.startswith(root.rstrip("/") + "/")


def _in_tree(path: str, tree: str) -> bool:
    """path is tree or inside it; "/" as a tree is only itself (every path is inside it)."""
    return path == tree or (tree != "/" and _under(path, tree))


def _owned_paths(i: int, vm: VM) -> list[tuple[str, str]]:
    """The files the tool creates, replaces and deletes for one VM: (field path, normal path)."""
    paths = [(f"vms[{i}].disk_path", vm.disk_path), (f"vms[{i}].cloud_init_iso_path", vm.cloud_init_iso_path)]
    # A device disk's path is unused today; checked all the same, so no later use can reach outside.
    return paths + [(f"vms[{i}].disks[{k}].path", d.path) for k, d in enumerate(vm.disks)]


def _field(host: Host, where: str) -> str:
    """vms[2].disk_path -> vms[2].disk_path (k3s-worker-slm): the other side of a clash, named."""
    match = re.match(r"vms\[(\d+)\]", where)
    return f"{where} ({host.vms[int(match[1])].name})" if match else where


def check_storage_roots(host: Host) -> Iterator[Finding]:
    for k, root in enumerate(host.storage_roots):
        if root in TOO_WIDE or any(_in_tree(root, tree) for tree in SYSTEM_TREES):
            yield Finding("path.storage-root", f"storage_roots[{k}]",
                          f"{root} is {'a system directory' if root not in TOO_WIDE else 'too wide'}: a storage root "
                          "holds only the tool's images, seeds and data disks; name a directory of its own, such as "
                          "/var/lib/libvirt/images or /srv/vms")


def check_disks(host: Host) -> Iterator[Finding]:
    """Every file the tool creates lies under a storage root, is no system file, and is one VM's alone.

    Paths arrive in normal form (model.normal_path): /var/lib/libvirt/images/./base.qcow2 and
    //var/lib/libvirt/images/base.qcow2 are the same string here, so one comparison sees them."""
    seen: dict[str, str] = {}
    bases: dict[str, int] = {}
    roots = ", ".join(host.storage_roots) or "(none)"
    for i, vm in enumerate(host.vms):
        bases.setdefault(vm.base_image_path, i)
    everything = [p for i, vm in enumerate(host.vms) for p in _owned_paths(i, vm)]
    for i, vm in enumerate(host.vms):
        paths = _owned_paths(i, vm)
        if not any(_under(vm.base_image_path, r) for r in host.storage_roots):
            yield Finding("path.outside-roots", f"vms[{i}].base_image_path",
                          f"{vm.base_image_path} is not under a storage root ({roots}); put the base image there "
                          "or add its directory to storage_roots")
        for where, path in paths:
            if any(_in_tree(path, tree) for tree in SYSTEM_TREES):
                yield Finding("path.system", where, f"{path} is in the host's system tree: the tool would create, "
                                                    f"overwrite and delete it; put it under a storage root ({roots})")
            elif not any(_under(path, r) for r in host.storage_roots):
                yield Finding("path.outside-roots", where,
                              f"{path} is not under a storage root ({roots}): the tool creates, replaces and deletes "
                              "only there; move it under one, or add its directory to storage_roots")
            if path in seen:
                yield Finding("disk.duplicate", where, f"{path} is also {_field(host, seen[path])}, once both are "
                                                       "normalised; every VM file needs a path of its own")
            seen.setdefault(path, where)
            if path in bases:
                b = bases[path]
                yield Finding("disk.base-image", where,
                              f"{path} is the base image of {_vm(b, host.vms[b])}; it must never be a VM's own disk or "
                              "seed (compared normalised)")
            inside = next((w for w, p in everything if _under(p, path)), None)
            if inside:
                yield Finding("path.nested", where, f"{path} is a directory of {_field(host, inside)}; a disk or "
                                                    "seed is a file, never another's directory")


def check_disk_options(host: Host) -> Iterator[Finding]:
    for i, vm in enumerate(host.vms):
        paths = _owned_paths(i, vm)
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
            if any(_in_tree(d.mount, tree) for tree in GUEST_SYSTEM):
                yield Finding("disk.mount", f"vms[{i}].disks[{k}].mount",
                              f"{d.mount} is a system directory of the guest: mounting the disk there hides it; "
                              "mount data under a directory of its own, such as /data/hot")


def check_devices(host: Host) -> Iterator[Finding]:
    """A block device only from the host's explicit allow-list, and each to one disk of one VM."""
    allowed = ", ".join(host.block_devices) or "none"
    for k, dev in enumerate(host.block_devices):
        if not _under(dev, "/dev"):
            yield Finding("disk.device", f"block_devices[{k}]", f"{dev} is not under /dev: list block devices "
                                                                 "such as /dev/disk/by-id/... here")
    owner: dict[str, str] = {}
    for i, vm in enumerate(host.vms):
        for k, d in enumerate(vm.disks):
            if not d.device:
                continue
            where = f"vms[{i}].disks[{k}].device"
            if d.device not in host.block_devices:
                yield Finding("disk.device", where,
                              f"{d.device} is not in block_devices (allowed: {allowed}); a VM gets a whole device "
                              "only when the host lists it: add it to block_devices if it is meant for this VM")
            if d.device in owner:
                yield Finding("disk.device-shared", where, f"{d.device} is also {_field(host, owner[d.device])}; "
                                                           "two disks on one device overwrite each other's data")
            owner.setdefault(d.device, where)


def check_lab_only(host: Host) -> Iterator[Finding]:
    """Settings made for the test machine's lab, which on a production host expose it or bypass the bridge."""
    for i, vm in enumerate(host.vms):
        if vm.user_nic and vm.user_nic.listen != IPv4Address("127.0.0.1") and not vm.user_nic.listen.is_loopback:
            yield Finding("lab.listen", f"vms[{i}].user_nic.listen",
                          f"{vm.user_nic.listen} is not a loopback address: the VM's SSH (and forwards) would be "
                          "open to the network; use 127.0.0.1")
        if host.lab:
            continue
        if vm.boot and vm.boot.host_root:
            yield Finding("lab.only", f"vms[{i}].boot.host_root",
                          "host_root shares the hypervisor's own / with the guest over 9p: a lab setting; remove it, "
                          "or mark the host as a lab with `lab: true` if it is one")
        elif vm.boot:
            yield Finding("lab.only", f"vms[{i}].boot",
                          "kernel/initrd boot is a lab setting (the lab's tiny guests); a production VM boots its "
                          "disk: remove boot:, or mark the host as a lab with `lab: true` if it is one")
        if vm.user_nic:
            yield Finding("lab.only", f"vms[{i}].user_nic",
                          "a user-mode NIC is a lab setting and replaces the bridge "
                          f"({vm.bridge_network_interface}); remove user_nic, or mark the host as a lab with "
                          "`lab: true` if it is one")


def check_network(host: Host) -> Iterator[Finding]:
    """Static addresses: one per VM, never the gateway, never the subnet's own addresses; the gateway
    inside the subnet."""
    first: dict[IPv4Address, int] = {}
    for i, vm in enumerate(host.vms):
        net = vm.network
        if net is None:
            continue
        ip, subnet = net.address.ip, net.address.network
        where = f"vms[{i}].network.address"
        if ip in first:
            yield Finding("network.duplicate", where,
                          f"{ip} is also the address of {_vm(first[ip], host.vms[first[ip]])}; give each VM its own")
        first.setdefault(ip, i)
        if subnet.prefixlen < 31 and ip in (subnet.network_address, subnet.broadcast_address):
            which = "network" if ip == subnet.network_address else "broadcast"
            yield Finding("network.address", where, f"{ip} is the {which} address of {subnet}; give the VM a host "
                                                    "address")
        if net.gateway is not None:
            if net.gateway == ip:
                yield Finding("network.gateway", f"vms[{i}].network.gateway",
                              f"the gateway {net.gateway} is the VM's own address ({where}); use the router's address")
            elif net.gateway not in subnet:
                yield Finding("network.gateway", f"vms[{i}].network.gateway",
                              f"the gateway {net.gateway} is outside the VM's subnet {subnet} ({where}); the VM "
                              "could not reach it: use an address inside the subnet")
    for i, vm in enumerate(host.vms):  # another VM's address as this VM's gateway
        net = vm.network
        if net is not None and net.gateway in first and first[net.gateway] != i:
            k = first[net.gateway]
            yield Finding("network.gateway", f"vms[{i}].network.gateway",
                          f"the gateway {net.gateway} is the address of {_vm(k, host.vms[k])}; use the router's "
                          "address")


def check_endpoints(host: Host) -> Iterator[Finding]:
    """Two VMs reached at one SSH endpoint, or forwarding one host port: steps meant for one VM
    would run on the other."""
    ssh: dict[tuple[str, int], int] = {}
    ports: dict[int, str] = {}
    for i, vm in enumerate(host.vms):
        if vm.ssh and vm.ssh.host:
            key = (vm.ssh.host, vm.ssh.port)
            if key in ssh:
                k = ssh[key]
                yield Finding("ssh.duplicate", f"vms[{i}].ssh", f"{vm.ssh.host}:{vm.ssh.port} is also where "
                              f"{_vm(k, host.vms[k])} is reached: the steps for one VM would run on the other")
            ssh.setdefault(key, i)
        if vm.user_nic:
            wanted = [(f"vms[{i}].user_nic.host_port", vm.user_nic.host_port)]
            wanted += [(f"vms[{i}].user_nic.forwards", p) for p in vm.user_nic.forwards]
            for where, port in wanted:
                if port in ports:
                    yield Finding("nic.port-duplicate", where, f"host port {port} is also {_field(host, ports[port])}")
                ports.setdefault(port, where)


_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>[^/?#@]+)(?P<rest>[/?#].*)?")


def check_urls(host: Host) -> Iterator[Finding]:
    """What is fetched and piped to sh (install.sh) or run (the k3s binary) comes over https, unless
    the inventory opts in to a plain-http mirror; the k3s API is always https."""
    k3s = host.k3s
    fetched = [("k3s.install_script_url", k3s.install_script_url), ("k3s.download_url", k3s.download_url)]
    for where, url in [*fetched, ("k3s.server_url", k3s.server_url)]:
        if url is None:
            continue
        match = _URL.fullmatch(url)
        if not match or match["scheme"] not in ("https", "http"):
            yield Finding("url.invalid", where, f"{url!r} is not an https:// URL")
        elif match["scheme"] == "http" and (where == "k3s.server_url" or not k3s.allow_http_mirror):
            fix = ("k3s serves its API over https only" if where == "k3s.server_url" else
                   "what it fetches is run as root; use https, or set k3s.allow_http_mirror: true for a "
                   "plain-http mirror you trust (the plan then names it)")
            yield Finding("url.plain-http", where, f"{url} is plain http: {fix}")
    if k3s.allow_http_mirror and not any(u and u.startswith("http://") for _, u in fetched):
        yield Finding("url.plain-http", "k3s.allow_http_mirror",
                      "allow_http_mirror is true but no URL is plain http; remove it", "warning")


def check_libvirt_uri(host: Host) -> Iterator[Finding]:
    """libvirt on this hypervisor only: a remote URI (qemu+ssh://other/system) would define, start and
    destroy domains on another host than the one this file names."""
    # driver[+unix]:///path: no host part, and no transport that could lead to one (+ssh, +tcp, +tls).
    match = re.fullmatch(r"[a-z0-9]+(\+unix)?://(?P<host>[^/]*)(/.*)?", host.libvirt_uri)
    if not match or match["host"]:
        yield Finding("libvirt.uri", "libvirt_uri",
                      f"{host.libvirt_uri!r} is not a local libvirt URI: the tool acts on this hypervisor's own "
                      "libvirtd only; use qemu:///system")


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
    if len(servers) != 1:
        found = f"{len(servers)} ({', '.join(servers)})" if servers else "none"
        yield Finding("k3s.server-count", "vms",
                      f"a k3s cluster here has exactly one server; found {found}. Several servers (HA, embedded "
                      "etcd) are not built: every VM runs on this one hypervisor, so more servers add no failure "
                      "domain, only etcd quorum to lose; make one VM the server and the others agents")
    yield from check_addon_node(host, members)


def check_addon_node(host: Host, members: list[VM]) -> Iterator[Finding]:
    """k3s's packaged add-ons need a node whose taints they tolerate (k3s ships them tolerating only
    CriticalAddonsOnly and the control-plane/master taints), else CoreDNS and the rest stay Pending."""
    named = host.k3s.addon_node
    if named is not None and named not in {vm.name for vm in members}:
        yield Finding("k3s.addon-node", "k3s.addon_node",
                      f"{named!r} is not a k3s VM of this host (one of: {', '.join(vm.name for vm in members)})")
        return
    if named is not None or not taints.enabled_addons(host) or taints.addon_nodes(host):
        return
    blocking = []
    for vm in members:
        assert vm.k8s is not None
        first = taints.untolerated([taints.parse_taint(t) for t in vm.k8s.taints], taints.PACKAGED_TOLERATIONS)[0]
        blocking.append(f"{vm.name} has {first}")
    server = next((vm.name for vm in members if vm.k8s and vm.k8s.role == "server"), members[0].name)
    yield Finding("k3s.addons-no-node", "vms",
                  "no node takes k3s's packaged add-ons (CoreDNS, metrics-server, local-path-provisioner, "
                  "Traefik): they tolerate only CriticalAddonsOnly and the control-plane taint, and "
                  f"{'; '.join(blocking)}; "
                  f"they would stay Pending and cluster DNS would not answer. Resolve: set k3s.addon_node: {server} "
                  "(kube-system then tolerates that node's taints; the taints stay as written), or list the add-ons "
                  "under k3s.disable and deploy your own")


LOCK_DIRS = ("/run/lock", "/var/lock")


def check_lock_path(host: Host) -> Iterator[Finding]:
    """The lock lives where locks live: a typo there must not make the tool write over a system file.

    Compared after normalising (`.`, `..`, `//`), so `/run/lock/../../etc/x` is not under /run/lock."""
    path = posixpath.normpath(host.lock_path)
    if not any(path.startswith(d + "/") for d in LOCK_DIRS):
        yield Finding("lock.path", "lock_path", f"{host.lock_path} is not in a directory meant for locks: put it "
                      "under /run/lock or /var/lock (the default is /run/lock/numa-k3s.lock)")


def check_host(host: Host, cores: list[Core]) -> Iterator[Finding]:
    yield from check_names(host)
    yield from check_lock_path(host)
    yield from check_vm_pins(host)
    shared = check_shared_pins(host, cores)
    if host.pin_sharing == "allow":
        shared = (Finding(f.rule, f.path, f"{f.message} (pin_sharing: allow)", "warning") for f in shared)
    yield from shared
    yield from check_hugepages(host)
    yield from check_memory(host)
    yield from check_guest_topology(host, cores)
    yield from check_l3(host, cores)
    yield from check_storage_roots(host)
    yield from check_disks(host)
    yield from check_disk_options(host)
    yield from check_devices(host)
    yield from check_lab_only(host)
    yield from check_network(host)
    yield from check_endpoints(host)
    yield from check_urls(host)
    yield from check_libvirt_uri(host)
    yield from check_k3s(host)
