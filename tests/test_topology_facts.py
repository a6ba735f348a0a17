"""Pure parsers of the topology facts: the kernel's cpumask, and the generator's masks as the oracle.

tests/test_harness.py checks format_cpumask against this machine's real masks, so a mask the
generator writes is one the kernel would print.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.facts.host import parse_cpumask, parse_host_facts
from tests.harness.sysfs import format_cpumask


@settings(deadline=None)
@given(st.sets(st.integers(0, 200)), st.integers(0, 56))
def test_cpumask_round_trip(ids: set[int], spare: int) -> None:
    nbits = max(ids, default=0) + 1 + spare
    assert parse_cpumask(format_cpumask(ids, nbits) + "\n") == ids


def test_cpumask_examples() -> None:
    assert parse_cpumask("00,003ffff0,0003ffff") == {*range(18), *range(36, 54)}
    assert parse_cpumask("00000000") == set()  # a memory-only node


@pytest.mark.parametrize("text", ["", "0x3", "003f,", "ff ff", "zz"])
def test_bad_cpumask_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="bad cpumask"):
        parse_cpumask(text)


def test_unreadable_values_are_listed_not_raised() -> None:
    out = "\n".join([
        "@@values@@",
        "/sys/devices/system/cpu/cpu0/topology/physical_package_id:0",
        "/sys/devices/system/cpu/cpu0/topology/core_id:0x",
        "/sys/devices/system/cpu/cpu0/topology/thread_siblings_list:0",
        "/sys/devices/system/node/node0/cpumap:00,zz",
        "/sys/devices/system/cpu/online:0-",
    ])
    facts = parse_host_facts(out, "/")
    assert [(u.path, u.value, u.wanted) for u in facts.unreadable] == [
        ("/sys/devices/system/cpu/cpu0/topology/core_id", "0x", "a number"),
        ("/sys/devices/system/node/node0/cpumap", "00,zz", "a cpumask"),
        ("/sys/devices/system/cpu/online", "0-", "a cpulist"),
    ]
    assert facts.cpus == {} and facts.nodes == {}


def test_smt_without_smt_dir_comes_from_the_siblings() -> None:
    lines = ["@@values@@"]
    for cpu, sibs in ((0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1,3")):
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        lines += [f"{base}/physical_package_id:0", f"{base}/core_id:{cpu % 2}", f"{base}/thread_siblings_list:{sibs}"]
    facts = parse_host_facts("\n".join(lines), "/")
    assert facts.smt_active is True and facts.threads_per_core == 2 and facts.cores_per_socket == 2
