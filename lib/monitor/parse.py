"""Parsers for the text the spec's Monitoring and Troubleshooting sections read on a hypervisor.

Pure functions: the caller runs `numastat`, `virsh domstats`, `ps`, `perf stat` or reads /proc and
/sys (on the host, in one batched command) and hands the text here. Nothing in this module does I/O,
so every parser is tested against output captured from a real QEMU guest
(tests/fixtures/monitor/README.md says how).

The thresholds are the spec's (vm-specifications.md, Monitoring and Troubleshooting): a VM's
memory off its NUMA nodeset stays under 1 %, emulator threads use under 50 % of their cpuset,
and nothing else runs on the CPUs its vCPUs are pinned to.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lib import verdicts
from lib.cpuset import format_cpulist
from lib.results import Check

# The spec's numbers live in lib/verdicts.py's one table (the alerting rules are made from it too).
REMOTE_SHARE_LIMIT = verdicts.REMOTE_MEMORY.limit()
EMULATOR_SHARE_LIMIT = verdicts.EMULATOR.limit()
DEFAULT_CLK_TCK = 100

# ASCII only, for the reason lib/cpuset.py gives: int() would also take digits the kernel never prints.
_INT = re.compile(r"-?[0-9]+", re.ASCII)


def _int(text: str, what: str) -> int:
    if _INT.fullmatch(text) is None:
        raise ValueError(f"bad {what}: {text!r} is not an integer")
    return int(text)


def remote_share(per_node: Mapping[int, float], nodeset: Collection[int]) -> float:
    """Share of the amount held off `nodeset` (bytes, pages or MB alike); 0.0 when there is none."""
    total = sum(per_node.values())
    if total <= 0:
        return 0.0
    return sum(amount for node, amount in per_node.items() if node not in nodeset) / total


# --- numastat tables: `numastat -p PID` and `numastat -m` ------------------------------------------

# The column header is the only line made of nothing but "Node N" cells and a final "Total" (after
# "PID" when numastat lists several processes); matching it whole keeps a title such as
# "... for PID 12 (Node 1)" from being taken for it.
_TABLE_HEADER = re.compile(r"(?:PID\s+)?(?:Node [0-9]+\s+)+Total", re.ASCII)
_NODE_CELL = re.compile(r"Node ([0-9]+)", re.ASCII)
_PROCESS_TITLE = re.compile(r"Per-node process memory usage \(in MBs\) for PID ([0-9]+) \((.*)\)", re.ASCII)


@dataclass(frozen=True)
class NumastatTable:
    """One numastat table. Each row holds one value per node, in `nodes` order, then the total."""

    title: str
    nodes: tuple[int, ...]
    rows: Mapping[str, tuple[float, ...]]

    def per_node(self, label: str) -> dict[int, float]:
        values = self._row(label)
        return dict(zip(self.nodes, values[:-1], strict=True))

    def total(self, label: str) -> float:
        return self._row(label)[-1]

    def _row(self, label: str) -> tuple[float, ...]:
        try:
            return self.rows[label]
        except KeyError:
            raise ValueError(f"numastat table has no {label!r} row (rows: {', '.join(self.rows)})") from None


def parse_numastat_table(text: str) -> NumastatTable:
    """Parse numastat's per-node table (plain or `-c` compact); ValueError if there is none.

    numastat 2.0.16 on newer kernels prints "Token X not in hash table." lines to stdout before
    the table (captured in tests/fixtures/monitor/numastat_m.txt); lines above the header are
    therefore skipped rather than rejected.
    """
    lines = text.splitlines()
    header_at = next((i for i, line in enumerate(lines) if _TABLE_HEADER.fullmatch(line.strip())), None)
    if header_at is None:
        raise ValueError("no numastat table: no header line of 'Node N ... Total' columns")
    nodes = tuple(int(n) for n in _NODE_CELL.findall(lines[header_at]))
    title = next((line.strip() for line in lines[:header_at] if line.startswith("Per-node")), "")
    width = len(nodes) + 1
    rows: dict[str, tuple[float, ...]] = {}
    for line in lines[header_at + 1 :]:
        stripped = line.strip()
        if not stripped or stripped.startswith("-"):
            continue
        tokens = stripped.split()
        if len(tokens) <= width:
            raise ValueError(f"numastat row {line!r}: expected a label and {width} numbers")
        # The label can hold spaces ("1234 (qemu-system-x86)" in the multi-process layout); the
        # numbers never do, so count them from the right.
        label = " ".join(tokens[:-width])
        try:
            values = tuple(float(cell) for cell in tokens[-width:])
        except ValueError:
            raise ValueError(f"numastat row {line!r}: expected {width} numbers after the label") from None
        rows[label] = values
    if not rows:
        raise ValueError("numastat table has a header but no rows")
    return NumastatTable(title=title, nodes=nodes, rows=rows)


@dataclass(frozen=True)
class NumastatProcess:
    """`numastat -p PID` for one process, in MB."""

    pid: int
    comm: str
    table: NumastatTable

    @property
    def per_node_mb(self) -> dict[int, float]:
        return self.table.per_node("Total")

    @property
    def total_mb(self) -> float:
        return self.table.total("Total")


def parse_numastat_process(text: str) -> NumastatProcess:
    """Parse `numastat -p PID` (one process: Huge, Heap, Stack, Private and Total rows)."""
    table = parse_numastat_table(text)
    match = _PROCESS_TITLE.fullmatch(table.title)
    if match is None:
        raise ValueError(f"not single-process numastat output: title is {table.title!r}")
    return NumastatProcess(pid=int(match[1]), comm=match[2], table=table)


@dataclass(frozen=True)
class NodeMemInfo:
    total_mb: float
    free_mb: float
    used_mb: float


def parse_numastat_meminfo(text: str) -> dict[int, NodeMemInfo]:
    """Parse `numastat -m` into each node's MemTotal, MemFree and MemUsed (MB)."""
    table = parse_numastat_table(text)
    total, free, used = (table.per_node(label) for label in ("MemTotal", "MemFree", "MemUsed"))
    return {node: NodeMemInfo(total[node], free[node], used[node]) for node in table.nodes}


