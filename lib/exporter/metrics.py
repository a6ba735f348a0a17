"""A probe's sample as Prometheus metric families (prometheus_client renders them; nothing here
writes the text format).

The per-VM and per-node families are monitor --prometheus's own (lib/monitor/prom.py, from
observe.vm_numbers); this module adds what only a continuous scrape needs: live pin drift, host work
on vCPU CPUs, governor / numa_balancing / THP, whether each verdict applies under the inventory,
and the probe's own success. A value the host cannot give is ABSENT, never 0: its place is taken
by one `numa_k3s_metric_unavailable{metric, reason}` series, so a dashboard or rule can tell "no
LLC counters here" from "no LLC misses".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric

from lib import confine, verdicts
from lib.cpuset import format_cpulist
from lib.exporter.sample import HostSample
from lib.inventory.model import Host
from lib.monitor import prom
from lib.steps.observe import VmSample, vm_numbers

P = prom.PREFIX
# Enough names to say which processes intrude; the count gauges stay complete however many ran.
MAX_NAMED = 20


@dataclass
class _Unavailable:
    # host, vm, metric, reason; a dict keeps order and says a host-wide gap once, not once per VM
    rows: dict[tuple[str, str, str, str], None] = field(default_factory=dict)

    def add(self, host: str, vm: str, metric: str, reason: str) -> None:
        self.rows[(host, vm, P + metric, reason)] = None


def probe_families(name: str, host: Host, s: HostSample) -> list[Metric]:
    missing = _Unavailable()
    rows = []
    running = GaugeMetricFamily(P + "vm_running", "1 when the VM's QEMU process runs, 0 when not (then its other "
                                "series are absent).", labels=["host", "vm"])
    for vm in host.vms:
        sample = s.samples[vm.name]
        running.add_metric([name, vm.name], 0 if sample.pid is None else 1)
        if sample.pid is None:
            continue
        rows.append((name, vm.name, vm_numbers(vm, sample)))
        _vm_gaps(name, vm.name, sample, missing)
    out = [running, *prom.families(rows)]
    out += _pins(name, host, s)
    out += _work(name, host, s, missing)
    out += _tuning(name, host, s, missing)
    applies = GaugeMetricFamily(P + "verdict_applies", "1 when the inventory leaves a verdict's fix on (e.g. "
                                "tuning.confinement.host_cpus), 0 when it turned it off.", labels=["host", "verdict"])
    for v in verdicts.TABLE:
        if v.switch is not None:
            applies.add_metric([name, v.key], 1 if v.applies(host) else 0)
    gone = GaugeMetricFamily(P + "metric_unavailable", "1 for each metric this host cannot give, with the reason; "
                             "the metric itself is absent, never 0.", labels=["host", "vm", "metric", "reason"])
    for row in missing.rows:
        gone.add_metric(list(row), 1)
    return [*out, applies, gone]


def _vm_gaps(host: str, vm: str, s: VmSample, missing: _Unavailable) -> None:
    if not (s.domstats_before and s.domstats_after):
        for metric in ("vcpu_utilisation_ratio", "vcpu_cpu_seconds_total", "vcpu_run_delay_seconds_total"):
            missing.add(host, vm, metric, "virsh domstats --vcpu gave no vCPU stats")
    if s.llc is None:
        missing.add(host, vm, "vm_llc_miss_ratio", "perf is not installed on the host")
    elif s.llc.miss_ratio is None:
        missing.add(host, vm, "vm_llc_miss_ratio", "perf cannot count LLC-loads/LLC-load-misses here")
    if s.llc_occupancy is None:
        missing.add(host, vm, "vm_llc_occupancy_bytes",
                    "no resctrl group: the VM has no exclusive_l3_mb, or the host no resctrl")
    if not s.node_counters:
        missing.add(host, "", "node_numa_foreign_pages_total", "no /sys/devices/system/node/node*/numastat")
    if not s.node_memory:
        missing.add(host, "", "node_memory_total_bytes", "numastat -m gave no table")


def _pins(name: str, host: Host, s: HostSample) -> Iterable[Metric]:
    drift = GaugeMetricFamily(P + "vcpu_pin_drift", "1 when a vCPU's live pin differs from the inventory's, else 0.",
                              labels=["host", "vm", "vcpu"])
    info = InfoMetricFamily(P + "vcpu_pin", "A vCPU's pin: configured (the inventory) and live (libvirt).",
                            labels=["host", "vm", "vcpu"])
    emulator = GaugeMetricFamily(P + "emulator_pin_drift", "1 when the live emulatorpin differs from the inventory's.",
                                 labels=["host", "vm"])
    for vm in host.vms:
        live = s.live.get(vm.name)
        if live is None or live.state != "running":
            continue
        for i, cpu in enumerate(vm.pins):
            found = live.vcpu_pins.get(i, frozenset())
            drift.add_metric([name, vm.name, str(i)], 0 if found == frozenset({cpu}) else 1)
            info.add_metric([name, vm.name, str(i)], {"configured": str(cpu), "live": format_cpulist(found) or "none"})
        emulator.add_metric([name, vm.name], 0 if live.emulator_cpus == vm.tuning.emulator_cpus else 1)
    return drift, info, emulator


def _work(name: str, host: Host, s: HostSample, missing: _Unavailable) -> Iterable[Metric]:
    labels = ["host"]
    counts = {key: GaugeMetricFamily(P + f"vcpu_cpu_{key}", text, labels=labels) for key, text in (
        ("host_tasks", "Host processes (not QEMU, not kernel threads) that ran on a vCPU CPU during the interval."),
        ("device_irqs", "Device IRQs that fired on a vCPU CPU during the interval (movable by IRQ affinity)."),
        ("kernel_threads", "Kernel threads that ran on a vCPU CPU during the interval (kernel isolation's)."),
        ("managed_irqs", "Kernel-managed IRQs that fired on a vCPU CPU during the interval."))}
    tasks = InfoMetricFamily(P + "vcpu_cpu_task", f"A task seen on a vCPU CPU (at most {MAX_NAMED} per kind).",
                             labels=["host", "kind", "comm", "pid", "cpu"])
    irqs = InfoMetricFamily(P + "vcpu_cpu_irq", f"An IRQ seen on a vCPU CPU (at most {MAX_NAMED} per kind).",
                            labels=["host", "kind", "irq", "cpus"])
    if not s.work.tasks_after:
        for key in counts:
            missing.add(name, "", f"vcpu_cpu_{key}", "no /proc task stats were read")
        return ()
    work = confine.host_work(host, s.work)
    for key, value in (("host_tasks", len(work.tasks)), ("device_irqs", len(work.irqs)),
                       ("kernel_threads", len(work.kthreads)), ("managed_irqs", len(work.managed))):
        counts[key].add_metric([name], value)
    for kind, found in (("process", work.tasks), ("kernel", work.kthreads)):
        for t in found[:MAX_NAMED]:
            tasks.add_metric([name, kind, t.comm, str(s.work.task_pids.get(t.tid, t.tid)), str(t.processor)], {})
    for kind, fired in (("device", work.irqs), ("managed", work.managed)):
        for irq, per_cpu in sorted(fired.items())[:MAX_NAMED]:
            irqs.add_metric([name, kind, irq, format_cpulist(per_cpu)], {})
    return (*counts.values(), tasks, irqs)


def _tuning(name: str, host: Host, s: HostSample, missing: _Unavailable) -> Iterable[Metric]:
    governor = InfoMetricFamily(P + "cpu_governor", "The cpufreq governor of each vCPU CPU.", labels=["host", "cpu"])
    cpus = sorted(confine.vcpu_cpus(host))
    if not s.tune.governors:
        missing.add(name, "", "cpu_governor_info", "no cpufreq on this host (no scaling_governor files)")
    for cpu in cpus:
        if cpu in s.tune.governors:
            governor.add_metric([name, str(cpu)], {"governor": s.tune.governors[cpu]})
    balancing = GaugeMetricFamily(P + "numa_balancing", "kernel.numa_balancing (the spec: 0).", labels=["host"])
    if s.tune.numa_balancing.isdigit():
        balancing.add_metric([name], int(s.tune.numa_balancing))
    else:
        missing.add(name, "", "numa_balancing", "no /proc/sys/kernel/numa_balancing")
    thp = InfoMetricFamily(P + "transparent_hugepage", "THP enabled and defrag as the kernel reports them.",
                           labels=["host"])
    if "missing" in (s.tune.thp_enabled, s.tune.thp_defrag):
        missing.add(name, "", "transparent_hugepage_info", "no /sys/kernel/mm/transparent_hugepage")
    else:
        thp.add_metric([name], {"enabled": s.tune.thp_enabled, "defrag": s.tune.thp_defrag})
    return governor, balancing, thp


def outcome_families(success: bool, duration: float) -> list[Metric]:
    """blackbox_exporter's pair: did the probe work, and how long it took. A failed probe returns only
    these (and the exporter logs why): no stale or zero figures for a host that was not read."""
    ok = GaugeMetricFamily(P + "probe_success", "1 when every read of the hypervisor worked, else 0.")
    ok.add_metric([], 1 if success else 0)
    took = GaugeMetricFamily(P + "probe_duration_seconds", "How long the probe took.")
    took.add_metric([], duration)
    return [ok, took]
