"""Pick vCPU pins the way KubeVirt's dedicated CPU placement and nova's cpu_thread_policy=prefer do.

Whole physical cores first, with both siblings on consecutive vCPUs, so a guest told it has
threads=2 really gets sibling pairs (vCPU 2k and 2k+1 share a core) and no other VM's noisy thread
shares its L1/L2. Only what is left over is filled from single threads. A VM never leaves its NUMA
nodeset: crossing it would put vCPUs far from the VM's memory, which is the thing this tool exists
to prevent, so running out of room is an error and never a silent spill to another node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lib.cpuset import format_cpulist


@dataclass(frozen=True)
class Core:
    """One physical core: its NUMA node and its hardware threads in sibling order, e.g. (0, 36)."""

    node: int
    threads: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.threads:
            raise ValueError(f"a core on node {self.node} needs at least one thread")


@dataclass(frozen=True)
class PinRequest:
    """One VM to pin. Given pins are the operator's choice and are taken as they are."""

    name: str
    vcpu_count: int
    nodeset: frozenset[int]
    pins: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.vcpu_count < 1:
            raise ValueError(f"{self.name}: vcpu_count must be at least 1, got {self.vcpu_count}")
        if self.pins is None and not self.nodeset:
            raise ValueError(f"{self.name}: an empty nodeset leaves nowhere to plan pins")


class PlanError(Exception):
    """The requests cannot all be pinned (no room in a nodeset, or given pins that clash)."""

    def __init__(self, message: str, vm: str | None = None) -> None:
        super().__init__(message)
        self.vm = vm  # the VM that could not be placed, so callers can point at its entry


def free_threads(cores: Sequence[Core], taken: frozenset[int]) -> dict[int, int]:
    """Node -> number of its threads not in taken (every node that has a core, even at zero)."""
    free: dict[int, int] = {}
    for core in cores:
        free[core.node] = free.get(core.node, 0) + sum(t not in taken for t in core.threads)
    return free


def plan_pins(
    cores: Sequence[Core], requests: Sequence[PinRequest], reserved: frozenset[int]
) -> dict[str, tuple[int, ...]]:
    """VM name -> pins (vCPU i runs on pins[i]), in request order; PlanError if any VM does not fit.

    Given pins are claimed first, so a planned VM avoids them wherever it sits in the list; the
    rest are planned in request order, each skipping reserved (emulator/host) CPUs and earlier pins.
    """
    plan, refused = plan_what_fits(cores, requests, reserved)
    if refused:
        raise refused[0]
    return plan


def plan_what_fits(
    cores: Sequence[Core], requests: Sequence[PinRequest], reserved: frozenset[int]
) -> tuple[dict[str, tuple[int, ...]], list[PlanError]]:
    """Like plan_pins, but a VM that does not fit is refused alone: the others are still planned.

    So an inventory check names exactly the VM that cannot be placed, and every VM after it still
    gets its pins (and its own checks) instead of a false "no pins" error.
    """
    names = [req.name for req in requests]
    if len(set(names)) != len(names):
        dupes = sorted({name for name in names if names.count(name) > 1})
        raise PlanError(f"duplicate VM names: {', '.join(dupes)}")

    plan: dict[str, tuple[int, ...]] = {}
    owner: dict[int, str] = {}
    for req in requests:
        if req.pins is None:
            continue
        # Given pins skip the nodeset and reserved checks (an operator override may mean exactly
        # that), but a wrong count or a CPU pinned twice can only produce a broken domain.
        if len(req.pins) != req.vcpu_count:
            raise PlanError(f"{req.name} gives {len(req.pins)} pins for {req.vcpu_count} vCPUs")
        if len(set(req.pins)) != len(req.pins):
            raise PlanError(f"{req.name} pins the same CPU twice: {req.pins}")
        clash = sorted(cpu for cpu in req.pins if cpu in owner)
        if clash:
            raise PlanError(
                f"{req.name} pins CPUs {format_cpulist(clash)} already pinned to {owner[clash[0]]}"
            )
        owner.update(dict.fromkeys(req.pins, req.name))
        plan[req.name] = req.pins

    taken = set(reserved) | owner.keys()
    refused: list[PlanError] = []
    for req in requests:
        if req.pins is None:
            try:
                plan[req.name] = _plan_one(cores, req, frozenset(taken))
            except PlanError as exc:
                refused.append(exc)
                continue
            taken.update(plan[req.name])
    return {name: plan[name] for name in names if name in plan}, refused


def _plan_one(cores: Sequence[Core], req: PinRequest, taken: frozenset[int]) -> tuple[int, ...]:
    candidates = sorted((c for c in cores if c.node in req.nodeset), key=lambda c: (c.node, c.threads[0]))
    available = sum(free_threads(candidates, taken).values())
    if available < req.vcpu_count:
        nodes = format_cpulist(req.nodeset)
        where = f"node {nodes}" if len(req.nodeset) == 1 else f"nodes {nodes}"
        raise PlanError(
            f"could not fit {req.vcpu_count} vCPUs of {req.name} on {where}: {available} free threads",
            req.name,
        )

    need = req.vcpu_count
    picked: list[int] = []
    whole = [c for c in candidates if taken.isdisjoint(c.threads)]
    # Pass 1: whole free cores while they fit entirely. Keep scanning rather than stop at the first
    # that does not fit, so a hybrid CPU's one-thread cores can still be used whole.
    for core in whole:
        if len(core.threads) <= need:
            picked.extend(core.threads)
            need -= len(core.threads)
    # Pass 2: single threads. Half-used cores go first, which keeps the remaining whole cores whole
    # for the VMs planned after this one; only then is one whole core broken for an odd remainder.
    unpicked = [c for c in whole if c.threads[0] not in picked]
    half_used = [c for c in candidates if not taken.isdisjoint(c.threads)]
    for core in half_used + unpicked:
        for thread in core.threads:
            if need and thread not in taken:
                picked.append(thread)
                need -= 1
    # The free-thread count above guarantees pass 2 finds enough.
    assert need == 0, (req, picked)
    return tuple(picked)


