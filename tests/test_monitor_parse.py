"""lib.monitor.parse over output captured from a real TCG guest (tests/fixtures/monitor/README.md).

Expected values are read off the fixture files by hand, so a parser that drifts by a field, a
column or a unit fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lib.cpuset import parse_cpulist
from lib.monitor.parse import (
    DomainVcpus,
    PsThread,
    TaskStat,
    check_emulator_load,
    check_no_intruders,
    check_remote_memory,
    classify_qemu_threads,
    cpuset_share,
    foreign_share,
    is_per_cpu_kthread,
    llc_counts,
    numastat_delta,
    parse_domstats_vcpu,
    parse_node_numastat,
    parse_node_numastats,
    parse_numa_maps,
    parse_numastat_meminfo,
    parse_numastat_process,
    parse_numastat_table,
    parse_perf_stat_csv,
    parse_ps_threads,
    parse_task_stat,
    parse_task_stats,
    remote_share,
    thread_cpu_percent,
    threads_on_cpus,
    vcpu_index,
    vcpu_utilisation,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "monitor"
QEMU_PID = 14220
# `date +%s.%N` before each task stat sample: 1795930041.342045663 and 1795930042.381779043.
ELAPSED_S = 1.039734380
ELAPSED_NS = 1_039_734_380


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- numastat -p / -m ------------------------------------------------------------------------------


def test_numastat_p_captured() -> None:
    proc = parse_numastat_process(fixture("numastat_p.txt"))
    assert (proc.pid, proc.comm) == (QEMU_PID, "qemu-system-x86")
    assert proc.table.nodes == (0,)
    assert proc.table.rows == {
        "Huge": (0.0, 0.0),
        "Heap": (4.20, 4.20),
        "Stack": (0.02, 0.02),
        "Private": (39.09, 39.09),
        "Total": (43.30, 43.30),
    }
    assert proc.per_node_mb == {0: 43.30}
    assert proc.total_mb == 43.30


def test_numastat_p_two_nodes_handwritten() -> None:
    proc = parse_numastat_process(fixture("numastat_p_2node.handwritten.txt"))
    assert (proc.pid, proc.table.nodes) == (4242, (0, 1))
    assert proc.per_node_mb == {0: 2082.60, 1: 8.41}
    assert proc.table.per_node("Huge") == {0: 2040.0, 1: 8.0}
    assert proc.total_mb == 2091.01
    assert remote_share(proc.per_node_mb, {0}) == pytest.approx(8.41 / (2082.60 + 8.41))


def test_numastat_m_skips_token_warnings() -> None:
    text = fixture("numastat_m.txt")
    assert "Token SwapCached not in hash table." in text  # the noise numastat 2.0.16 prints here
    meminfo = parse_numastat_meminfo(text)
    assert set(meminfo) == {0}
    assert (meminfo[0].total_mb, meminfo[0].free_mb, meminfo[0].used_mb) == (4825.78, 3659.54, 1166.23)
    table = parse_numastat_table(text)
    assert table.per_node("Active(anon)") == {0: 1.51}
    assert table.total("KReclaimable") == 396.96
    assert len(table.rows) == 32


def test_numastat_multiprocess_labels_keep_their_spaces() -> None:
    # The layout of `numastat -p bash` on this machine when several processes match.
    text = (
        "\nPer-node process memory usage (in MBs)\n"
        "PID                        Node 0           Total\n"
        "----------------  --------------- ---------------\n"
        "1902 (bash)                  3.86            3.86\n"
        "17399 (bash)                 4.22            4.22\n"
        "----------------  --------------- ---------------\n"
        "Total                        8.08            8.08\n"
    )
    table = parse_numastat_table(text)
    assert table.per_node("1902 (bash)") == {0: 3.86}
    assert table.total("Total") == 8.08
    with pytest.raises(ValueError, match="not single-process"):
        parse_numastat_process(text)
    with pytest.raises(ValueError, match="no 'Heap' row"):
        table.per_node("Heap")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("numastat: no such process\n", "no numastat table"),
        ("  Node 0 Total\nHuge 1.00\n", "expected a label and 2 numbers"),
        ("  Node 0 Total\nHuge x.00 1.00\n", "expected 2 numbers"),
        ("  Node 0 Total\n---- ----\n", "no rows"),
    ],
)
def test_numastat_rejects_broken_tables(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_numastat_table(text)


# --- numa_maps -------------------------------------------------------------------------------------


def test_numa_maps_captured_all_on_node_zero() -> None:
    maps = parse_numa_maps(fixture("numa_maps.txt"))
    assert maps.node_pages == {0: 11086}
    assert maps.node_bytes == {0: 11086 * 4096}
    assert maps.remote_share(parse_cpulist("0")) == 0.0
    # libvirt turned <numatune strict nodeset=0> into QEMU's pc.ram backend with host-nodes=[0],
    # policy=bind: that is the one bind:0 mapping, holding only the 6 MiB the guest touched.
    bound = [line for line in fixture("numa_maps.txt").splitlines() if " bind:0 " in line]
    assert bound == ["7fb993e00000 bind:0 anon=1536 dirty=1536 active=0 N0=1536 kernelpagesize_kB=4"]


def test_numa_maps_two_nodes_weighs_huge_pages() -> None:
    maps = parse_numa_maps(fixture("numa_maps_2node.handwritten.txt"))
    assert maps.node_pages == {0: 1031 + 900 + 1020 + 512 + 20, 1: 100 + 4 + 20 + 5}
    node0_kib = (1031 + 900 + 512 + 20) * 4 + 1020 * 2048
    node1_kib = (100 + 20 + 5) * 4 + 4 * 2048
    assert maps.node_bytes == {0: node0_kib * 1024, 1: node1_kib * 1024}
    assert (node0_kib, node1_kib) == (2098812, 8692)
    assert maps.remote_share({0}) == pytest.approx(8692 / 2107504)
    assert maps.remote_share({0}) == pytest.approx(0.0041243, abs=1e-7)
    assert maps.remote_share({1}) == pytest.approx(2098812 / 2107504)
    assert maps.remote_share({0, 1}) == 0.0


def test_numa_maps_empty_and_broken() -> None:
    assert parse_numa_maps("7f23d824e000 default\n").total_bytes == 0
    odd_file = "7f24 default file=/tmp/a\rb mapped=3 N1=3 kernelpagesize_kB=4\n"
    assert parse_numa_maps(odd_file).node_bytes == {1: 3 * 4096}
    assert parse_numa_maps("").remote_share({0}) == 0.0
    with pytest.raises(ValueError, match="no kernelpagesize_kB"):
        parse_numa_maps("7f23d8000000 default anon=144 N0=144\n")


def test_remote_memory_check_uses_the_spec_limit() -> None:
    maps = parse_numa_maps(fixture("numa_maps_2node.handwritten.txt"))
    ok = check_remote_memory(maps.node_bytes, {0})
    assert (ok.name, ok.expected, ok.found, ok.ok) == ("remote memory", "< 1.00% off node(s) 0", "0.41%", True)
    bad = check_remote_memory(maps.node_bytes, {1})
    assert (bad.found, bad.ok) == ("99.59%", False)


# --- node numastat ---------------------------------------------------------------------------------


def test_node_numastat_samples_and_delta() -> None:
    first = parse_node_numastats({0: fixture("node0_numastat.1.txt")})
    second = parse_node_numastats({0: fixture("node0_numastat.2.txt")})
    assert first[0] == {
        "numa_hit": 47535321,
        "numa_miss": 0,
        "numa_foreign": 0,
        "interleave_hit": 1142,
        "local_node": 47535321,
        "other_node": 0,
    }
    delta = numastat_delta(first, second)
    assert delta == {0: {"numa_hit": 2228, "numa_miss": 0, "numa_foreign": 0, "interleave_hit": 0,
                         "local_node": 2228, "other_node": 0}}
    assert foreign_share(delta) == 0.0


def test_numastat_delta_refuses_mismatched_samples() -> None:
    before = {0: parse_node_numastat(fixture("node0_numastat.2.txt"))}
    after = {0: parse_node_numastat(fixture("node0_numastat.1.txt"))}
    with pytest.raises(ValueError, match="numa_hit went down"):
        numastat_delta(before, after)
    with pytest.raises(ValueError, match="different nodes"):
        numastat_delta(before, {**before, 1: before[0]})


def test_foreign_share_over_two_nodes() -> None:
    # Node 0 served 990 local pages; 10 pages meant for node 0 came from node 1.
    delta = {0: {"numa_hit": 990, "numa_miss": 0, "numa_foreign": 10},
             1: {"numa_hit": 0, "numa_miss": 10, "numa_foreign": 0}}
    assert foreign_share(delta) == pytest.approx(0.01)
    assert foreign_share({0: {"numa_hit": 0}}) == 0.0


def test_node_numastat_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="expected 'name value'"):
        parse_node_numastat("numa_hit\n")
    with pytest.raises(ValueError, match="not an integer"):
        parse_node_numastat("numa_hit 12x\n")


# --- task stat -------------------------------------------------------------------------------------


def test_task_stat_samples() -> None:
    threads = parse_task_stats(fixture("task_stat.1.txt"))
    assert [t.tid for t in threads] == [14220, 14224, 14225, 14226, 14227, 14228]
    assert [t.comm for t in threads] == fixture("task_comm.txt").splitlines()
    assert threads[3] == TaskStat(tid=14226, comm="CPU 0/TCG", state="R", utime=503, stime=1, processor=1)
    assert threads[2] == TaskStat(tid=14225, comm="IO mon_iothread", state="S", utime=4, stime=11, processor=0)
    # The pins held: emulator threads last ran on CPU 0, vCPUs on CPU 1.
    assert {t.comm: t.processor for t in threads} == {
        "qemu-system-x86": 0, "IO mon_iothread": 0, "worker": 0, "CPU 0/TCG": 1, "CPU 1/TCG": 1}


def test_thread_cpu_percent_between_samples() -> None:
    before = parse_task_stats(fixture("task_stat.1.txt"))
    after = parse_task_stats(fixture("task_stat.2.txt"))
    percent = thread_cpu_percent(before, after, ELAPSED_S)
    # CPU 0/TCG spins: utime 503 -> 607 ticks; IO mon_iothread: stime 11 -> 12.
    assert percent[14226] == pytest.approx(100 * 104 / 100 / ELAPSED_S)
    assert percent[14225] == pytest.approx(100 * 1 / 100 / ELAPSED_S)
    assert {tid for tid, p in percent.items() if p == 0.0} == {14220, 14224, 14227, 14228}
    # The same ticks at CLK_TCK 250 are a smaller share.
    assert thread_cpu_percent(before, after, ELAPSED_S, clk_tck=250)[14226] == pytest.approx(104 / 2.5 / ELAPSED_S)


def test_thread_cpu_percent_edges() -> None:
    before = parse_task_stats(fixture("task_stat.1.txt"))
    after = parse_task_stats(fixture("task_stat.2.txt"))
    assert thread_cpu_percent(before[:2], after, 1.0).keys() == {14220, 14224}  # new threads: no interval
    with pytest.raises(ValueError, match="CPU time went down"):
        thread_cpu_percent(after, before, 1.0)
    with pytest.raises(ValueError, match="elapsed time must be positive"):
        thread_cpu_percent(before, after, 0.0)


def test_classify_qemu_threads_under_tcg() -> None:
    threads = classify_qemu_threads(parse_task_stats(fixture("task_stat.2.txt")))
    assert {i: t.comm for i, t in threads.vcpus.items()} == {0: "CPU 0/TCG", 1: "CPU 1/TCG"}
    assert {i: t.tid for i, t in threads.vcpus.items()} == {0: 14226, 1: 14227}
    assert threads.all_vcpus is None
    # call_rcu (14224) lost the naming race here and carries the main loop's name.
    assert [(t.tid, t.comm) for t in threads.emulator] == [
        (14220, "qemu-system-x86"), (14224, "qemu-system-x86"), (14225, "IO mon_iothread"), (14228, "worker")]


def test_classify_qemu_threads_nodisk_run() -> None:
    threads = classify_qemu_threads(parse_task_stats(fixture("task_stat.nodisk.txt")))
    assert len(threads.vcpus) == 2
    assert [t.comm for t in threads.emulator] == ["qemu-system-x86", "call_rcu", "IO mon_iothread"]


@pytest.mark.parametrize(
    ("comm", "index"),
    [("CPU 0/TCG", 0), ("CPU 1/TCG", 1), ("CPU 31/KVM", 31), ("CPU 0/KVMX", None), ("ALL CPUs/TCG", None),
     ("cpu 0/KVM", None), ("worker", None), ("IO mon_iothread", None), ("CPU 0/TCG ", None)],
)
def test_vcpu_index(comm: str, index: int | None) -> None:
    assert vcpu_index(comm) == index


def test_classify_single_threaded_tcg() -> None:
    lines = fixture("task_stat.2.txt").splitlines()
    merged = [lines[0], lines[2], lines[3].replace("(CPU 0/TCG)", "(ALL CPUs/TCG)")]
    threads = classify_qemu_threads(parse_task_stats("\n".join(merged)))
    assert threads.vcpus == {}
    assert threads.all_vcpus is not None and threads.all_vcpus.tid == 14226
    assert [t.tid for t in threads.emulator] == [14220, 14225]


def test_classify_refuses_two_processes() -> None:
    one = parse_task_stat(fixture("task_stat.1.txt").splitlines()[3])
    other = TaskStat(tid=99, comm=one.comm, state="S", utime=0, stime=0, processor=0)
    with pytest.raises(ValueError, match="two threads claim vCPU 0"):
        classify_qemu_threads([one, other])


def test_emulator_load_against_its_cpuset() -> None:
    before = parse_task_stats(fixture("task_stat.1.txt"))
    after = parse_task_stats(fixture("task_stat.2.txt"))
    percent = thread_cpu_percent(before, after, ELAPSED_S)
    emulator = [percent[t.tid] for t in classify_qemu_threads(after).emulator]
    check = check_emulator_load(emulator, parse_cpulist("0"))
    assert (check.name, check.expected, check.found, check.ok) == ("emulator load", "< 50% of CPUs 0", "1.0%", True)
    # The spinning vCPU thread alone would be ~100 % of one CPU, ~50 % of two.
    assert check_emulator_load([percent[14226]], {0}).ok is False
    assert cpuset_share([percent[14226]], {0, 1}) == pytest.approx(104 / 2 / 100 / ELAPSED_S)
    with pytest.raises(ValueError, match="empty cpuset"):
        cpuset_share([1.0], set())


def test_concatenated_stats_split_only_at_newlines() -> None:
    lines = fixture("task_stat.1.txt").splitlines()
    odd = lines[5].replace("(worker)", "(a\rb\x0cc\x1cd)")
    comms = [t.comm for t in parse_task_stats("\n".join([*lines[:5], odd]) + "\n")]
    assert comms[4:] == ["CPU 1/TCG", "a\rb\x0cc\x1cd"]


def test_comm_with_parenthesis_and_spaces() -> None:
    line = fixture("task_stat.1.txt").splitlines()[3].replace("(CPU 0/TCG)", "(a) R 1 (b) x)")
    stat = parse_task_stat(line)
    assert (stat.tid, stat.comm, stat.state, stat.utime, stat.stime, stat.processor) == (
        14226, "a) R 1 (b) x", "R", 503, 1, 1)


@pytest.mark.parametrize(
    ("line", "message"),
    [("14226 CPU 0 R 1", "no '\\(comm\\)'"), ("14226 (x) R 1 2 3", "need at least 39"), ("x (y) " + "0 " * 50, "tid")],
)
def test_task_stat_rejects_broken_lines(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_task_stat(line)


# The kernel keeps up to 15 bytes of comm and never a NUL; any other character, ')' and newline
# included, can be set with prctl(PR_SET_NAME).
comms = st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=15)


@given(comm=comms, tid=st.integers(1, 4_194_304), utime=st.integers(0, 2**63 - 1),
       stime=st.integers(0, 2**63 - 1), cpu=st.integers(0, 8191), state=st.sampled_from("RSDZTtXIP"))
def test_task_stat_round_trip(comm: str, tid: int, utime: int, stime: int, cpu: int, state: str) -> None:
    template = fixture("task_stat.1.txt").splitlines()[0]
    fields = template[template.rfind(")") + 2 :].split()
    fields[0], fields[11], fields[12], fields[36] = state, str(utime), str(stime), str(cpu)
    line = f"{tid} ({comm}) {' '.join(fields)}\n"
    assert parse_task_stat(line) == TaskStat(tid=tid, comm=comm, state=state, utime=utime, stime=stime,
                                             processor=cpu)


# --- virsh domstats --vcpu -------------------------------------------------------------------------


def test_domstats_vcpu_captured() -> None:
    stats = parse_domstats_vcpu(fixture("domstats_vcpu.1.txt"))
    assert list(stats) == ["moncap-fixture"]
    dom = stats["moncap-fixture"]
    assert (dom.current, dom.maximum) == (2, 2)
    assert dom.vcpus[0].time_ns == 5_070_000_000
    assert (dom.vcpus[0].state, dom.vcpus[0].wait_ns, dom.vcpus[0].delay_ns) == (1, 0, 6_869_502)
    assert (dom.vcpus[1].time_ns, dom.vcpus[1].delay_ns) == (0, 5_153_719)
    # vcpu.N.time is thread CPU time in whole 10 ms ticks.
    assert all(v.time_ns is not None and v.time_ns % 10_000_000 == 0 for v in dom.vcpus.values())


def test_vcpu_utilisation_between_samples() -> None:
    before = parse_domstats_vcpu(fixture("domstats_vcpu.1.txt"))["moncap-fixture"]
    after = parse_domstats_vcpu(fixture("domstats_vcpu.2.txt"))["moncap-fixture"]
    use = vcpu_utilisation(before, after, ELAPSED_NS)
    # 5.07 s -> 6.11 s of vCPU 0 time in ~1.04 s: a saturated vCPU can read just above 1.
    assert use == {0: pytest.approx(1_040_000_000 / ELAPSED_NS), 1: 0.0}
    assert use[0] > 1.0
    with pytest.raises(ValueError, match="time went down"):
        vcpu_utilisation(after, before, ELAPSED_NS)


def test_domstats_several_domains_and_other_groups() -> None:
    text = (
        "Domain: 'a'\n  state.state=1\n  vcpu.current=1\n  vcpu.maximum=4\n  vcpu.0.state=1\n"
        "  vcpu.0.time=10\n  vcpu.0.halted=yes\n\n"
        "Domain: 'b c'\n  vcpu.current=1\n  vcpu.0.time=20\n  vcpu.0.wait=3\n\n"
    )
    stats = parse_domstats_vcpu(text)
    assert stats["a"] == DomainVcpus("a", 1, 4, {0: stats["a"].vcpus[0]})
    assert (stats["a"].vcpus[0].time_ns, stats["a"].vcpus[0].delay_ns) == (10, None)
    assert (stats["b c"].maximum, stats["b c"].vcpus[0].wait_ns) == (None, 3)
    with pytest.raises(ValueError, match="before any 'Domain:' line"):
        parse_domstats_vcpu("  vcpu.current=1\n")


# --- ps --------------------------------------------------------------------------------------------


def test_ps_threads_captured() -> None:
    threads = parse_ps_threads(fixture("ps_eLo.txt"))
    assert len(threads) == 122
    qemu = [t for t in threads if t.pid == QEMU_PID]
    assert [(t.tid, t.psr, t.comm) for t in qemu] == [
        (14220, 0, "qemu-system-x86"), (14224, 0, "qemu-system-x86"), (14225, 0, "IO mon_iothread"),
        (14226, 1, "CPU 0/TCG"), (14227, 1, "CPU 1/TCG"), (14228, 0, "worker")]
    # The leader row carries the whole process's %CPU, the vCPU row its own.
    assert (qemu[0].pcpu, qemu[3].pcpu) == (99.2, 96.5)


def test_threads_on_pinned_cpus_finds_a_planted_intruder() -> None:
    planted = "99999 99999   1 87.5 stress-ng cpu\n"
    threads = parse_ps_threads(fixture("ps_eLo.txt") + planted)
    intruders = threads_on_cpus(threads, parse_cpulist("1"), {QEMU_PID})
    # 45 other threads of this idle lab machine last ran on CPU 1, plus 8 per-CPU kernel threads
    # that the default filter drops, plus the planted one.
    assert len(intruders) == 45 + 1
    assert len(threads_on_cpus(threads, {1}, {QEMU_PID}, ignore_per_cpu_kthreads=False)) == 45 + 8 + 1
    assert PsThread(99999, 99999, 1, 87.5, "stress-ng cpu") in intruders
    assert not any(t.pid == QEMU_PID for t in intruders)
    assert all(t.psr == 1 for t in intruders)
    assert not any(t.comm in ("migration/1", "ksoftirqd/1", "cpuhp/1") for t in intruders)
    check = check_no_intruders([t for t in intruders if t.pid == 99999], {1})
    assert (check.name, check.expected, check.ok) == ("other threads on CPUs 1", "none", False)
    assert check.found == "stress-ng cpu (pid 99999 tid 99999 on 1)"
    assert check_no_intruders([], {1}).ok


@pytest.mark.parametrize(
    ("comm", "per_cpu"),
    [("ksoftirqd/1", True), ("migration/0", True), ("cpuhp/12", True), ("kworker/1:0H-events_highpri", True),
     ("kworker/u8:2-writeback", False), ("kworker/R-kblockd", False), ("bash", False), ("ksoftirqd", False)],
)
def test_per_cpu_kthreads(comm: str, per_cpu: bool) -> None:
    assert is_per_cpu_kthread(comm) is per_cpu


def test_ps_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="expected pid tid psr pcpu comm"):
        parse_ps_threads("1 2 3\n")
    with pytest.raises(ValueError, match="not a number"):
        parse_ps_threads("1 2 3 x bash\n")


# --- perf stat -------------------------------------------------------------------------------------


def test_perf_llc_not_supported_captured() -> None:
    counters = parse_perf_stat_csv(fixture("perf_stat_llc.txt"))
    assert {e: (c.value, c.status) for e, c in counters.items()} == {
        "LLC-loads": (None, "not supported"), "LLC-load-misses": (None, "not supported")}
    llc = llc_counts(counters)
    assert (llc.loads, llc.misses, llc.miss_ratio) == (None, None, None)


def test_perf_software_events_captured() -> None:
    counters = parse_perf_stat_csv(fixture("perf_stat_sw.txt"))
    assert (counters["task-clock"].value, counters["task-clock"].unit) == (1002.12, "msec")
    assert (counters["context-switches"].value, counters["cpu-migrations"].value) == (39.0, 0.0)
    assert llc_counts(counters).loads is None  # events that were not asked for


def test_perf_llc_counted_handwritten() -> None:
    llc = llc_counts(parse_perf_stat_csv(fixture("perf_stat_llc_counted.handwritten.txt")))
    assert (llc.loads, llc.misses) == (1843920, 402117)
    assert llc.miss_ratio == pytest.approx(402117 / 1843920)


def test_perf_llc_not_counted_handwritten() -> None:
    counters = parse_perf_stat_csv(fixture("perf_stat_llc_not_counted.handwritten.txt"))
    assert counters["LLC-load-misses"].status == "not counted"
    llc = llc_counts(counters)
    assert (llc.loads, llc.misses, llc.miss_ratio) == (1843920, None, None)


def test_perf_user_only_modifier_and_other_separator() -> None:
    text = "# comment\n\n1000;;LLC-loads:u;5;100.00;;\n10;;LLC-load-misses:u;5;100.00;1.00;of all LL-cache accesses\n"
    llc = llc_counts(parse_perf_stat_csv(text, separator=";"))
    assert (llc.loads, llc.misses, llc.miss_ratio) == (1000, 10, 0.01)
    with pytest.raises(ValueError, match="not a number"):
        parse_perf_stat_csv("lots,,LLC-loads,0,100.00,,\n")
    with pytest.raises(ValueError, match="expected value"):
        parse_perf_stat_csv("1000\n")
