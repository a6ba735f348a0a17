"""Write a fake sysfs/procfs tree ("sysroot") for a host shape, laid out and formatted as Linux does.

Every value file ends in a newline and uses the kernel's own formatting (cpulists, %*pb masks,
padded meminfo columns, tab-aligned cpuinfo keys), so a parser that works here works on a real
host. Tests in tests/test_harness.py check the formatters against this machine's real files.

CPU numbering (HostShape.siblings) is one of the enumerations real firmware and kernels produce:
"spread" (Linux's usual Intel/AMD order: first threads of every core of every socket, then the
second threads, id = t*S*C + k), "adjacent" (siblings consecutive, id = k*T + t) or "socket-spread"
(spread inside each socket: id = s*C*T + t*C + c), where k is the global core index s*C + c, or
c*S + s when socket_interleave numbers the sockets round-robin (node CPUs every S-th id).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

THP_ENABLED_CHOICES = ["always", "madvise", "never"]
THP_DEFRAG_CHOICES = ["always", "defer", "defer+madvise", "madvise", "never"]
GOVERNORS = ["performance", "powersave"]
VENDOR_FLAGS = ("vmx", "svm")


def _default_dmi() -> dict[str, str]:
    return {
        "bios_vendor": "Dell Inc.",
        "bios_version": "2.19.0",
        "bios_date": "03/07/2024",
        "product_name": "PowerEdge R730",
        "sys_vendor": "Dell Inc.",
    }


@dataclass(frozen=True)
class HostShape:
    sockets: int = 2
    cores_per_socket: int = 18
    threads_per_core: int = 2
    nodes: int | None = None  # NUMA nodes; default one per socket
    memory_mb_per_node: int = 131072
    l3_kb: int = 46080  # per socket (45 MB)
    vendor_flag: str | None = "vmx"  # "vmx" (Intel), "svm" (AMD) or None (VT-x disabled in firmware)
    smt_active: bool | None = None  # default: threads_per_core > 1; False with 2 threads = "nosmt"
    cpufreq: bool = True
    governor: str = "powersave"
    numa_balancing: int = 1
    thp_enabled: str = "madvise"
    thp_defrag: str = "madvise"
    iommu: bool = True
    dmi: dict[str, str] = field(default_factory=_default_dmi)
    drop_nodes: tuple[int, ...] = ()  # nodeN dir omitted; its CPUs stay online but belong to no node
    node_cpus_override: dict[int, str] | None = None  # {node: cpulist}; CPUs in no node are absent
    siblings: Literal["spread", "adjacent", "socket-spread"] = "spread"
    socket_interleave: bool = False  # sockets numbered round-robin: socket s holds CPUs s, s+S, ...
    socket_nodes: tuple[int, ...] | None = None  # node id of each socket, e.g. (0, 0, 2, 3): ids with gaps
    ccx_cores: int | None = None  # cores per L3 instance (AMD CCX); None: one L3 per socket
    # l3_kb above is the size of one L3 instance; 0 writes no L3 at all (as some virtual machines).
    possible_cpus: int | None = None  # CPUs the kernel could hot-add: possible 0..N-1 beyond present
    offline: tuple[int, ...] = ()  # present CPUs taken offline (echo 0 > cpuN/online)
    # A kernel before 4.19/5.x: no smt/ dir, no core_cpus*, no cache id, nodes with cpumap only and no
    # meminfo (RHEL 7's 3.10 has meminfo, but the parser must not depend on it).
    old_kernel: bool = False

    def __post_init__(self) -> None:
        if min(self.sockets, self.cores_per_socket, self.threads_per_core) < 1:
            raise ValueError("sockets, cores_per_socket and threads_per_core must be >= 1")
        if not 1 <= self.node_count <= self.sockets * self.cores_per_socket:
            raise ValueError(f"nodes must be between 1 and the number of cores, got {self.node_count}")
        if self.vendor_flag not in (*VENDOR_FLAGS, None):
            raise ValueError(f"vendor_flag must be vmx, svm or None, got {self.vendor_flag!r}")
        if self.smt_active and self.threads_per_core == 1:
            raise ValueError("smt_active=True needs threads_per_core > 1")
        if self.thp_enabled not in THP_ENABLED_CHOICES or self.thp_defrag not in THP_DEFRAG_CHOICES:
            raise ValueError("thp_enabled/thp_defrag must be one of the kernel's choices")
        if self.governor not in GOVERNORS:
            raise ValueError(f"governor must be one of {GOVERNORS}")
        bad = [n for n in (*self.drop_nodes, *(self.node_cpus_override or {})) if n not in self.node_ids]
        if bad:
            raise ValueError(f"node ids {bad} out of range for {self.node_count} nodes")
        if self.socket_nodes is not None and len(self.socket_nodes) != self.sockets:
            raise ValueError("socket_nodes needs one node id per socket")
        if self.ccx_cores is not None and self.cores_per_socket % self.ccx_cores:
            raise ValueError("ccx_cores must divide cores_per_socket")
        present = self.sockets * self.cores_per_socket * self.threads_per_core
        if self.possible_cpus is not None and self.possible_cpus < present:
            raise ValueError(f"possible_cpus must be at least the {present} present CPUs")
        if 0 in self.offline or any(not 0 < c < present for c in self.offline):
            raise ValueError("offline CPUs must be present and not CPU 0 (x86 cannot offline it)")

    @property
    def node_count(self) -> int:
        if self.socket_nodes is not None:
            return len(set(self.socket_nodes))
        return self.sockets if self.nodes is None else self.nodes

    @property
    def node_ids(self) -> list[int]:
        return sorted(set(self.socket_nodes)) if self.socket_nodes is not None else list(range(self.node_count))

    @property
    def smt_on(self) -> bool:
        return self.threads_per_core > 1 if self.smt_active is None else self.smt_active


@dataclass(frozen=True)
class Cpu:
    id: int
    socket: int
    core: int  # core index within the socket (the kernel's core_id)
    thread: int
    node: int | None  # None when the CPU's node was dropped
    online: bool


@dataclass(frozen=True)
class Layout:
    """The topology the tree encodes, so tests can compute expectations without re-deriving it."""

    shape: HostShape
    cpus: dict[int, Cpu]  # present CPUs only
    node_cpus: dict[int, list[int]]  # every node id, including dropped ones
    nodes_written: list[int]

    @property
    def online(self) -> list[int]:
        return [c.id for c in self.cpus.values() if c.online]

    @property
    def nr_cpu_ids(self) -> int:  # width of every %*pb mask: the kernel sizes them by possible CPUs
        return self.shape.possible_cpus or max(self.cpus) + 1

    def node_socket(self, node: int) -> int:
        shape = self.shape
        if shape.socket_nodes is not None:
            return shape.socket_nodes.index(node)
        return (node * shape.sockets * shape.cores_per_socket // shape.node_count) // shape.cores_per_socket

    def cores(self) -> list[list[int]]:
        """Every core's CPUs (siblings), in the order of their first CPU id: the truth the tree encodes."""
        by_core: dict[tuple[int, int], list[int]] = {}
        for cpu in self.cpus.values():
            by_core.setdefault((cpu.socket, cpu.core), []).append(cpu.id)
        return sorted((sorted(ids) for ids in by_core.values()), key=lambda ids: ids[0])