# --- /proc/PID/numa_maps ---------------------------------------------------------------------------

_NODE_PAGES = re.compile(r"N([0-9]+)=([0-9]+)", re.ASCII)
_PAGE_SIZE = re.compile(r"kernelpagesize_kB=([0-9]+)", re.ASCII)


@dataclass(frozen=True)
class NumaMaps:
    """A process's resident memory per NUMA node.

    `node_pages` adds pages of every size (what the N<k>= fields count); `node_bytes` weighs each
    mapping's pages by its own kernelpagesize_kB, which is the figure to compare, since one 2 MiB
    huge page outweighs 512 small ones.
    """

    node_pages: Mapping[int, int]
    node_bytes: Mapping[int, int]
    # Only the memory a guest's placement decides: anonymous, hugetlb and shared-memory (memfd, /dev/shm)
    # mappings. File-backed pages (the QEMU binary, libraries) sit wherever the page cache put them
    # first and are shared with every other process, so they never count as the VM's remote memory.
    guest_bytes: Mapping[int, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.node_bytes.values())

    def remote_share(self, nodeset: Collection[int]) -> float:
        return remote_share(self.node_bytes, nodeset)


def parse_numa_maps(text: str) -> NumaMaps:
    """Sum /proc/PID/numa_maps: one mapping a line, `N<node>=<pages>` per node it has pages on."""
    pages: dict[int, int] = {}
    size: dict[int, int] = {}
    guest: dict[int, int] = {}
    # The kernel escapes only "\n", "\t", "=" and " " in file= paths (\040 for a space), so lines end
    # at "\n" alone (a \r in a file name would fool splitlines()) and fields split on blanks.
    for number, line in enumerate(text.split("\n"), start=1):
        found: list[tuple[int, int]] = []
        page_kb: int | None = None
        for token in line.split()[2:]:
            if (match := _NODE_PAGES.fullmatch(token)) is not None:
                found.append((int(match[1]), int(match[2])))
            elif (match := _PAGE_SIZE.fullmatch(token)) is not None:
                page_kb = int(match[1])
        if not found:
            continue  # a mapping with nothing resident prints only its address and policy
        if page_kb is None:
            raise ValueError(f"numa_maps line {number} has N<node>= pages but no kernelpagesize_kB: {line!r}")
        owned = _guest_mapping(line)
        for node, count in found:
            pages[node] = pages.get(node, 0) + count
            size[node] = size.get(node, 0) + count * page_kb * 1024
            if owned:
                guest[node] = guest.get(node, 0) + count * page_kb * 1024
    return NumaMaps(node_pages=pages, node_bytes=size, guest_bytes=guest)


