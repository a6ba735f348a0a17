"""Hardware facts of a hypervisor: CPU topology, NUMA nodes, caches, virtualization, IOMMU, BIOS.

One remote command reads everything (about 800 small sysfs files on the spec host) under the
inventory's sysroot; parse_host_facts() is pure and tested against generated and real trees.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from lib.cpuset import parse_cpulist
from lib.facts.sysfs import cpu_index, grep_errors, grep_values, section, split_sections
from lib.shell import Command, sh

DMI_FIELDS = ("bios_vendor", "bios_version", "bios_date", "product_name", "sys_vendor")
_CPU = "/sys/devices/system/cpu"
_NODE = "/sys/devices/system/node"


def host_facts_command(sysroot: str) -> Command:
    # "$r" is the quoted sysroot; the globs stay outside the quotes so the remote shell expands them.
    # A glob that matches nothing (core_cpus_list before 5.x, smt/active before 4.19, node cpulist
    # on old trees) stays literal and grep finds no such file: every file here is optional. Any
    # other complaint (permission denied, a directory in a file's place) is kept in its own section
    # (stdout goes straight out through fd 3, stderr is captured in $errs), so an unreadable file is named,
    # never read as absent.
    topology = ("physical_package_id", "core_id", "thread_siblings_list", "core_cpus_list")
    files = [f"{_CPU}/cpu[0-9]*/topology/{f}" for f in topology]
    files += [f"{_CPU}/cpu[0-9]*/cache/index[0-9]*/{f}" for f in ("level", "size", "shared_cpu_list", "id")]
    files += [f"{_NODE}/node[0-9]*/{f}" for f in ("cpulist", "cpumap")]
    files += [f"{_CPU}/{f}" for f in ("smt/active", "online", "present", "possible")] + ["/proc/cmdline"]
    files += [f"/sys/class/dmi/id/{f}" for f in DMI_FIELDS]
    paths = " ".join(f'"$r"{f}' for f in files)
    script = "; ".join([
        "r={root}", section("values"),
        "exec 3>&1",
        f'errs=$(LC_ALL=C grep -H . {paths} 2>&1 >&3; '
        f'LC_ALL=C grep -H MemTotal "$r"{_NODE}/node[0-9]*/meminfo 2>&1 >&3)',
        section("unreadable"), """printf '%s\\n' "$errs" | grep -v 'No such file or directory$'""",
        # nodeN/cpuM links stay while CPU M is offline (its node's cpulist drops it): where it belongs.
        section("links"), f'ls -d "$r"{_NODE}/node[0-9]*/cpu[0-9]* 2>/dev/null',
        section("flags"), 'grep -m1 "^flags" "$r"/proc/cpuinfo',
        section("kvm"), 'if [ -e "$r"/dev/kvm ]; then echo present; fi',
        section("iommu"), 'ls "$r"/sys/class/iommu 2>/dev/null', "true",
    ])
    return sh(script, root="" if sysroot in ("", "/") else sysroot, sudo=False, timeout=60,
              why="read CPU topology, NUMA, caches, virtualization, IOMMU and BIOS facts")


@dataclass(frozen=True)
class CpuTopo:
    package: int
    core: int
    siblings: frozenset[int]  # core_cpus_list where the kernel has it, else thread_siblings_list


@dataclass(frozen=True)
class Unreadable:
    """A file whose value the parser could not read: a failed row, never a guess or a traceback."""

    path: str
    value: str
    wanted: str  # what the file should hold, e.g. "a number"


@dataclass(frozen=True)
class HostFacts:
    cpus: dict[int, CpuTopo]  # online CPUs (the kernel removes an offline CPU's topology/)
    online: frozenset[int]
    nodes: dict[int, frozenset[int]]  # online CPUs per node, from cpulist or cpumap
    node_mem_kb: dict[int, int]  # absent: the kernel did not report the node's meminfo
    smt_active: bool | None  # smt/active, or from the sibling lists where the kernel has no smt/
    virt_flags: tuple[str, ...]
    kvm: bool
    iommu: tuple[str, ...]
    cmdline: str
    l3_kb: dict[int, int]  # per socket: the sum of its distinct L3 instances; empty when none reported
    dmi: dict[str, str] = field(default_factory=dict)
    present: frozenset[int] = frozenset()
    possible: frozenset[int] = frozenset()
    node_links: dict[int, frozenset[int]] = field(default_factory=dict)  # nodeN/cpuM, offline CPUs too
    l3_instances: dict[int, int] = field(default_factory=dict)  # per socket
    unreadable: tuple[Unreadable, ...] = ()

    @property
    def sockets(self) -> int:
        return len({c.package for c in self.cpus.values()})

    @property
    def cores(self) -> frozenset[frozenset[int]]:
        """The cores as the kernel groups threads: distinct sibling sets (what lscpu counts as cores)."""
        return frozenset(c.siblings for c in self.cpus.values())

    @property
    def cores_per_socket(self) -> int:
        return len(self.cores) // self.sockets if self.sockets else 0

    @property
    def threads_per_core(self) -> int:
        return max((len(c.siblings) for c in self.cpus.values()), default=0)

    @property
    def offline(self) -> frozenset[int]:
        return (self.present or self.online) - self.online

    @property
    def iommu_enabled(self) -> bool:
        return bool(self.iommu) or bool(re.search(r"\b(intel|amd)_iommu=on\b", self.cmdline))


_SIZE = re.compile(r"(\d+)([KMG]?)")
_MASK = re.compile(r"[0-9a-f]+(,[0-9a-f]+)*", re.ASCII)


def parse_cpumask(text: str) -> frozenset[int]:
    """The kernel's %*pb (cpumap): 32-bit hex words, most significant first, "00,003ffff0,0003ffff"."""
    stripped = text.strip()
    if not _MASK.fullmatch(stripped):
        raise ValueError(f"bad cpumask {text!r}: expected hex words joined by commas")
    value = int(stripped.replace(",", ""), 16)
    return frozenset(i for i in range(value.bit_length()) if value >> i & 1)