def cpu_id(shape: HostShape, socket: int, core: int, thread: int) -> int:
    s_n, c_n, t_n = shape.sockets, shape.cores_per_socket, shape.threads_per_core
    k = core * s_n + socket if shape.socket_interleave else socket * c_n + core
    if shape.siblings == "adjacent":
        return k * t_n + thread
    if shape.siblings == "socket-spread":
        return socket * c_n * t_n + thread * c_n + core
    return thread * s_n * c_n + k


def layout(shape: HostShape) -> Layout:
    s_n, c_n, t_n = shape.sockets, shape.cores_per_socket, shape.threads_per_core
    total_cores = s_n * c_n
    where: dict[int, tuple[int, int, int]] = {}
    node_cpus: dict[int, list[int]] = {n: [] for n in shape.node_ids}
    for s in range(s_n):
        for c in range(c_n):
            # Cores split evenly over nodes: covers 1 node per socket, SNC (more) and interleave (fewer).
            node = (s * c_n + c) * shape.node_count // total_cores
            if shape.socket_nodes is not None:
                node = shape.socket_nodes[s]
            for t in range(t_n):
                cid = cpu_id(shape, s, c, t)
                where[cid] = (s, c, t)
                node_cpus[node].append(cid)
    for node, text in (shape.node_cpus_override or {}).items():
        ids = parse_cpulist(text)
        if unknown := set(ids) - set(where):
            raise ValueError(f"node {node} override lists CPUs {sorted(unknown)} the shape does not have")
        node_cpus[node] = ids
    seen: dict[int, int] = {}
    for node, ids in node_cpus.items():
        for cid in ids:
            if cid in seen:
                raise ValueError(f"CPU {cid} is in node {seen[cid]} and node {node}")
            seen[cid] = node
    cpus: dict[int, Cpu] = {}
    for cid in sorted(seen):
        s, c, t = where[cid]
        node = seen[cid]
        online = (t == 0 or shape.smt_on) and cid not in shape.offline
        cpus[cid] = Cpu(cid, s, c, t, None if node in shape.drop_nodes else node, online)
    written = [n for n in node_cpus if n not in shape.drop_nodes]
    return Layout(shape, cpus, {n: sorted(v) for n, v in node_cpus.items()}, written)