_SHARED_MEMORY = ("/memfd:", "/dev/shm/", "/SYSV")


def _guest_mapping(line: str) -> bool:
    """Anonymous (no file=), hugetlb ("huge"), or shared memory: what the VM's own placement decides."""
    tokens = line.split()[2:]
    files = [t[5:] for t in tokens if t.startswith("file=")]
    return "huge" in tokens or not files or files[0].startswith(_SHARED_MEMORY)


# --- /sys/devices/system/node/node*/numastat -------------------------------------------------------

NodeCounters = Mapping[int, Mapping[str, int]]


def parse_node_numastat(text: str) -> dict[str, int]:
    """One node's numastat file: "numa_hit 46670458" lines (numa_miss, numa_foreign, ...)."""
    counters: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"bad node numastat line {line!r}: expected 'name value'")
        counters[parts[0]] = _int(parts[1], f"value of {parts[0]}")
    return counters


def parse_node_numastats(files: Mapping[int, str]) -> dict[int, dict[str, int]]:
    """The node*/numastat files by node number, as read from sysfs."""
    return {node: parse_node_numastat(text) for node, text in files.items()}


def numastat_delta(before: NodeCounters, after: NodeCounters) -> dict[int, dict[str, int]]:
    """Counts between two samples. The counters only grow, so a drop means the samples do not
    belong together (another host, or a reboot in between) and is an error, not a negative rate."""
    if set(before) != set(after):
        raise ValueError(f"samples cover different nodes: {sorted(before)} then {sorted(after)}")
    delta: dict[int, dict[str, int]] = {}
    for node in sorted(after):
        if set(before[node]) != set(after[node]):
            raise ValueError(f"node {node}: samples have different counters")
        delta[node] = {}
        for name, value in after[node].items():
            change = value - before[node][name]
            if change < 0:
                raise ValueError(f"node {node} {name} went down ({before[node][name]} -> {value})")
            delta[node][name] = change
    return delta


def miss_share(counters: NodeCounters) -> float:
    """numa_miss as a share of all allocations: pages a node served though another node was asked."""
    allocations = sum(c.get("numa_hit", 0) + c.get("numa_miss", 0) for c in counters.values())
    if allocations == 0:
        return 0.0
    return sum(c.get("numa_miss", 0) for c in counters.values()) / allocations


def foreign_share(counters: NodeCounters) -> float:
    """numa_foreign as a share of all allocations (hit + miss over the nodes), 0.0 when none.

    Every page allocation counts once as hit or miss on the node that served it, and each miss
    counts once more as foreign on the node that was asked for; that makes hit + miss the total
    the spec's "numa_foreign > 1 % of total" means. Feed it a numastat_delta, not raw counters,
    or boot-time allocations drown the present.
    """
    allocations = sum(c.get("numa_hit", 0) + c.get("numa_miss", 0) for c in counters.values())
    if allocations == 0:
        return 0.0
    return sum(c.get("numa_foreign", 0) for c in counters.values()) / allocations


# --- /proc/PID/task/TID/stat -----------------------------------------------------------------------

# proc(5) numbers the fields from 1; comm is field 2, so field N sits at N - 3 after it.
_STATE, _FLAGS, _UTIME, _STIME, _PROCESSOR = 3 - 3, 9 - 3, 14 - 3, 15 - 3, 39 - 3
PF_KTHREAD = 0x00200000  # include/linux/sched.h: the task is a kernel thread


@dataclass(frozen=True)
class TaskStat:
    tid: int
    comm: str
    state: str
    utime: int  # clock ticks
    stime: int
    processor: int  # CPU it last ran on
    kthread: bool = False  # flags has PF_KTHREAD: the kernel's own, not a process cgroups confine

    @property
    def ticks(self) -> int:
        return self.utime + self.stime


