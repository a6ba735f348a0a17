"""lib.pinplan: whole cores first, never outside the nodeset, by example and by property."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.cpuset import parse_cpulist
from lib.pinplan import Core, PinRequest, PlanError, cores_from_layout, free_threads, plan_pins

# The spec host: 2 sockets x 18 cores x 2 threads, Linux Intel enumeration.
NODE_CPUS = {0: parse_cpulist("0-17,36-53"), 1: parse_cpulist("18-35,54-71")}
HOST = cores_from_layout(2, 18, 2, NODE_CPUS)
# Emulator threads: "16-17,52-53" on node 0, "34-35,70-71" on node 1.
RESERVED = frozenset({16, 17, 52, 53, 34, 35, 70, 71})
N0 = frozenset({0})
N1 = frozenset({1})

SPEC_VMS = [
    PinRequest("k3s-worker-slm-heavy", 32, N0),
    PinRequest("k3s-worker-data", 12, N1),
    PinRequest("k3s-worker-slm", 8, N1),
    PinRequest("k3s-server-tasks", 12, N1),
]

# Written out from the spec, not computed: this is what the domain XMLs must say.
SPEC_PINS = {
    "k3s-worker-slm-heavy": (
        0, 36, 1, 37, 2, 38, 3, 39, 4, 40, 5, 41, 6, 42, 7, 43,
        8, 44, 9, 45, 10, 46, 11, 47, 12, 48, 13, 49, 14, 50, 15, 51,
    ),
    "k3s-worker-data": (18, 54, 19, 55, 20, 56, 21, 57, 22, 58, 23, 59),
    "k3s-worker-slm": (24, 60, 25, 61, 26, 62, 27, 63),
    "k3s-server-tasks": (28, 64, 29, 65, 30, 66, 31, 67, 32, 68, 33, 69),
}  # fmt: skip


def test_spec_host_layout() -> None:
    assert len(HOST) == 36
    assert HOST[0] == Core(0, (0, 36))
    assert HOST[17] == Core(0, (17, 53))
    assert HOST[18] == Core(1, (18, 54))
    assert HOST[35] == Core(1, (35, 71))


def test_spec_vms_get_the_spec_pins() -> None:
    plan = plan_pins(HOST, SPEC_VMS, RESERVED)
    assert plan == SPEC_PINS
    assert list(plan) == [vm.name for vm in SPEC_VMS]


def test_given_pins_are_kept_and_avoided_even_when_listed_later() -> None:
    requests = [
        PinRequest("planned", 4, N1),
        PinRequest("fixed", 4, N1, pins=(19, 18, 54, 55)),
    ]
    plan = plan_pins(HOST, requests, RESERVED)
    assert plan["fixed"] == (19, 18, 54, 55)
    assert plan["planned"] == (20, 56, 21, 57)


def test_given_pins_are_taken_as_they_are() -> None:
    # Outside the nodeset and on a reserved CPU: the operator's override is not second-guessed.
    plan = plan_pins(HOST, [PinRequest("odd", 2, N1, pins=(16, 0))], RESERVED)
    assert plan == {"odd": (16, 0)}


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        ([PinRequest("a", 2, N0, pins=(1,))], "a gives 1 pins for 2 vCPUs"),
        ([PinRequest("a", 2, N0, pins=(1, 1))], "a pins the same CPU twice: (1, 1)"),
        (
            [PinRequest("a", 2, N0, pins=(1, 2)), PinRequest("b", 3, N0, pins=(3, 2, 1))],
            "b pins CPUs 1-2 already pinned to a",
        ),
        ([PinRequest("a", 1, N0), PinRequest("a", 1, N1)], "duplicate VM names: a"),
    ],
)
def test_bad_requests(requests: list[PinRequest], message: str) -> None:
    with pytest.raises(PlanError) as info:
        plan_pins(HOST, requests, RESERVED)
    assert str(info.value) == message


def test_request_validation() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PinRequest("a", 0, N0)
    with pytest.raises(ValueError, match="empty nodeset"):
        PinRequest("a", 1, frozenset())
    PinRequest("a", 1, frozenset(), pins=(3,))  # given pins need no nodeset


def test_whole_cores_preferred_over_half_free_cores() -> None:
    # 18 is pinned alone, leaving its sibling 54 free: a 4-vCPU VM takes two whole cores instead.
    requests = [PinRequest("half", 1, N1, pins=(18,)), PinRequest("vm", 4, N1)]
    assert plan_pins(HOST, requests, RESERVED)["vm"] == (19, 55, 20, 56)


def test_odd_count_uses_a_half_free_core_first() -> None:
    requests = [PinRequest("half", 1, N1, pins=(18,)), PinRequest("vm", 5, N1)]
    assert plan_pins(HOST, requests, RESERVED)["vm"] == (19, 55, 20, 56, 54)


def test_odd_count_breaks_the_next_whole_core_when_nothing_is_half_free() -> None:
    requests = [PinRequest("a", 3, N1), PinRequest("b", 1, N1), PinRequest("c", 2, N1)]
    plan = plan_pins(HOST, requests, RESERVED)
    assert plan["a"] == (18, 54, 19)
    assert plan["b"] == (55,)  # fills the core a broke rather than breaking another
    assert plan["c"] == (20, 56)


def test_half_free_cores_fill_in_core_order() -> None:
    requests = [PinRequest("x", 3, N0, pins=(2, 40, 5)), PinRequest("vm", 3, N0)]
    # whole core (0, 36), then one spare thread: 38 (core 2) comes before 41 (core 5)
    assert plan_pins(HOST, requests, frozenset())["vm"] == (0, 36, 38)


def test_never_crosses_the_nodeset() -> None:
    requests = [
        PinRequest("k3s-worker-data", 12, N1),
        PinRequest("k3s-server-tasks", 8, N1),
        PinRequest("k3s-worker-slm", 20, N1),
    ]
    # node 0 is all free, node 1 has 32 - 20 = 12 threads left
    assert free_threads(HOST, RESERVED | set(range(18, 28)) | set(range(54, 64))) == {0: 32, 1: 12}
    with pytest.raises(PlanError) as info:
        plan_pins(HOST, requests, RESERVED)
    assert str(info.value) == "could not fit 20 vCPUs of k3s-worker-slm on node 1: 12 free threads"


def test_multi_node_nodeset_spans_nodes_in_order() -> None:
    both = frozenset({0, 1})
    plan = plan_pins(HOST, [PinRequest("big", 64, both)], RESERVED)
    assert plan["big"][:2] == (0, 36)
    assert plan["big"][-2:] == (33, 69)
    assert RESERVED.isdisjoint(plan["big"])
    with pytest.raises(PlanError) as info:
        plan_pins(HOST, [PinRequest("big", 65, both)], RESERVED | {0})
    assert str(info.value) == "could not fit 65 vCPUs of big on nodes 0-1: 63 free threads"


def test_nodeset_with_a_node_the_host_lacks() -> None:
    with pytest.raises(PlanError) as info:
        plan_pins(HOST, [PinRequest("vm", 1, frozenset({2}))], RESERVED)
    assert str(info.value) == "could not fit 1 vCPUs of vm on node 2: 0 free threads"


def test_adjacent_layout() -> None:
    # 1 socket x 4 cores x 2 threads, siblings consecutive, two nodes of two cores each.
    cores = cores_from_layout(1, 4, 2, {0: parse_cpulist("0-3"), 1: parse_cpulist("4-7")}, "adjacent")
    assert cores == [Core(0, (0, 1)), Core(0, (2, 3)), Core(1, (4, 5)), Core(1, (6, 7))]
    plan = plan_pins(cores, [PinRequest("a", 3, N1), PinRequest("b", 2, N0)], frozenset({0}))
    assert plan == {"a": (4, 5, 6), "b": (2, 3)}


def test_spread_layout_with_four_threads() -> None:
    cores = cores_from_layout(1, 2, 4, {0: parse_cpulist("0-7")})
    assert cores == [Core(0, (0, 2, 4, 6)), Core(0, (1, 3, 5, 7))]


@pytest.mark.parametrize(
    ("args", "node_cpus", "message"),
    [
        ((2, 2, 2, "spread"), {0: "0-1,4-5", 1: "2-3,6"}, "CPU 7 is in no NUMA node"),
        ((1, 4, 2, "spread"), {0: "0-3", 1: "4-7"}, r"core 0 \(CPUs 0,4\) spans nodes 0-1"),
        ((1, 2, 2, "adjacent"), {0: "0-1", 1: "1-3"}, "CPU 1 is in both node 0 and node 1"),
        ((1, 2, 2, "adjacent"), {0: "0-4"}, "nodes list CPUs 4 that a 1x2x2 host does not have"),
        ((1, 2, 2, "sideways"), {0: "0-3"}, "unknown layout 'sideways'"),
        ((1, 0, 2, "spread"), {0: "0-3"}, "bad topology 1x0x2"),
    ],
)
def test_layout_errors(args: tuple[int, int, int, str], node_cpus: dict[int, str], message: str) -> None:
    sockets, per_socket, threads, layout = args
    nodes = {node: parse_cpulist(text) for node, text in node_cpus.items()}
    with pytest.raises(ValueError, match=message):
        cores_from_layout(sockets, per_socket, threads, nodes, layout)


@st.composite
def topologies(draw: st.DrawFn) -> list[Core]:
    """Any small host: up to three nodes, cores of one to four threads (hybrid CPUs mix them), and
    CPU ids in arbitrary order, so nothing relies on the Intel or AMD numbering."""
    sizes = draw(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=10))
    ids = draw(st.permutations(range(sum(sizes))))
    cores = []
    for size in sizes:
        cores.append(Core(draw(st.integers(min_value=0, max_value=2)), tuple(ids[:size])))
        ids = ids[size:]
    return cores


# No deadline: a shared, loaded machine must not turn a slow example into a failure (no timing asserts).
@settings(deadline=None)
@given(topologies(), st.data())
def test_plans_are_sound(cores: list[Core], data: st.DataObject) -> None:
    cpus = sorted(t for core in cores for t in core.threads)
    node_of = {t: core.node for core in cores for t in core.threads}
    reserved = frozenset(data.draw(st.sets(st.sampled_from(cpus))))
    # Given pins come from one shuffled pool so they do not clash with each other.
    pool = list(data.draw(st.permutations(cpus)))
    requests = []
    for i in range(data.draw(st.integers(min_value=1, max_value=5))):
        count = data.draw(st.integers(min_value=1, max_value=8))
        nodeset = frozenset(data.draw(st.sets(st.integers(min_value=0, max_value=2), min_size=1)))
        pins = None
        if data.draw(st.booleans()) and len(pool) >= count:
            pins, pool = tuple(pool[:count]), pool[count:]
        requests.append(PinRequest(f"vm{i}", count, nodeset, pins))

    try:
        plan = plan_pins(cores, requests, reserved)
    except PlanError as error:
        assert str(error).startswith("could not fit ")
        return

    assert list(plan) == [req.name for req in requests]
    seen: set[int] = set()
    for req in requests:
        pins = plan[req.name]
        assert len(pins) == req.vcpu_count == len(set(pins))
        assert seen.isdisjoint(pins)
        seen.update(pins)
        if req.pins is not None:
            assert pins == req.pins
        else:
            assert all(node_of[cpu] in req.nodeset for cpu in pins)
            assert reserved.isdisjoint(pins)