# --- kernel formats -------------------------------------------------------------------------------


def format_cpulist(ids: Iterable[int]) -> str:
    """The kernel's %*pbl: "0-17,36-53"; empty set is ""."""
    out: list[str] = []
    run: list[int] = []
    for i in sorted(set(ids)):
        if run and i != run[-1] + 1:
            out.append(_run(run))
            run = []
        run.append(i)
    if run:
        out.append(_run(run))
    return ",".join(out)


def _run(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def parse_cpulist(text: str) -> list[int]:
    ids: list[int] = []
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        ids.extend(range(int(lo), int(hi or lo) + 1))
    return ids


def format_cpumask(ids: Iterable[int], nbits: int) -> str:
    """The kernel's %*pb: 32-bit hex words joined by commas, most significant first.

    Only the first word is shortened, to the hex digits its bits need (2 CPUs -> "3", 72 -> "00,...").
    """
    value = sum(1 << i for i in set(ids))
    words: list[str] = []
    for start in range(0, nbits, 32):
        width = min(32, nbits - start)
        words.append(f"{(value >> start) & ((1 << width) - 1):0{(width + 3) // 4}x}")
    return ",".join(reversed(words))


def kernel_bracket(choices: list[str], current: str) -> str:
    """How sysfs shows a choice: "always [madvise] never"."""
    if current not in choices:
        raise ValueError(f"{current!r} is not one of {choices}")
    return " ".join(f"[{c}]" if c == current else c for c in choices)


def meminfo_line(key: str, value: int, *, kb: bool = True) -> str:
    """/proc/meminfo: the kernel pads "Key:" to 16 columns, then the number to 8."""
    return f"{key + ':':<16}{value:>8}" + (" kB" if kb else "")


def node_meminfo_line(node: int, key: str, value: int) -> str:
    """nodeN/meminfo: "%8lu kB" after a 16-column key, but HugePages_* are "%5u" after 17 columns."""
    if key.startswith("HugePages_"):
        return f"Node {node} {key + ':':<17}{value:>5}"
    return f"Node {node} {key + ':':<16}{value:>8} kB"


def cpuinfo_line(key: str, value: str) -> str:
    """cpuinfo aligns values on the second tab stop: keys shorter than 8 columns get two tabs.

    Flag lists are printed as "flags\t\t:" then " flag" per flag, so an empty one has no space.
    """
    return f"{key}{chr(9) * (2 if len(key) < 8 else 1)}:" + (f" {value}" if value else "")


# --- the tree -------------------------------------------------------------------------------------

_INTEL_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse"
    " sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon pebs bts rep_good nopl"
    " xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq dtes64 monitor ds_cpl {virt} smx est tm2 ssse3"
    " sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx"
    " f16c rdrand lahf_lm abm cpuid_fault epb invpcid_single pti intel_ppin ssbd ibrs ibpb stibp"
    " {virtx} fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid cqm xsaveopt cqm_llc cqm_occup_llc"
    " dtherm ida arat pln pts md_clear flush_l1d"
)
_AMD_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht"
    " syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid"
    " extd_apicid amd_dcm aperfmperf rapl pni pclmulqdq monitor ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt"
    " aes xsave avx f16c rdrand lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse"
    " 3dnowprefetch osvw skinit wdt tce topoext perfctr_core perfctr_nb bpext perfctr_llc mwaitx cpb"
    " hw_pstate ssbd ibpb vmmcall fsgsbase bmi1 avx2 smep bmi2 rdseed adx smap clflushopt sha_ni xsaveopt"
    " xsavec xgetbv1 xsaves clzero irperf xsaveerptr arat npt lbrv svm_lock nrip_save tsc_scale"
    " vmcb_clean flushbyasid decodeassists pausefilter pfthreshold avic v_vmsave_vmload vgif"
    " overflow_recov succor smca"
)
# (vendor_id, family, model, model name, stepping, microcode, MHz, cpuid level, address sizes, bugs)
_INTEL = ("GenuineIntel", "6", "63", "Intel(R) Xeon(R) CPU E5-2699 v3 @ 2.30GHz", "2", "0x49", "2300.000",
          "15", "46 bits physical, 48 bits virtual",
          "cpu_meltdown spectre_v1 spectre_v2 spec_store_bypass l1tf mds swapgs itlb_multihit"
          " mmio_stale_data")