def parse_task_stat(line: str) -> TaskStat:
    """One /proc/PID/task/TID/stat line.

    comm is whatever the thread named itself (up to 15 bytes, any of them ')' or ' '), so it is
    cut from the first " (" to the LAST ')': every field after it is a number or a state letter.
    """
    line = line.rstrip("\n")
    opening = line.find(" (")
    closing = line.rfind(")")
    if opening < 0 or closing < opening + 1:
        raise ValueError(f"bad task stat line {line!r}: no '(comm)'")
    rest = line[closing + 1 :].split()
    if len(rest) <= _PROCESSOR:
        raise ValueError(f"bad task stat line {line!r}: {len(rest) + 2} fields, need at least 39")
    return TaskStat(
        tid=_int(line[:opening], "tid"),
        comm=line[opening + 2 : closing],
        state=rest[_STATE],
        utime=_int(rest[_UTIME], "utime"),
        stime=_int(rest[_STIME], "stime"),
        processor=_int(rest[_PROCESSOR], "processor"),
        kthread=bool(_int(rest[_FLAGS], "flags") & PF_KTHREAD),
    )


def parse_task_stats(text: str) -> tuple[TaskStat, ...]:
    """Concatenated stat files (`cat /proc/PID/task/*/stat`), one thread a line.

    A comm holding a newline (possible through prctl, never done by QEMU) would split its line; that
    fails loudly here rather than being guessed at.
    """
    # Only "\n" ends a line here: splitlines() would also cut at \r, \f or \x1c, which a comm may hold.
    return tuple(parse_task_stat(line) for line in text.split("\n") if line.strip())


def thread_cpu_percent(
    before: Iterable[TaskStat], after: Iterable[TaskStat], elapsed_s: float, clk_tck: int = DEFAULT_CLK_TCK
) -> dict[int, float]:
    """Each thread's CPU use between two samples, in percent of one CPU (like top -H).

    Only threads present in both samples are reported: one that started or ended in between has no
    interval to measure. clk_tck is the HOST's sysconf(_SC_CLK_TCK) (`getconf CLK_TCK`).
    """
    if elapsed_s <= 0:
        raise ValueError(f"elapsed time must be positive, got {elapsed_s}")
    if clk_tck <= 0:
        raise ValueError(f"clk_tck must be positive, got {clk_tck}")
    first = {t.tid: t for t in before}
    out: dict[int, float] = {}
    for thread in after:
        old = first.get(thread.tid)
        if old is None:
            continue
        ticks = thread.ticks - old.ticks
        if ticks < 0:
            # Same tid, less CPU time: the thread died and the tid was reused.
            raise ValueError(f"thread {thread.tid} ({thread.comm}) CPU time went down: {old.ticks} -> {thread.ticks}")
        out[thread.tid] = 100.0 * ticks / clk_tck / elapsed_s
    return out


# QEMU names vCPU threads "CPU <index>/<accelerator>" when started with -name ...,debug-threads=on,
# which libvirt passes (seen in this lab's domain log): "CPU 0/KVM" under KVM, "CPU 0/TCG" under
# multi-threaded TCG (QEMU 7.2 here). Single-threaded TCG runs every vCPU in one "ALL CPUs/TCG".
_VCPU_COMM = re.compile(r"CPU ([0-9]+)/(?:KVM|TCG)", re.ASCII)
_ALL_VCPUS_COMM = "ALL CPUs/TCG"


def vcpu_index(comm: str) -> int | None:
    """The vCPU index a QEMU thread name stands for, or None for any other (emulator) thread."""
    match = _VCPU_COMM.fullmatch(comm)
    return None if match is None else int(match[1])


@dataclass(frozen=True)
class QemuThreads:
    """A QEMU process's threads: vCPUs by index, and everything else (the emulator threads).

    all_vcpus is the one thread of single-threaded TCG that runs every vCPU in turn: neither a
    vCPU of its own nor emulator work, so it is kept apart from both.
    """

    vcpus: Mapping[int, TaskStat]
    emulator: tuple[TaskStat, ...]
    all_vcpus: TaskStat | None = None


