"""Facts about a host's cores and a VM's pins (pure), shared by the inventory's rules and the
domain settings derived from them (lib/vmperf.py): both sides import them from here.
"""

from __future__ import annotations

from collections.abc import Sequence

from lib.pinplan import Core


def _core_of(cores: Sequence[Core]) -> dict[int, Core]:
    return {cpu: core for core in cores for cpu in core.threads}


def sibling_pairs(pins: Sequence[int], cores: Sequence[Core]) -> bool:
    """True when every vCPU pair (2k, 2k+1) sits on the two threads of one two-thread core."""
    if not pins or len(pins) % 2:
        return False
    core_of = _core_of(cores)
    for k in range(0, len(pins), 2):
        a, b = core_of.get(pins[k]), core_of.get(pins[k + 1])
        if a is None or a is not b or len(a.threads) != 2 or pins[k] == pins[k + 1]:
            return False
    return True


def unpaired_whole_cores(pins: Sequence[int], cores: Sequence[Core]) -> list[Core]:
    """Cores whose threads are all this VM's vCPUs but not as a (2k, 2k+1) pair: the guest could
    have been told they are siblings and is not (the inventory rule topology.unpaired-siblings).

    An odd vCPU count can never be threads=2 (sockets x cores x threads must equal it): no hint then."""
    if len(pins) % 2 or sibling_pairs(pins, cores):
        return []
    pinned = set(pins)
    return [core for core in cores if len(core.threads) > 1 and set(core.threads) <= pinned]


def socket_of(cpu: int, cores: Sequence[Core], cores_per_socket: int) -> int:
    """Cores are listed socket by socket (lib.inventory.load), so a core's position gives its socket."""
    for index, core in enumerate(cores):
        if cpu in core.threads:
            return index // cores_per_socket
    return 0
