"""What a VM's domain carries beyond its pins (pure): guest topology, memory backing, I/O threads, L3.

Each setting is derived from the inventory alone, so the offline plan shows it and vms.define
checks the defined XML against the same values:

- guest topology from the pins: vCPUs 2k and 2k+1 on the two threads of one host core make
  sockets=1, cores=N/2, threads=2 (the guest's scheduler then knows which vCPUs share a core);
  anything else is threads=1, never a topology the pins do not back.
- KVM: host-passthrough with the host's cache topology passed through (the guest sees the real L3).
- memory: <nosharepages/> (no KSM merging) and no balloon for every pinned VM; with
  tuning.hugepages the host's reserved hugepages on its nodeset, locked.
- the data tiers: an I/O thread per data disk, pinned with the emulator threads, so disk work
  leaves the main loop the VMs' emulators share.
- tuning.exclusive_l3_mb: a resctrl cachetune giving the vCPUs their own L3 ways.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lib.cores import sibling_pairs, socket_of
from lib.cpuset import format_cpulist
from lib.inventory.model import VM, Host
from lib.pinplan import Core


@dataclass(frozen=True)
class GuestTopology:
    sockets: int
    cores: int
    threads: int

    def __str__(self) -> str:
        return f"sockets={self.sockets},cores={self.cores},threads={self.threads}"


def guest_topology(pins: Sequence[int], cores: Sequence[Core]) -> GuestTopology:
    n = max(len(pins), 1)
    return GuestTopology(1, n // 2, 2) if sibling_pairs(pins, cores) else GuestTopology(1, n, 1)


@dataclass(frozen=True)
class Cachetune:
    vcpus: str  # cpulist of vCPU indexes, e.g. "0-31"
    cache_id: int  # the L3 instance (socket) the vCPUs run on
    size_kb: int


@dataclass(frozen=True)
class DomainTuning:
    topology: GuestTopology
    cache_passthrough: bool
    tcg_cpu_model: str  # TCG only: a named model whose CPUID carries the threads ("": QEMU's default)
    hugepage_kb: int | None  # page size backing the guest; None: normal pages
    iothreads: dict[str, int]  # data disk target -> I/O thread id (1, 2, ...)
    iothread_cpus: frozenset[int]
    cachetune: Cachetune | None

    @property
    def locked(self) -> bool:
        return self.hugepage_kb is not None


def hugepage_kb(host: Host, vm: VM) -> int | None:
    """The page size reserved on the VM's nodes (rules.py checks there is one and that it fits)."""
    if not vm.tuning.hugepages:
        return None
    sizes = {r.size_kb for r in host.hugepages if r.node in vm.tuning.numa_memory.nodes and r.count}
    return min(sizes) if sizes else None


# TCG's default qemu64 is an AMD model without topoext, so its guest sees every vCPU as its own core.
# On an Intel model QEMU fills CPUID leaf 0xB from -smp, and Nehalem's features are all emulated by
# TCG (no warnings): the guest kernel then sees the thread siblings, as a KVM guest does.
TCG_THREADS_MODEL = "Nehalem"


def tcg_cpu_model(virt_type: str, topology: GuestTopology) -> str:
    return TCG_THREADS_MODEL if virt_type != "kvm" and topology.threads > 1 else ""


def domain_tuning(host: Host, cores: Sequence[Core], vm: VM) -> DomainTuning:
    cache = None
    if vm.tuning.exclusive_l3_mb and vm.pins:
        cache = Cachetune(format_cpulist(range(len(vm.pins))),
                          socket_of(vm.pins[0], cores, host.topology.cores_per_socket),
                          vm.tuning.exclusive_l3_mb * 1024)
    return DomainTuning(
        topology=guest_topology(vm.pins, cores),
        cache_passthrough=host.virt_type == "kvm",
        tcg_cpu_model=tcg_cpu_model(host.virt_type, guest_topology(vm.pins, cores)),
        hugepage_kb=hugepage_kb(host, vm),
        iothreads={d.target: i + 1 for i, d in enumerate(vm.disks)},
        iothread_cpus=vm.tuning.emulator_cpus,
        cachetune=cache,
    )