def classify_qemu_threads(threads: Iterable[TaskStat]) -> QemuThreads:
    """Split one QEMU process's threads into vCPU and emulator threads by name.

    Emulator threads are not recognised by name on purpose: besides the main loop (comm
    "qemu-system-x86", truncated to 15 bytes), there are "IO mon_iothread", "call_rcu", "worker",
    iothreads named by the user, and a thread can even keep the main loop's name (QEMU names
    threads only once it has parsed -name, so call_rcu, started earlier, sometimes misses it: see
    task_stat.1.txt in the fixtures).
    """
    vcpus: dict[int, TaskStat] = {}
    emulator: list[TaskStat] = []
    all_vcpus: TaskStat | None = None
    for thread in threads:
        if thread.comm == _ALL_VCPUS_COMM:
            all_vcpus = thread
            continue
        index = vcpu_index(thread.comm)
        if index is None:
            emulator.append(thread)
            continue
        if index in vcpus:
            raise ValueError(f"two threads claim vCPU {index} (tids {vcpus[index].tid}, {thread.tid}): "
                             "threads of more than one QEMU process?")
        vcpus[index] = thread
    return QemuThreads(vcpus=dict(sorted(vcpus.items())), emulator=tuple(emulator), all_vcpus=all_vcpus)


def cpuset_share(percents: Iterable[float], cpus: Collection[int]) -> float:
    """Threads' summed CPU percent as a share of what `cpus` can give (100 % per CPU)."""
    if not cpus:
        raise ValueError("an empty cpuset has no capacity to share")
    return sum(percents) / (100.0 * len(cpus))


# --- virsh domstats --vcpu -------------------------------------------------------------------------

_DOMAIN_LINE = re.compile(r"Domain: '(.*)'")
_VCPU_KEY = re.compile(r"vcpu\.([0-9]+)\.([a-z_]+)", re.ASCII)


@dataclass(frozen=True)
class VcpuStat:
    """One vCPU from domstats; a field libvirt did not print is None.

    time_ns is the vCPU thread's utime + stime, so it moves in clock ticks (10 ms at CLK_TCK 100).
    delay_ns is the thread's run-queue wait (/proc/.../schedstat), what the guest sees as steal.
    wait_ns comes from /proc/.../sched wait_sum and stays 0 on kernels built without schedstats.
    """

    state: int | None = None
    time_ns: int | None = None
    wait_ns: int | None = None
    delay_ns: int | None = None


@dataclass(frozen=True)
class DomainVcpus:
    name: str
    current: int | None
    maximum: int | None
    vcpus: Mapping[int, VcpuStat]


_VCPU_FIELDS = {"state": "state", "time": "time_ns", "wait": "wait_ns", "delay": "delay_ns"}


def parse_domstats_vcpu(text: str) -> dict[str, DomainVcpus]:
    """Parse `virsh domstats --vcpu [DOMAIN...]` by domain name.

    Lines of other stats groups and vCPU fields this module does not use (e.g. vcpu.N.halted on
    some hosts) are skipped, so the output of a wider `virsh domstats` parses too.
    """
    domains: dict[str, DomainVcpus] = {}
    name: str | None = None
    totals: dict[str, int] = {}
    fields: dict[int, dict[str, int]] = {}

    def finish() -> None:
        if name is not None:
            domains[name] = DomainVcpus(
                name=name,
                current=totals.get("current"),
                maximum=totals.get("maximum"),
                vcpus={i: VcpuStat(**fields[i]) for i in sorted(fields)},
            )

    for line in text.splitlines():
        if (match := _DOMAIN_LINE.fullmatch(line.strip())) is not None:
            finish()
            name, totals, fields = match[1], {}, {}
            continue
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        if name is None:
            raise ValueError(f"domstats field {line.strip()!r} before any 'Domain:' line")
        if key in ("vcpu.current", "vcpu.maximum"):
            totals[key.removeprefix("vcpu.")] = _int(value, key)
        elif (match := _VCPU_KEY.fullmatch(key)) is not None and match[2] in _VCPU_FIELDS:
            fields.setdefault(int(match[1]), {})[_VCPU_FIELDS[match[2]]] = _int(value, key)
    finish()
    return domains


