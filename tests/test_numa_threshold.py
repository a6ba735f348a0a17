"""The spec's troubleshooting threshold, "numa_foreign > 1 % of total", over a sampling interval,
and the remote share of a QEMU process counted on the memory its placement decides.

Samples: the node numastat files captured from a real host a second apart (tests/fixtures/monitor)
and hand-written two-node ones where a real two-node host would be needed.
"""

from __future__ import annotations

from lib.monitor import parse as mp
from lib.steps.observe import doctor_findings, numa_checks, parse_sample
from tests.test_observe import captured_stdout, fixture, vm

TWO_NODES_BEFORE = {0: {"numa_hit": 1000, "numa_miss": 0, "numa_foreign": 50},
                    1: {"numa_hit": 5000, "numa_miss": 50, "numa_foreign": 0}}


def after(hit0: int, foreign0: int, hit1: int, miss1: int) -> dict[int, dict[str, int]]:
    return {0: {"numa_hit": 1000 + hit0, "numa_miss": 0, "numa_foreign": 50 + foreign0},
            1: {"numa_hit": 5000 + hit1, "numa_miss": 50 + miss1, "numa_foreign": 0}}


def test_the_share_is_taken_over_the_interval_not_since_boot() -> None:
    # Since boot: 50 foreign of 6050 allocations (0.8 %); in the interval: 30 of 1000 (3 %).
    rows = {c.name: c for c in mp.check_node_allocations(TWO_NODES_BEFORE, after(500, 30, 470, 30), 2.0)}
    foreign = rows["host numa_foreign share over 2s"]
    assert (foreign.found, foreign.ok) == ("3.00% (30 of 1000 pages)", False)
    assert rows["host numa_miss share over 2s"].found == "3.00% (30 of 1000 pages)"
    ok = mp.check_node_allocations(TWO_NODES_BEFORE, after(990, 10, 0, 10), 2.0)
    assert [(c.found, c.ok) for c in ok] == [("1.00% (10 of 1000 pages)", True)] * 2  # at the limit: not above


def test_samples_that_do_not_belong_together_fail_with_the_reason() -> None:
    rebooted = after(0, -50, 0, -50)
    (foreign, _miss) = mp.check_node_allocations(TWO_NODES_BEFORE, rebooted, 1.0)
    assert not foreign.ok and foreign.found.startswith("not comparable: node 0 numa_foreign went down")


def test_numa_check_reads_two_samples_of_the_captured_host() -> None:
    text = captured_stdout() + "@@nodes2@@\n== 0\n" + fixture("node0_numastat.2.txt")
    s = parse_sample(text, 1.0, "strict")
    rows = {c.name: c for c in numa_checks(vm(), s, mp.REMOTE_SHARE_LIMIT)}
    assert rows["host numa_foreign share over 1s"].found == "0.00% (0 of 2228 pages)"
    assert rows["host numa_foreign share over 1s"].kind == "passed"
    assert rows["host numa_miss / numa_foreign (since boot)"].kind == "evidence"
    assert rows["memory per node (numastat -p)"].kind == "evidence"
    foreign = text.replace("@@nodes2@@\n== 0\nnuma_hit 47537549\nnuma_miss 0\nnuma_foreign 0",
                           "@@nodes2@@\n== 0\nnuma_hit 47537549\nnuma_miss 0\nnuma_foreign 40")
    bad = parse_sample(foreign, 1.0, "strict")
    rows = {c.name: c for c in numa_checks(vm(), bad, mp.REMOTE_SHARE_LIMIT)}
    assert not rows["host numa_foreign share over 1s"].ok
    (cross, *_) = doctor_findings(vm(), bad, (), frozenset(), {})
    assert not cross.ok and "host numa_foreign share over 1s 1.80% (40 of 2228 pages)" in cross.evidence


def test_remote_share_counts_anonymous_and_hugepage_memory_not_files() -> None:
    maps = mp.parse_numa_maps(fixture("numa_maps_2node.handwritten.txt"))
    # The QEMU binary (1031 pages) and libc (20 + 20) are page cache: out. Heap, hugepages, anon, stack: in.
    assert maps.guest_bytes == {0: ((900 + 512) * 4 + 1020 * 2048) * 1024, 1: ((100 + 5) * 4 + 4 * 2048) * 1024}
    only_files = "55d0 default file=/usr/lib/libc.so.6 mapped=900 N1=900 kernelpagesize_kB=4\n" \
                 "55d1 default anon=100 dirty=100 N0=100 kernelpagesize_kB=4\n"
    files = mp.parse_numa_maps(only_files)
    assert files.remote_share({0}) == 0.9  # every mapping: libc's page cache on node 1 looks remote
    assert mp.remote_share(files.guest_bytes, {0}) == 0.0  # the guest's own memory is all local
    memfd = "7f00 bind:1 file=/memfd:pc.ram\\040(deleted) dirty=10 N0=10 kernelpagesize_kB=4\n"
    assert mp.parse_numa_maps(memfd).guest_bytes == {0: 10 * 4096}  # guest RAM in a memfd is the guest's
