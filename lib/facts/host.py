"""Hardware facts of a hypervisor: CPU topology, NUMA nodes, caches, virtualization, IOMMU, BIOS.

One remote command reads everything (about 800 small sysfs files on the spec host) under the
inventory's sysroot; parse_host_facts() is pure and tested against generated and real trees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lib.cpuset import parse_cpulist
from lib.facts.sysfs import cpu_index, grep_values, section, split_sections
from lib.shell import Command, sh

DMI_FIELDS = ("bios_vendor", "bios_version", "bios_date", "product_name", "sys_vendor")
_CPU = "/sys/devices/system/cpu"
_NODE = "/sys/devices/system/node"


def host_facts_command(sysroot: str) -> Command:
    # "$r" is the quoted sysroot; the globs stay outside the quotes so the remote shell expands them.
    files = [f"{_CPU}/cpu[0-9]*/topology/{f}" for f in ("physical_package_id", "core_id", "thread_siblings_list")]
    files += [f"{_CPU}/cpu[0-9]*/cache/index[0-9]*/{f}" for f in ("level", "size")]
    files += [f"{_NODE}/node[0-9]*/cpulist", f"{_CPU}/smt/active", f"{_CPU}/online", "/proc/cmdline"]
    files += [f"/sys/class/dmi/id/{f}" for f in DMI_FIELDS]
    paths = " ".join(f'"$r"{f}' for f in files)
    script = "; ".join([
        "r={root}", section("values"), f"grep -Hs . {paths}",
        f'grep -Hs MemTotal "$r"{_NODE}/node[0-9]*/meminfo',
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
    siblings: frozenset[int]


@dataclass(frozen=True)
class HostFacts:
    cpus: dict[int, CpuTopo]
    online: frozenset[int]
    nodes: dict[int, frozenset[int]]
    node_mem_kb: dict[int, int]
    smt_active: bool | None
    virt_flags: tuple[str, ...]
    kvm: bool
    iommu: tuple[str, ...]
    cmdline: str
    l3_kb: dict[int, int]  # per socket (physical package)
    dmi: dict[str, str] = field(default_factory=dict)

    @property
    def sockets(self) -> int:
        return len({c.package for c in self.cpus.values()})

    @property
    def cores_per_socket(self) -> int:
        cores = {(c.package, c.core) for c in self.cpus.values()}
        return len(cores) // self.sockets if self.sockets else 0

    @property
    def threads_per_core(self) -> int:
        return max((len(c.siblings) for c in self.cpus.values()), default=0)

    @property
    def iommu_enabled(self) -> bool:
        return bool(self.iommu) or bool(re.search(r"\b(intel|amd)_iommu=on\b", self.cmdline))


def _size_kb(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip())
    if not match:
        return 0
    return int(match[1]) * {"": 1, "K": 1, "M": 1024, "G": 1024 * 1024}[match[2]] // (1024 if not match[2] else 1)


def parse_host_facts(stdout: str, sysroot: str) -> HostFacts:
    parts = split_sections(stdout)
    values = grep_values(parts.get("values", ""), sysroot)
    topo: dict[int, dict[str, str]] = {}
    caches: dict[tuple[int, str], dict[str, str]] = {}
    nodes: dict[int, frozenset[int]] = {}
    mem: dict[int, int] = {}
    for path, value in values.items():
        cpu = cpu_index(path)
        if cpu is not None and "/topology/" in path:
            topo.setdefault(cpu, {})[path.rsplit("/", 1)[1]] = value
        elif cpu is not None and "/cache/" in path:
            index = path.split("/cache/")[1].split("/")[0]
            caches.setdefault((cpu, index), {})[path.rsplit("/", 1)[1]] = value
        elif match := re.search(r"/node/node(\d+)/(cpulist|meminfo)$", path):
            node = int(match[1])
            if match[2] == "cpulist":
                nodes[node] = parse_cpulist(value)
            elif kb := re.search(r"MemTotal:\s*(\d+)\s*kB", value):
                mem[node] = int(kb[1])
    cpus = {
        cpu: CpuTopo(int(t["physical_package_id"]), int(t["core_id"]), parse_cpulist(t["thread_siblings_list"]))
        for cpu, t in topo.items()
        if {"physical_package_id", "core_id", "thread_siblings_list"} <= t.keys()
    }
    l3: dict[int, int] = {}
    for (cpu, _), cache in sorted(caches.items()):
        if cache.get("level") == "3" and cpu in cpus:
            l3.setdefault(cpus[cpu].package, _size_kb(cache.get("size", "")))
    flags = parts.get("flags", "").partition(":")[2].split()
    smt = values.get(f"{_CPU}/smt/active")
    return HostFacts(
        cpus=cpus,
        online=parse_cpulist(values.get(f"{_CPU}/online", "")),
        nodes=nodes,
        node_mem_kb=mem,
        smt_active=None if smt is None else smt.strip() == "1",
        virt_flags=tuple(f for f in ("vmx", "svm") if f in flags),
        kvm=parts.get("kvm", "").strip() == "present",
        iommu=tuple(parts.get("iommu", "").split()),
        cmdline=values.get("/proc/cmdline", ""),
        l3_kb=l3,
        dmi={f: values.get(f"/sys/class/dmi/id/{f}", "") for f in DMI_FIELDS},
    )