def vcpu_utilisation(before: DomainVcpus, after: DomainVcpus, elapsed_ns: int) -> dict[int, float]:
    """Each vCPU's busy share of the interval (1.0 = one host CPU all the time).

    Not clamped to 1.0: time_ns moves in whole ticks and the two virsh calls are not exactly
    elapsed_ns apart, so a saturated vCPU can read slightly above 1 and clamping would hide how
    noisy the figure is.
    """
    if elapsed_ns <= 0:
        raise ValueError(f"elapsed time must be positive, got {elapsed_ns} ns")
    out: dict[int, float] = {}
    for index, stat in after.vcpus.items():
        old = before.vcpus.get(index)
        if old is None or old.time_ns is None or stat.time_ns is None:
            continue
        if stat.time_ns < old.time_ns:
            raise ValueError(f"{after.name} vCPU {index} time went down: {old.time_ns} -> {stat.time_ns}")
        out[index] = (stat.time_ns - old.time_ns) / elapsed_ns
    return out


# --- ps -eLo pid,tid,psr,pcpu,comm -----------------------------------------------------------------


@dataclass(frozen=True)
class PsThread:
    """One `ps -eLo pid,tid,psr,pcpu,comm` row.

    psr is the CPU the thread last ran on (a snapshot). pcpu is CPU time over the thread's
    lifetime, not a current rate, and on a process's leader row (tid == pid) procps reports the
    WHOLE process's figure, not the leader thread's own.
    """

    pid: int
    tid: int
    psr: int
    pcpu: float
    comm: str


def parse_ps_threads(text: str) -> tuple[PsThread, ...]:
    """Parse the output of `ps -eLo pid,tid,psr,pcpu,comm` (header line optional)."""
    threads: list[PsThread] = []
    for line in text.splitlines():
        parts = line.split(None, 4)
        if not parts or parts[0] == "PID":
            continue
        if len(parts) != 5:
            raise ValueError(f"bad ps line {line!r}: expected pid tid psr pcpu comm")
        try:
            pcpu = float(parts[3])
        except ValueError:
            raise ValueError(f"bad ps line {line!r}: pcpu {parts[3]!r} is not a number") from None
        threads.append(PsThread(pid=_int(parts[0], "pid"), tid=_int(parts[1], "tid"), psr=_int(parts[2], "psr"),
                                pcpu=pcpu, comm=parts[4]))
    return tuple(threads)


# Kernel threads bound to one CPU ("ksoftirqd/1", "migration/1", "kworker/1:0H-kblockd") exist on
# every CPU and cannot be moved off; counting them as intruders would fail every host.
_PER_CPU_KTHREAD = re.compile(r"(?:ksoftirqd|migration|cpuhp|rcuc|idle_inject|watchdog)/[0-9]+|kworker/[0-9]+:.*",
                              re.ASCII)


def is_per_cpu_kthread(comm: str) -> bool:
    return _PER_CPU_KTHREAD.fullmatch(comm) is not None


def threads_on_cpus(
    threads: Iterable[PsThread],
    cpus: Collection[int],
    ignore_pids: Collection[int] = frozenset(),
    *,
    ignore_per_cpu_kthreads: bool = True,
) -> tuple[PsThread, ...]:
    """Threads last seen on `cpus`, other than those of `ignore_pids` (the VM's own QEMU).

    The per-CPU kernel-thread filter goes by name, which any process can imitate; pass
    ignore_per_cpu_kthreads=False to see everything.
    """
    return tuple(
        t for t in threads
        if t.psr in cpus and t.pid not in ignore_pids
        and not (ignore_per_cpu_kthreads and is_per_cpu_kthread(t.comm))
    )


# --- perf stat -x, ---------------------------------------------------------------------------------

_UNCOUNTED = {"<not supported>": "not supported", "<not counted>": "not counted"}


@dataclass(frozen=True)
class PerfCounter:
    event: str
    value: float | None  # None when perf could not count it (see status)
    unit: str
    status: str  # "counted", "not supported" or "not counted"