_AMD = ("AuthenticAMD", "23", "1", "AMD EPYC 7351 16-Core Processor", "2", "0x8001250", "2400.000",
        "13", "43 bits physical, 48 bits virtual",
        "sysret_ss_attrs null_seg spectre_v1 spectre_v2 spec_store_bypass retbleed smt_rsb srso")
_VMX_FLAGS = ("vnmi preemption_timer invvpid ept_x_only ept_ad ept_1gb flexpriority tsc_offset vtpr mtf"
              " vapic ept vpid unrestricted_guest ple")


class _Tree:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, rel: str, value: object) -> None:
        """Write one sysfs value: the text plus the kernel's trailing newline."""
        self.raw(rel, f"{value}\n")

    def raw(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def link(self, rel: str, target: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.symlink_to(target)


def fast_tmp_dir() -> str | None:
    """A tmpfs to build trees in: ~3,700 small files take 0.08 s on /dev/shm, 1-2 s on this VM's ext4."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def write_tree(root: Path, shape: HostShape) -> Path:
    lay = layout(shape)
    tree = _Tree(root)
    _write_cpus(tree, lay)
    _write_nodes(tree, lay)
    _write_proc(tree, lay)
    _write_misc(tree, lay)
    _write_cgroup_and_irqs(tree, lay)
    return root


def _write_cpus(tree: _Tree, lay: Layout) -> None:
    shape, nbits, online = lay.shape, lay.nr_cpu_ids, set(lay.online)
    base = "sys/devices/system/cpu"
    tree.put(f"{base}/possible", format_cpulist(range(nbits)))
    tree.put(f"{base}/present", format_cpulist(lay.cpus))
    tree.put(f"{base}/online", format_cpulist(online))
    tree.put(f"{base}/offline", format_cpulist(set(range(nbits)) - online))
    tree.put(f"{base}/isolated", "")
    tree.put(f"{base}/kernel_max", 8191)
    if not shape.old_kernel:  # smt/ arrived in 4.19
        tree.put(f"{base}/smt/active", int(shape.smt_on))
        tree.put(f"{base}/smt/control",
                 "notsupported" if shape.threads_per_core == 1 else ("on" if shape.smt_on else "off"))
    # cpuidle sits next to cpuN: naive "cpu*" globs must not count it (nor cpufreq) as CPUs.
    tree.put(f"{base}/cpuidle/current_driver", "intel_idle" if shape.vendor_flag != "svm" else "acpi_idle")
    per_l3 = shape.ccx_cores or shape.cores_per_socket
    l3_ids = {cpu.id: cpu.socket * (shape.cores_per_socket // per_l3) + cpu.core // per_l3
              for cpu in lay.cpus.values()}
    l3 = {i: [c for c in online if l3_ids[c] == i] for i in set(l3_ids.values())}
    package = {s: [c.id for c in lay.cpus.values() if c.online and c.socket == s] for s in range(shape.sockets)}
    for cpu in lay.cpus.values():
        d = f"{base}/cpu{cpu.id}"
        if cpu.id != 0:  # x86 cpu0 has no "online" file; other CPUs do
            tree.put(f"{d}/online", int(cpu.online))
        if cpu.node is not None:  # the node link stays while a CPU is offline: it is made at registration
            tree.link(f"{d}/node{cpu.node}", f"../../node/node{cpu.node}")
        if not cpu.online:  # the kernel removes topology/ and cache/ of an offline CPU
            continue
        threads = [o.id for o in lay.cpus.values()
                   if o.online and (o.socket, o.core) == (cpu.socket, cpu.core)]
        mates = package[cpu.socket]
        tree.put(f"{d}/topology/physical_package_id", cpu.socket)
        tree.put(f"{d}/topology/core_id", cpu.core)
        lists = [("thread_siblings", threads), ("core_siblings", mates)]
        if not shape.old_kernel:  # die_id, core_cpus, package_cpus and die_cpus arrived in 5.x
            tree.put(f"{d}/topology/die_id", 0)
            lists += [("core_cpus", threads), ("package_cpus", mates), ("die_cpus", mates)]
        for name, ids in lists:
            tree.put(f"{d}/topology/{name}", format_cpumask(ids, nbits))
            tree.put(f"{d}/topology/{name}_list", format_cpulist(ids))
        core_index = cpu.socket * shape.cores_per_socket + cpu.core
        caches = [("1", "Data", "32K", threads, core_index), ("1", "Instruction", "32K", threads, core_index),
                  ("2", "Unified", "256K" if shape.vendor_flag != "svm" else "512K", threads, core_index)]
        if shape.l3_kb:
            caches.append(("3", "Unified", f"{shape.l3_kb}K", l3[l3_ids[cpu.id]], l3_ids[cpu.id]))
        _write_caches(tree, f"{d}/cache", caches, nbits, with_id=not shape.old_kernel)
        if shape.cpufreq:
            _write_cpufreq(tree, lay, cpu.id)


def _write_caches(tree: _Tree, base: str, caches: list[tuple[str, str, str, list[int], int]], nbits: int, *,
                  with_id: bool) -> None:
    for index, (level, kind, size, ids, cache_id) in enumerate(caches):
        c = f"{base}/index{index}"
        tree.put(f"{c}/level", level)
        tree.put(f"{c}/type", kind)
        tree.put(f"{c}/size", size)
        tree.put(f"{c}/shared_cpu_list", format_cpulist(ids))
        tree.put(f"{c}/shared_cpu_map", format_cpumask(ids, nbits))
        if with_id:  # cache ids arrived in 4.11
            tree.put(f"{c}/id", cache_id)


def _write_cpufreq(tree: _Tree, lay: Layout, cpu: int) -> None:
    """One policy per CPU (intel_pstate); cpuN/cpufreq is a symlink to it."""
    shape = lay.shape
    p = f"sys/devices/system/cpu/cpufreq/policy{cpu}"
    tree.put(f"{p}/scaling_governor", shape.governor)
    tree.put(f"{p}/scaling_available_governors", " ".join(GOVERNORS))
    tree.put(f"{p}/scaling_driver", "intel_pstate" if shape.vendor_flag != "svm" else "acpi-cpufreq")
    tree.put(f"{p}/affected_cpus", cpu)
    tree.put(f"{p}/related_cpus", cpu)
    tree.link(f"sys/devices/system/cpu/cpu{cpu}/cpufreq", f"../cpufreq/policy{cpu}")


def _write_nodes(tree: _Tree, lay: Layout) -> None:
    shape, online = lay.shape, set(lay.online)
    base = "sys/devices/system/node"
    written = lay.nodes_written
    tree.put(f"{base}/possible", format_cpulist(range(max(shape.node_ids) + 1)))
    tree.put(f"{base}/online", format_cpulist(written))
    tree.put(f"{base}/has_cpu", format_cpulist(n for n in written if set(lay.node_cpus[n]) & online))
    tree.put(f"{base}/has_memory", format_cpulist(written if shape.memory_mb_per_node else []))
    total_kb = shape.memory_mb_per_node * 1024
    used_kb = total_kb // 32
    for n in written:
        d = f"{base}/node{n}"
        # x86 drops an offline CPU from its node's mask, but keeps the nodeN/cpuM link made when the
        # CPU was registered.
        cpus = [c for c in lay.node_cpus[n] if c in online]
        if not shape.old_kernel:  # cpulist arrived in 2.6.2x; old RHEL trees in the field lack it
            tree.put(f"{d}/cpulist", format_cpulist(cpus))
        tree.put(f"{d}/cpumap", format_cpumask(cpus, lay.nr_cpu_ids))
        for c in lay.node_cpus[n]:
            tree.link(f"{d}/cpu{c}", f"../../cpu/cpu{c}")
        dist = [10 if m == n else 11 if lay.node_socket(m) == lay.node_socket(n) else 21 for m in written]
        tree.put(f"{d}/distance", " ".join(map(str, dist)))
        if not shape.old_kernel:
            values = {"MemTotal": total_kb, "MemFree": total_kb - used_kb, "MemUsed": used_kb,
                      "FilePages": used_kb // 2, "Slab": used_kb // 8}
            meminfo = [node_meminfo_line(n, k, values.get(k, 0)) + "\n" for k in _NODE_MEMINFO]
            tree.raw(f"{d}/meminfo", "".join(meminfo))
        hits = 1_000_000 * (n + 1)
        numastat = {"numa_hit": hits, "numa_miss": 0, "numa_foreign": 0, "interleave_hit": 1142,
                    "local_node": hits, "other_node": 0}
        tree.raw(f"{d}/numastat", "".join(f"{k} {v}\n" for k, v in numastat.items()))
        for size in ("2048kB", "1048576kB"):
            for f in ("nr_hugepages", "free_hugepages", "surplus_hugepages"):
                tree.put(f"{d}/hugepages/hugepages-{size}/{f}", 0)


_NODE_MEMINFO = [
    "MemTotal", "MemFree", "MemUsed", "SwapCached", "Active", "Inactive", "Active(anon)", "Inactive(anon)",
    "Active(file)", "Inactive(file)", "Unevictable", "Mlocked", "Dirty", "Writeback", "FilePages",
    "Mapped", "AnonPages", "Shmem", "KernelStack", "PageTables", "SecPageTables", "NFS_Unstable", "Bounce",
    "WritebackTmp", "KReclaimable", "Slab", "SReclaimable", "SUnreclaim", "AnonHugePages",
    "ShmemHugePages", "ShmemPmdMapped", "FileHugePages", "FilePmdMapped", "HugePages_Total",
    "HugePages_Free", "HugePages_Surp",
]


def _write_proc(tree: _Tree, lay: Layout) -> None:
    shape = lay.shape
    total_kb = shape.memory_mb_per_node * 1024 * len(lay.nodes_written)
    free_kb = total_kb - total_kb // 32
    kb = {"MemTotal": total_kb, "MemFree": free_kb, "MemAvailable": free_kb, "Cached": total_kb // 64,
          "CommitLimit": total_kb // 2, "VmallocTotal": 34359738367, "Hugepagesize": 2048}
    lines = [meminfo_line(k, kb.get(k, 0)) for k in _MEMINFO_KB]
    lines += [meminfo_line(k, 0, kb=False) for k in ("HugePages_Total", "HugePages_Free", "HugePages_Rsvd",
                                                     "HugePages_Surp")]
    lines += [meminfo_line(k, kb.get(k, 0)) for k in ("Hugepagesize", "Hugetlb")]
    tree.raw("proc/meminfo", "".join(line + "\n" for line in lines))
    tree.raw("proc/cpuinfo", _cpuinfo(lay))
    iommu = ""
    if shape.iommu:
        iommu = " amd_iommu=on iommu=pt" if shape.vendor_flag == "svm" else " intel_iommu=on iommu=pt"
    tree.put("proc/cmdline", "BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-amd64 "
             f"root=UUID=2f6c1c9e-0b8c-4c3e-9d7e-4f2a1b0c9d11 ro quiet{iommu}")
    tree.put("proc/sys/kernel/numa_balancing", shape.numa_balancing)
    tree.put("proc/sys/vm/nr_hugepages", 0)
    # systemd's dev-hugepages.mount (the default size), and the 1 GiB mount an hv1 operator adds.
    tree.raw("proc/mounts", "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n"
             "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"
             "hugetlbfs /dev/hugepages1G hugetlbfs rw,relatime,pagesize=1024M 0 0\n")


_MEMINFO_KB = [
    "MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapCached", "Active", "Inactive",
    "Active(anon)", "Inactive(anon)", "Active(file)", "Inactive(file)", "Unevictable", "Mlocked",
    "SwapTotal", "SwapFree", "Dirty", "Writeback", "AnonPages", "Mapped", "Shmem", "KReclaimable", "Slab",
    "SReclaimable", "SUnreclaim", "KernelStack", "PageTables", "NFS_Unstable", "Bounce", "WritebackTmp",
    "CommitLimit", "Committed_AS", "VmallocTotal", "VmallocUsed", "VmallocChunk", "Percpu",
    "AnonHugePages", "ShmemHugePages", "ShmemPmdMapped", "FileHugePages", "FilePmdMapped",
]


def _cpuinfo(lay: Layout) -> str:
    shape = lay.shape
    amd = shape.vendor_flag == "svm"
    vendor, family, model, name, stepping, microcode, mhz, level, addr, bugs = _AMD if amd else _INTEL
    if amd:
        flags = _AMD_FLAGS
    else:
        vmx = shape.vendor_flag == "vmx"
        flags = _INTEL_FLAGS.format(virt="vmx" if vmx else "", virtx="tpr_shadow flexpriority ept vpid ept_ad"
                                    if vmx else "")
        flags = " ".join(flags.split())
    thread_bits = (shape.threads_per_core - 1).bit_length()
    core_bits = (shape.cores_per_socket - 1).bit_length()
    blocks: list[str] = []
    for cpu in (c for c in lay.cpus.values() if c.online):
        mates = [o for o in lay.cpus.values() if o.online and o.socket == cpu.socket]
        apicid = (cpu.socket << (core_bits + thread_bits)) | (cpu.core << thread_bits) | cpu.thread
        fields = [
            ("processor", str(cpu.id)), ("vendor_id", vendor), ("cpu family", family), ("model", model),
            ("model name", name), ("stepping", stepping), ("microcode", microcode), ("cpu MHz", mhz),
            ("cache size", "512 KB" if amd or not shape.l3_kb else f"{shape.l3_kb} KB"),
            ("physical id", str(cpu.socket)),
            ("siblings", str(len(mates))), ("core id", str(cpu.core)),
            ("cpu cores", str(len({o.core for o in mates}))), ("apicid", str(apicid)),
            ("initial apicid", str(apicid)), ("fpu", "yes"), ("fpu_exception", "yes"), ("cpuid level", level),
            ("wp", "yes"), ("flags", flags),
        ]
        if shape.vendor_flag == "vmx":  # kernels >= 5.9 list VMX features on their own line
            fields.append(("vmx flags", _VMX_FLAGS))
        fields += [("bugs", bugs), ("bogomips", f"{float(mhz) * 2:.2f}"), ("clflush size", "64"),
                   ("cache_alignment", "64"), ("address sizes", addr)]
        lines = [cpuinfo_line(k, v) for k, v in fields] + ["power management:", ""]
        blocks.append("\n".join(lines) + "\n")
    return "".join(blocks)


def _write_misc(tree: _Tree, lay: Layout) -> None:
    shape = lay.shape
    thp = "sys/kernel/mm/transparent_hugepage"
    tree.put(f"{thp}/enabled", kernel_bracket(THP_ENABLED_CHOICES, shape.thp_enabled))
    tree.put(f"{thp}/defrag", kernel_bracket(THP_DEFRAG_CHOICES, shape.thp_defrag))
    for f in ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages",
              "nr_overcommit_hugepages"):
        tree.put(f"sys/kernel/mm/hugepages/hugepages-2048kB/{f}", 0)
    for key, value in shape.dmi.items():
        tree.put(f"sys/class/dmi/id/{key}", value)
    if shape.iommu:  # AMD IOMMUs register as ivhdN, Intel VT-d units as dmarN
        (tree.root / "sys/class/iommu" / ("ivhd0" if shape.vendor_flag == "svm" else "dmar0")).mkdir(
            parents=True, exist_ok=True)
    if shape.vendor_flag:  # a marker only: tests cannot mknod a character device reliably
        tree.raw("dev/kvm", "")


def _write_cgroup_and_irqs(tree: _Tree, lay: Layout) -> None:
    """cgroup v2 as systemd sets it up (cpuset enabled, the slices' cpuset.cpus empty: all CPUs) and
    /proc/irq's default affinity (every CPU), which host.tune's confinement reads and writes."""
    tree.put("sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc")
    for unit in ("init.scope", "system.slice", "user.slice", "machine.slice"):
        tree.raw(f"sys/fs/cgroup/{unit}/cpuset.cpus", "\n")
    tree.put("proc/irq/default_smp_affinity", format_cpumask(lay.online, lay.nr_cpu_ids))
    # PID 1 asleep on CPU 0 (its stat as Linux 6.1 writes it): a task that does not run meanwhile.
    tree.put("proc/1/task/1/stat", "1 (systemd) S 0 1 1 0 -1 4194560 52519 4900232 91 442 120 240 18357 3962 20 0 "
             "1 0 25 172093440 3061 18446744073709551615 1 1 0 0 0 0 671173123 4096 1260 0 0 0 17 0 0 0 0 0 0 0 0 "
             "0 0 0 0 0 0")


NODE_DIR = re.compile(r"^node(\d+)$")
CPU_DIR = re.compile(r"^cpu(\d+)$")


# Shapes real machines have, each one a way the project's topology facts once went wrong (issue 16).
# tests/test_topology_shapes.py reads every one over SSH and checks the facts against lscpu.
SHAPES: dict[str, HostShape] = {
    "intel-2x18x2-spread": HostShape(),
    "intel-2x18x2-adjacent": HostShape(siblings="adjacent"),
    # EPYC 7401-like: 4 dies per socket, each its own NUMA node (NPS4), L3 8 MB per 3-core CCX.
    "epyc-2x24x2-8node-ccx": HostShape(cores_per_socket=24, nodes=8, ccx_cores=3, l3_kb=8192,
                                       vendor_flag="svm", siblings="adjacent"),
    "epyc-2x24x2-8node-ccx-spread": HostShape(cores_per_socket=24, nodes=8, ccx_cores=3, l3_kb=8192,
                                              vendor_flag="svm"),
    # Socket 1's memory unpopulated: its CPUs join node 0 and node 1 never appears; round-robin numbering.
    "quad-4x6x2-nodes-0-2-3-interleaved": HostShape(sockets=4, cores_per_socket=6, socket_nodes=(0, 0, 2, 3),
                                                    socket_interleave=True, memory_mb_per_node=65536),
    "hotplug-possible-0-79-present-64": HostShape(cores_per_socket=16, possible_cpus=80),
    "offline-cpus-5-41-70": HostShape(offline=(5, 41, 70)),
    "old-kernel-2x8x2": HostShape(cores_per_socket=8, old_kernel=True, l3_kb=20480),
    "vm-1x4x2-no-l3": HostShape(sockets=1, cores_per_socket=4, l3_kb=0, siblings="adjacent", iommu=False,
                                cpufreq=False, memory_mb_per_node=16384),
    # Spread within each socket (socket 0: 0-7 + 8-15): neither spread nor adjacent, so listed.
    "socket-spread-2x8x2": HostShape(cores_per_socket=8, siblings="socket-spread", l3_kb=20480),
}


def inventory_topology(shape: HostShape, sibling_layout: str | None = None) -> dict[str, Any]:
    """The inventory `topology:` that tells the truth about a generated tree (from the generator's own
    Layout, not from the project's parser). sibling_layout overrides the true one, to write a lie."""
    lay = layout(shape)
    true_layout = shape.siblings if shape.siblings != "socket-spread" else "listed"
    chosen = sibling_layout or true_layout
    per_l3 = shape.ccx_cores or shape.cores_per_socket
    topo: dict[str, Any] = {
        "sockets": shape.sockets, "cores_per_socket": shape.cores_per_socket,
        "threads_per_core": shape.threads_per_core, "sibling_layout": chosen,
    }
    if chosen == "listed":
        topo["sibling_sets"] = [format_cpulist(core) for core in lay.cores()]
    if shape.l3_kb:
        topo["l3_cache_mb"] = shape.l3_kb * (shape.cores_per_socket // per_l3) // 1024
    # Every present CPU of a node, offline ones too: the inventory describes the hardware.
    topo["nodes"] = [{"id": n, "cpus": format_cpulist(lay.node_cpus[n]), "memory_mb": shape.memory_mb_per_node}
                     for n in lay.nodes_written]
    return topo