LAYOUTS = ("spread", "adjacent")


@dataclass(frozen=True)
class LayoutProblem:
    """Why a layout, its sibling sets and the nodes' cpulists cannot describe one host."""

    rule: str
    message: str


class LayoutError(ValueError):
    def __init__(self, problems: Sequence[LayoutProblem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = tuple(problems)


def layout_threads(sockets: int, cores_per_socket: int, threads_per_core: int, layout: str) -> list[tuple[int, ...]]:
    """Every core's CPUs under a named layout, in core order.

    "spread" is Linux's Intel enumeration: thread t of global core k is CPU k + t * total_cores,
    so siblings are (0, 36) on a 2x18x2 host. "adjacent" puts siblings on consecutive ids,
    core k = CPUs k*T .. k*T+T-1, as many AMD hosts enumerate.
    """
    if min(sockets, cores_per_socket, threads_per_core) < 1:
        raise LayoutError([LayoutProblem("topology.layout",
                                         f"bad topology {sockets}x{cores_per_socket}x{threads_per_core}")])
    if layout not in LAYOUTS:
        raise LayoutError([LayoutProblem("topology.layout",
                                         f"unknown layout {layout!r}: expected 'spread' or 'adjacent'")])
    total = sockets * cores_per_socket
    if layout == "spread":
        return [tuple(k + t * total for t in range(threads_per_core)) for k in range(total)]
    return [tuple(k * threads_per_core + t for t in range(threads_per_core)) for k in range(total)]


def layout_problems(cores: Sequence[tuple[int, ...]], node_cpus: Mapping[int, frozenset[int]],
                    shape: str) -> list[LayoutProblem]:
    """Every way the cores' CPUs and the nodes' cpulists disagree (shape names the host, e.g. 2x18x2)."""
    problems: list[LayoutProblem] = []
    node_of: dict[int, int] = {}
    for node, cpus in sorted(node_cpus.items()):
        for cpu in sorted(cpus):
            if cpu in node_of:
                problems.append(LayoutProblem("topology.cpus",
                                              f"CPU {cpu} is in both node {node_of[cpu]} and node {node}"))
            node_of.setdefault(cpu, node)
    known = {cpu for threads in cores for cpu in threads}
    stray = [cpu for cpu in node_of if cpu not in known]
    if stray:
        problems.append(LayoutProblem("topology.layout-cpus", f"nodes list CPUs {format_cpulist(stray)} that a "
                                      f"{shape} host does not have"))
    homeless = sorted(cpu for cpu in known if cpu not in node_of)
    if homeless:
        problems.append(LayoutProblem("topology.layout-node", f"CPU {homeless[0]} is in no NUMA node"
                                      + (f" (nor are CPUs {format_cpulist(homeless[1:])})" if homeless[1:] else "")))
    split = [(k, threads) for k, threads in enumerate(cores)
             if len({node_of[cpu] for cpu in threads if cpu in node_of}) > 1]
    if split:  # one problem naming the first core: a wrong layout splits dozens of them
        k, threads = split[0]
        nodes = {node_of[cpu] for cpu in threads if cpu in node_of}
        where = ", ".join(f"CPU {cpu} node {node_of[cpu]}" for cpu in threads if cpu in node_of)
        more = f" ({len(split) - 1} more cores do too)" if len(split) > 1 else ""
        problems.append(LayoutProblem(
            "topology.core-nodes",
            f"core {k} (CPUs {format_cpulist(threads)}) spans nodes {format_cpulist(nodes)}: {where}{more}; "
            "a core's threads share one node on every real host, so the layout or a node's cpus is wrong"))
    return problems


def cores_from_threads(cores: Sequence[tuple[int, ...]], node_cpus: Mapping[int, frozenset[int]],
                       shape: str) -> list[Core]:
    """Cores with their nodes: each core belongs to the node of its threads (LayoutError if unclear)."""
    problems = layout_problems(cores, node_cpus, shape)
    if problems:
        raise LayoutError(problems)
    node_of = {cpu: node for node, cpus in node_cpus.items() for cpu in cpus}
    return [Core(node_of[threads[0]], tuple(threads)) for threads in cores]


def cores_from_layout(
    sockets: int,
    cores_per_socket: int,
    threads_per_core: int,
    node_cpus: Mapping[int, frozenset[int]],
    layout: str = "spread",
) -> list[Core]:
    """Build the core list from a uniform topology and the nodes' cpulists.

    A core split across nodes or a CPU in no node (e.g. offline) is a LayoutError, because either
    means the layout given does not describe this host; inventory rules report the same problems
    by rule id (lib/inventory/rules.py check_layout) before this is ever called on a loaded host.
    """
    threads = layout_threads(sockets, cores_per_socket, threads_per_core, layout)
    return cores_from_threads(threads, node_cpus, f"{sockets}x{cores_per_socket}x{threads_per_core}")