def parse_perf_stat_csv(text: str, separator: str = ",") -> dict[str, PerfCounter]:
    """Parse `perf stat -x<separator>` output (perf writes it to stderr) by event name.

    Handles perf's plain layout: value, unit, event, run time, percent running, then optional
    metric columns; the -I/-A/--per-* layouts put extra columns first and are not supported.
    "<not supported>" (no PMU for it: the case on this lab's VMs) and "<not counted>" give None.
    """
    counters: dict[str, PerfCounter] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split(separator)
        if len(cells) < 3 or not cells[2]:
            raise ValueError(f"bad perf stat line {line!r}: expected value{separator}unit{separator}event...")
        raw, unit, event = cells[0].strip(), cells[1], cells[2]
        if raw in _UNCOUNTED:
            counters[event] = PerfCounter(event, None, unit, _UNCOUNTED[raw])
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"bad perf stat line {line!r}: value {raw!r} is not a number") from None
        counters[event] = PerfCounter(event, value, unit, "counted")
    return counters


@dataclass(frozen=True)
class LlcCounts:
    loads: int | None
    misses: int | None

    @property
    def miss_ratio(self) -> float | None:
        if self.loads is None or self.misses is None or self.loads == 0:
            return None
        return self.misses / self.loads


def llc_counts(counters: Mapping[str, PerfCounter]) -> LlcCounts:
    """LLC-loads and LLC-load-misses from parsed perf output; None for each one perf did not count.

    perf names an event "LLC-loads:u" when it could only count user space, so the modifier is
    ignored when looking them up.
    """
    by_base = {event.split(":", 1)[0]: counter for event, counter in counters.items()}

    def count(event: str) -> int | None:
        counter = by_base.get(event)
        return None if counter is None or counter.value is None else int(counter.value)

    return LlcCounts(loads=count("LLC-loads"), misses=count("LLC-load-misses"))


# --- the spec's thresholds as checks ---------------------------------------------------------------


def check_remote_memory(per_node: Mapping[int, float], nodeset: Collection[int],
                        limit: float = REMOTE_SHARE_LIMIT) -> Check:
    """Memory off the VM's nodeset (numa_maps bytes or numastat MB) under `limit` (spec: 1 %)."""
    share = remote_share(per_node, nodeset)
    return Check("remote memory", f"< {limit:.2%} off node(s) {format_cpulist(nodeset)}", f"{share:.2%}",
                 share < limit)


def check_node_allocations(before: NodeCounters, after: NodeCounters, interval: float,
                           limit: float = REMOTE_SHARE_LIMIT) -> list[Check]:
    """The spec's "numa_foreign > 1 % of total", and numa_miss alike, over the interval between the
    two samples of every node's numastat (counters since boot would drown the present)."""
    names = (f"host numa_foreign share over {interval:g}s", f"host numa_miss share over {interval:g}s")
    try:
        delta = numastat_delta(before, after)
    except ValueError as exc:
        return [Check(name, f"at most {limit:.2%} of allocations", f"not comparable: {exc}", False) for name in names]
    if not delta:
        return [Check.evidence(name, "not available (no node numastat)") for name in names]
    total = sum(c.get("numa_hit", 0) + c.get("numa_miss", 0) for c in delta.values())
    rows = []
    shares = ((names[0], "numa_foreign", foreign_share(delta)), (names[1], "numa_miss", miss_share(delta)))
    for name, key, share in shares:
        count = sum(c.get(key, 0) for c in delta.values())
        rows.append(Check(name, f"at most {limit:.2%} of allocations", f"{share:.2%} ({count} of {total} pages)",
                          share <= limit))
    return rows


def check_emulator_load(percents: Iterable[float], cpus: Collection[int],
                        limit: float = EMULATOR_SHARE_LIMIT) -> Check:
    """Emulator threads' CPU use under `limit` of their cpuset (spec: 50 %, then add a core)."""
    share = cpuset_share(percents, cpus)
    return Check("emulator load", f"< {limit:.0%} of CPUs {format_cpulist(cpus)}", f"{share:.1%}", share < limit)


def check_no_intruders(intruders: Sequence[PsThread], cpus: Collection[int]) -> Check:
    """No other threads on the vCPUs' CPUs (spec: "Verify no other processes using pinned CPUs")."""
    found = ", ".join(f"{t.comm} (pid {t.pid} tid {t.tid} on {t.psr})" for t in intruders) or "none"
    return Check(f"other threads on CPUs {format_cpulist(cpus)}", "none", found, not intruders)
