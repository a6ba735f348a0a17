"""`monitor --prometheus`: the spec's key metrics in the Prometheus text format, for node_exporter's
textfile collector (written atomically, so the collector never reads half a file).

prometheus_client renders the format; a custom collector hands it the values of one sample, the way
exporters for other systems' counters do. Names follow Prometheus conventions: a `numa_k3s_` prefix,
base units in the name (`_seconds`, `_bytes`, `_ratio`), `_total` on counters (added by the
library), and labels for host, VM, vCPU and NUMA node.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: every run loads this module (via observe), few write metrics
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

PREFIX = "numa_k3s_"
# The evidence row of monitor.sample (lib/steps/observe.py) that carries one VM's numbers as JSON.
NUMBERS_ROW = "numbers (for --prometheus)"


@dataclass(frozen=True)
class VmNumbers:
    """One VM's sample as numbers (None: not measured there). Keys of the dicts are vCPU or node ids."""

    vcpu_utilisation: dict[int, float] = field(default_factory=dict)  # share of one host CPU over the interval
    vcpu_cpu_seconds: dict[int, float] = field(default_factory=dict)  # since the VM started
    vcpu_delay_seconds: dict[int, float] = field(default_factory=dict)  # run-queue wait since start
    memory_bytes: dict[int, int] = field(default_factory=dict)  # the guest's own memory per host node
    remote_ratio: float | None = None
    emulator_ratio: float | None = None  # emulator threads' CPU as a share of their cpuset
    llc_occupancy_bytes: int | None = None
    llc_miss_ratio: float | None = None
    node_memory_total_bytes: dict[int, int] = field(default_factory=dict)  # the host's
    node_memory_used_bytes: dict[int, int] = field(default_factory=dict)
    node_counters: dict[int, dict[str, int]] = field(default_factory=dict)  # numa_hit/miss/foreign since boot

    def as_json(self) -> dict[str, Any]:
        return {k: ({str(i): v for i, v in val.items()} if isinstance(val, dict) else val)
                for k, val in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VmNumbers:
        def keys(value: Any) -> Any:
            return {int(i): v for i, v in value.items()} if isinstance(value, dict) else value
        return cls(**{k: keys(v) for k, v in data.items()})


class _Sample:
    """A collector over one finished sample: (host, VM, numbers) rows."""

    def __init__(self, rows: Iterable[tuple[str, str, VmNumbers]]) -> None:
        self.rows = list(rows)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        g = {name: GaugeMetricFamily(PREFIX + name, text, labels=labels) for name, text, labels in _GAUGES}
        c = {name: CounterMetricFamily(PREFIX + name, text, labels=labels) for name, text, labels in _COUNTERS}
        nodes_done: set[tuple[str, int]] = set()
        for host, vm, n in self.rows:
            for i, v in n.vcpu_utilisation.items():
                g["vcpu_utilisation_ratio"].add_metric([host, vm, str(i)], v)
            for i, v in n.vcpu_cpu_seconds.items():
                c["vcpu_cpu_seconds"].add_metric([host, vm, str(i)], v)
            for i, v in n.vcpu_delay_seconds.items():
                c["vcpu_run_delay_seconds"].add_metric([host, vm, str(i)], v)
            for node, b in n.memory_bytes.items():
                g["vm_memory_bytes"].add_metric([host, vm, str(node)], b)
            for name, value in (("vm_remote_memory_ratio", n.remote_ratio), ("emulator_cpu_ratio", n.emulator_ratio),
                                ("vm_llc_occupancy_bytes", n.llc_occupancy_bytes),
                                ("vm_llc_miss_ratio", n.llc_miss_ratio)):
                if value is not None:
                    g[name].add_metric([host, vm], value)
            for node in n.node_memory_total_bytes.keys() | n.node_counters.keys():
                if (host, node) in nodes_done:  # the host's figures, the same in every VM's sample
                    continue
                nodes_done.add((host, node))
                if node in n.node_memory_total_bytes:
                    g["node_memory_total_bytes"].add_metric([host, str(node)], n.node_memory_total_bytes[node])
                    g["node_memory_used_bytes"].add_metric([host, str(node)], n.node_memory_used_bytes.get(node, 0))
                for key in ("numa_hit", "numa_miss", "numa_foreign"):
                    if key in n.node_counters.get(node, {}):
                        c[f"node_{key}_pages"].add_metric([host, str(node)], n.node_counters[node][key])
        yield from g.values()
        yield from c.values()


_VCPU = ["host", "vm", "vcpu"]
_VM = ["host", "vm"]
_NODE = ["host", "node"]
_GAUGES = [
    ("vcpu_utilisation_ratio", "Share of one host CPU a vCPU used over the sampling interval.", _VCPU),
    ("vm_memory_bytes", "The VM's anonymous, hugepage and shared memory on each host NUMA node.",
     ["host", "vm", "node"]),
    ("vm_remote_memory_ratio", "Share of the VM's own memory off its NUMA nodeset (the spec: under 0.01).", _VM),
    ("emulator_cpu_ratio", "QEMU emulator threads' CPU use as a share of their cpuset (the spec: under 0.5).", _VM),
    ("vm_llc_occupancy_bytes", "L3 the VM's resctrl group holds (cachetune VMs on resctrl hosts).", _VM),
    ("vm_llc_miss_ratio", "LLC load misses over LLC loads during the interval (perf).", _VM),
    ("node_memory_total_bytes", "Memory of a host NUMA node.", _NODE),
    ("node_memory_used_bytes", "Memory in use on a host NUMA node.", _NODE),
]
_COUNTERS = [
    ("vcpu_cpu_seconds", "CPU time a vCPU thread used since the VM started.", _VCPU),
    ("vcpu_run_delay_seconds", "Time a vCPU waited on the host run queue (steal, to the guest).", _VCPU),
    ("node_numa_hit_pages", "Pages allocated on the node they were meant for (node numastat).", _NODE),
    ("node_numa_miss_pages", "Pages allocated here though another node was meant (node numastat).", _NODE),
    ("node_numa_foreign_pages", "Pages meant for this node but allocated on another (node numastat).", _NODE),
]


def families(rows: Iterable[tuple[str, str, VmNumbers]]) -> list[Metric]:
    """The per-VM and per-node families of one sample (the exporter adds its own beside them)."""
    return list(_Sample(rows).collect())


def _registry(rows: Iterable[tuple[str, str, VmNumbers]]) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Sample(rows))  # a Collector by protocol: it has collect()
    return registry


def exposition(rows: Iterable[tuple[str, str, VmNumbers]]) -> str:
    from prometheus_client import generate_latest

    return generate_latest(_registry(rows)).decode()


def write_textfile(path: str, rows: Iterable[tuple[str, str, VmNumbers]]) -> None:
    """Written beside, then renamed (prometheus_client does both): node_exporter reads whole files only."""
    from prometheus_client import write_to_textfile

    write_to_textfile(path, _registry(rows))
