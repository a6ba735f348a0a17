"""One verdict per finding: the spec's thresholds, their severity, when they apply, and the fix.

verify.*, doctor, monitor, the exporter and the shipped alerting rules (monitoring/alerts.yml, made
by lib/exporter/rules.py from this table) all classify a finding from here, so the same CPU with
the same intruder cannot be a warning in one view and a problem in another.

- `threshold`: the spec's number (a share: 0.5 is 50 %); None where any occurrence counts.
- `severity`: the alert's `severity` label, Prometheus style (critical pages, warning tickets).
- `fails`: a breach fails verify/doctor (exit 5). False for what the operator cannot fix with a
  step (kernel threads and kernel-managed IRQs follow no cgroup or affinity write): a warning.
- `switch`: the inventory field the fix depends on, and the test on the host whether it is on.
  Where the inventory turns it off, the fix is not suggested (it could not help): the message names
  the field instead, and a breach is a warning, never a failure.

Which findings exist is the spec's Troubleshooting table (vm-specifications.md); the thresholds are
the ones lib/monitor/parse.py has always applied (REMOTE_SHARE_LIMIT, EMULATOR_SHARE_LIMIT).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from lib.inventory.model import Host
from lib.results import Check, Outcome

Severity = Literal["critical", "warning"]

# Evidence that says a value could not be read starts with one of these (lib/steps/observe.py and
# lib/confine.py word it so); every view shows it as its own state, never as "ok".
NOT_AVAILABLE = ("not available", "not measured")


@dataclass(frozen=True)
class Switch:
    field: str  # the inventory path, as the operator writes it in hosts/<host>.yaml
    on: Callable[[Host], bool]
    off_text: str  # what "off" means there, for the message


@dataclass(frozen=True)
class Verdict:
    key: str  # stable id: the exporter's `verdict` label
    alert: str  # the rule's name in monitoring/alerts.yml ("" = reported, never alerted on)
    summary: str
    threshold: float | None
    severity: Severity
    for_: str  # how long a breach lasts before the alert fires
    fix: str
    fails: bool = True
    switch: Switch | None = None

    def limit(self) -> float:
        if self.threshold is None:
            raise ValueError(f"verdict {self.key} has no numeric threshold")
        return self.threshold

    def applies(self, host: Host) -> bool:
        return self.switch is None or self.switch.on(host)

    def advice(self, host: Host) -> str:
        """The fix to suggest on this host, or why none is: a fix the inventory rules out is never offered."""
        if self.switch is None or self.switch.on(host):
            return self.fix
        return (f"no fix suggested: {self.switch.field} is {self.switch.off_text} in the inventory, so what "
                f"runs there is accepted (turn {self.switch.field} on to have it fixed)")

    def outcome(self, host: Host, breached: bool) -> Outcome:
        if not breached:
            return "passed"
        return "failed" if self.fails and self.applies(host) else "warning"

    def check(self, host: Host, name: str, found: str, breached: bool) -> Check:
        """A finding as a Check, doctor's way: the fix is what is expected, the evidence what was found."""
        outcome = self.outcome(host, breached)
        return Check(name, self.advice(host), found, outcome != "failed", outcome)


def _confine(field: str) -> Switch:
    return Switch(f"tuning.confinement.{field}", lambda h: bool(getattr(h.tuning.confinement, field)), "false")


DOCTOR = "invoke doctor --host={host}"

REMOTE_MEMORY = Verdict(
    "remote_memory", "NumaK3sRemoteMemory", "a VM's memory off its NUMA nodeset", 0.01, "warning", "15m",
    "numatune mode strict on the VM's node (invoke provision --redefine); no remote memory requests")
NUMA_FOREIGN = Verdict(
    "numa_foreign", "NumaK3sNumaForeignHigh", "numa_foreign above 1% of the host's page allocations", 0.01,
    "warning", "10m", "numatune strict on every VM (invoke verify.numa names the VM with remote memory)")
EMULATOR = Verdict(
    "emulator_load", "NumaK3sEmulatorOverloaded", "emulator threads above 50% of their cores", 0.5, "warning",
    "10m", "add a core to emulator_cpuset (the spec: over 50%, add another core)")
RUN_QUEUE_WAIT = Verdict(
    "vcpu_wait", "NumaK3sVcpuRunQueueWait", "a vCPU waits on the host run queue over 5% of the time", 0.05,
    "warning", "10m", "governor performance (invoke step host.tune); move or stop what shares the vCPU's CPU")
HOST_TASKS = Verdict(
    "host_tasks", "NumaK3sHostTaskOnVcpuCpu", "a host task ran on a vCPU CPU", None, "warning", "5m",
    "invoke step host.tune (confinement: AllowedCPUs for the host's slices); or move the named task off "
    "those CPUs", switch=_confine("host_cpus"))
DEVICE_IRQS = Verdict(
    "device_irqs", "NumaK3sDeviceIrqOnVcpuCpu", "a device IRQ fired on a vCPU CPU", None, "warning", "5m",
    "invoke step host.tune (confinement: IRQ affinity onto the host CPUs)", switch=_confine("irqs"))
KERNEL_WORK = Verdict(
    "kernel_work", "", "kernel threads or kernel-managed IRQs ran on a vCPU CPU", None, "warning", "",
    "kernel threads and kernel-managed IRQs follow no cgroup or affinity write: set tuning.kernel_isolation "
    "(isolcpus=managed_irq,domain, nohz_full, rcu_nocbs on the vCPU CPUs), then invoke step host.reboot --reboot",
    fails=False)
PIN_DRIFT = Verdict(
    "pin_drift", "NumaK3sPinDrift", "a vCPU's live pin differs from the inventory", None, "critical", "2m",
    "pin it back as the inventory says (virsh vcpupin --live DOMAIN VCPU CPU, or restart the VM); "
    "invoke verify.vms shows every pin")
GOVERNOR = Verdict(
    "governor", "NumaK3sGovernorNotPerformance", "a vCPU CPU's governor is not performance", None, "warning",
    "15m", "invoke step host.tune (governor performance, persisted)",
    switch=Switch("tuning.cpu_governor", lambda h: h.tuning.cpu_governor == "performance", "not performance"))
TARGET_DOWN = Verdict(
    "target_down", "NumaK3sTargetDown", "the exporter cannot sample the hypervisor", None, "critical", "5m",
    "check SSH and libvirtd on the hypervisor (invoke check --host=HOST; invoke status --host=HOST)")

TABLE: tuple[Verdict, ...] = (REMOTE_MEMORY, NUMA_FOREIGN, EMULATOR, RUN_QUEUE_WAIT, HOST_TASKS, DEVICE_IRQS,
                              KERNEL_WORK, PIN_DRIFT, GOVERNOR, TARGET_DOWN)
BY_KEY = {v.key: v for v in TABLE}


def not_available(found: str) -> bool:
    return found.startswith(NOT_AVAILABLE)


def state(check: Check) -> Literal["ok", "breach", "warning", "not available"]:
    """The state every view shows: a value that could not be read is never "ok"."""
    if not_available(check.found):
        return "not available"
    if not check.ok:
        return "breach"
    return "warning" if check.kind == "warning" else "ok"


def row_state(row: dict[str, Any]) -> str:
    """ok, breach or not available: one row of lib/monitor/show.metrics(), as every monitor view marks it."""
    return "not available" if row["ok"] is None else ("ok" if row["ok"] else "breach")