def _size_kb(text: str) -> int:
    """Cache sizes as sysfs prints them: "45056K" (also "8M" on some arches); ValueError otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"bad cache size {text!r}")
    return int(match[1]) * {"": 1, "K": 1, "M": 1024, "G": 1024 * 1024}[match[2]] // (1024 if not match[2] else 1)


class _Reader:
    """Turns sysfs values into numbers and CPU sets, noting each value it cannot read (not raising)."""

    def __init__(self) -> None:
        self.bad: list[Unreadable] = []

    def number(self, path: str, value: str) -> int | None:
        if re.fullmatch(r"-?[0-9]+", value.strip(), re.ASCII):
            return int(value)
        self.bad.append(Unreadable(path, value, "a number"))
        return None

    def cpus(self, path: str, value: str, parse: Callable[[str], frozenset[int]] = parse_cpulist,
             wanted: str = "a cpulist") -> frozenset[int] | None:
        try:
            return parse(value)
        except ValueError:
            self.bad.append(Unreadable(path, value, wanted))
            return None

    def size(self, path: str, value: str) -> int | None:
        try:
            return _size_kb(value)
        except ValueError:
            self.bad.append(Unreadable(path, value, "a size like 45056K"))
            return None


def parse_host_facts(stdout: str, sysroot: str) -> HostFacts:
    parts = split_sections(stdout)
    values = grep_values(parts.get("values", ""), sysroot)
    read = _Reader()
    topo: dict[int, dict[str, str]] = {}
    caches: dict[tuple[int, str], dict[str, str]] = {}
    node_text: dict[int, dict[str, tuple[str, str]]] = {}
    mem: dict[int, int] = {}
    for path, value in values.items():
        cpu = cpu_index(path)
        if cpu is not None and "/topology/" in path:
            topo.setdefault(cpu, {})[path.rsplit("/", 1)[1]] = value
        elif cpu is not None and "/cache/" in path:
            index = path.split("/cache/")[1].split("/")[0]
            caches.setdefault((cpu, index), {})[path.rsplit("/", 1)[1]] = value
        elif match := re.search(r"/node/node(\d+)/(cpulist|cpumap|meminfo)$", path):
            node = int(match[1])
            if match[2] == "meminfo":
                if kb := re.search(r"MemTotal:\s*(\d+)\s*kB", value):
                    mem[node] = int(kb[1])
            else:
                node_text.setdefault(node, {})[match[2]] = (path, value)
    for path, error in grep_errors(parts.get("unreadable", ""), sysroot):
        read.bad.append(Unreadable(path, error, "a readable file"))
    cpus = _cpus(topo, read)
    l3, instances = _l3(caches, cpus, read)
    nodes = _nodes(node_text, read)
    links = _links(parts.get("links", ""))
    flags = parts.get("flags", "").partition(":")[2].split()
    smt = values.get(f"{_CPU}/smt/active")
    threads = max((len(c.siblings) for c in cpus.values()), default=0)
    cpu_sets = {name: read.cpus(f"{_CPU}/{name}", values[f"{_CPU}/{name}"]) or frozenset()
                for name in ("online", "present", "possible") if f"{_CPU}/{name}" in values}
    return HostFacts(
        cpus=cpus,
        online=cpu_sets.get("online", frozenset()),
        nodes=nodes,
        node_mem_kb=mem,
        # Kernels before 4.19 have no smt/: lscpu, too, then counts threads per core from the siblings.
        smt_active=(threads > 1 if cpus else None) if smt is None else smt.strip() == "1",
        virt_flags=tuple(f for f in ("vmx", "svm") if f in flags),
        kvm=parts.get("kvm", "").strip() == "present",
        iommu=tuple(parts.get("iommu", "").split()),
        cmdline=values.get("/proc/cmdline", ""),
        l3_kb=l3,
        dmi={f: values.get(f"/sys/class/dmi/id/{f}", "") for f in DMI_FIELDS},
        present=cpu_sets.get("present", frozenset()),
        possible=cpu_sets.get("possible", frozenset()),
        node_links=links,
        l3_instances=instances,
        unreadable=tuple(read.bad),
    )


def _cpus(topo: dict[int, dict[str, str]], read: _Reader) -> dict[int, CpuTopo]:
    cpus: dict[int, CpuTopo] = {}
    base = f"{_CPU}/cpu{{}}/topology/{{}}"
    for cpu, t in sorted(topo.items()):
        # core_cpus_list (5.x) is the new name of thread_siblings_list; either gives the same set.
        name = "core_cpus_list" if "core_cpus_list" in t else "thread_siblings_list"
        if not {"physical_package_id", "core_id", name} <= t.keys():
            continue
        package = read.number(base.format(cpu, "physical_package_id"), t["physical_package_id"])
        core = read.number(base.format(cpu, "core_id"), t["core_id"])
        siblings = read.cpus(base.format(cpu, name), t[name])
        if package is not None and core is not None and siblings is not None:
            cpus[cpu] = CpuTopo(package, core, siblings)
    return cpus


def _l3(caches: dict[tuple[int, str], dict[str, str]], cpus: dict[int, CpuTopo],
        read: _Reader) -> tuple[dict[int, int], dict[int, int]]:
    """Per socket: the summed size and the count of its distinct L3 instances, as lscpu counts them.

    An instance is known by its id (4.11+) or else by the CPUs sharing it: an EPYC socket has one L3
    per CCX, so taking the first CPU's L3 as the socket's would say 8 MB for a 64 MB socket.
    """
    seen: dict[int, dict[str, int]] = {}
    for (cpu, index), cache in sorted(caches.items()):
        if cache.get("level") != "3" or cpu not in cpus or "size" not in cache:
            continue
        size = read.size(f"{_CPU}/cpu{cpu}/cache/{index}/size", cache["size"])
        if size is None:
            continue
        key = f"id {cache['id']}" if "id" in cache else f"cpus {cache.get('shared_cpu_list', '')}"
        seen.setdefault(cpus[cpu].package, {}).setdefault(key, size)
    return ({s: sum(sizes.values()) for s, sizes in seen.items()}, {s: len(sizes) for s, sizes in seen.items()})


def _nodes(node_text: dict[int, dict[str, tuple[str, str]]], read: _Reader) -> dict[int, frozenset[int]]:
    nodes: dict[int, frozenset[int]] = {}
    for node, files in sorted(node_text.items()):
        if "cpulist" in files:
            cpus = read.cpus(*files["cpulist"])
        else:  # old kernels have only the mask; lscpu reads the mask too
            cpus = read.cpus(*files["cpumap"], parse=parse_cpumask, wanted="a cpumask")
        if cpus is not None:
            nodes[node] = cpus
    return nodes


def _links(text: str) -> dict[int, frozenset[int]]:
    links: dict[int, set[int]] = {}
    for line in text.splitlines():
        if match := re.search(r"/node/node(\d+)/cpu(\d+)$", line):
            links.setdefault(int(match[1]), set()).add(int(match[2]))
    return {node: frozenset(cpus) for node, cpus in links.items()}
