"""Day two (pure): which differences between a domain and the inventory go on live, which need a
restart, and the commands for both (live re-pins; cordon, drain, shutdown and uncordon).

A field is live when libvirt changes it on a running domain and the guest cannot tell: the emulator
cpuset, the pins of I/O threads the domain already has (they follow the emulator cpuset), a vCPU pin
that stays on the NUMA nodes the domain's memory is bound to, and the numatune nodeset under an
unchanged mode. Every other field of the definition (vCPU count, memory, disks,
and whatever vms.define compares beyond these) only takes effect when QEMU starts again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lib.cpuset import format_cpulist
from lib.domain import DomainSpec, domain_checks
from lib.inventory.model import VM, Host
from lib.results import Check
from lib.shell import Command, sh
from lib.vmperf import DomainTuning

# Our mark on a node we cordoned: kubectl shows it, and a run that finds it knows the cordon is ours
# (an operator's own cordon is never undone by this tool). Its value says why.
ANNOTATION = "numa-k3s.io/drained-for"
DRAIN_TIMEOUT_S = 300
SHUTDOWN_TIMEOUT_S = 120
API_WAIT_S = 300


@dataclass(frozen=True)
class Drift:
    live: tuple[Check, ...]  # failed rows libvirt changes on the running domain
    restart: tuple[Check, ...]  # failed rows that need QEMU to start again

    @property
    def restart_fields(self) -> str:
        return ", ".join(f"{c.name} {c.found} -> {c.expected}" for c in self.restart)


def _node_cpus(host: Host, nodes: frozenset[int]) -> frozenset[int]:
    return frozenset().union(*(n.cpu_set for n in host.topology.nodes if n.id in nodes))


def split_drift(host: Host, vm: VM, dom: DomainSpec, tuning: DomainTuning) -> Drift:
    """Pure: the domain's failed definition rows, live ones apart from those needing a restart.

    The performance rows (guest topology, hugepages, I/O threads, cache tune) live in the definition
    QEMU starts from: they need a restart, as every row not named below."""
    live: list[Check] = []
    restart: list[Check] = []
    allowed = _node_cpus(host, dom.numa_nodes) if dom.numa_nodes else host.topology.all_cpus
    for check in domain_checks(vm, host.virt_type, dom, tuning):
        if check.ok:
            continue
        if check.name == "emulatorpin":
            live.append(check)
        elif check.name.startswith("iothreadpin "):  # an existing I/O thread: a new one is "iothreads"
            (live if int(check.name.split()[1]) <= dom.iothreads else restart).append(check)
        elif check.name.startswith("vcpupin "):
            i = int(check.name.split()[1])
            stays = i < dom.vcpus and i < vm.vcpu_count and vm.pins[i] in allowed
            (live if stays else restart).append(check)
        elif check.name == "numatune" and dom.numa_mode == vm.tuning.numa_memory.mode:
            live.append(check)
        else:
            restart.append(check)
    return Drift(tuple(live), tuple(restart))


def live_commands(vm: VM, uri: str, dom: DomainSpec, running: bool, tuning: DomainTuning) -> list[Command]:
    """virsh emulatorpin/iothreadpin/vcpupin/numatune for the live rows: on the running domain and its persistent
    definition at once (--live --config), or the definition alone while it is shut off (--config)."""
    where = "--live --config" if running else "--config"
    cmds: list[Command] = []
    numa = vm.tuning.numa_memory
    if dom.numa_nodes != numa.nodes:  # memory first: the pins below may move onto the new nodes
        cmds.append(sh(f"virsh -c {{uri}} numatune {{name}} --nodeset {{nodes}} {where}", uri=uri, name=vm.name,
                       nodes=numa.nodeset, why=f"bind {vm.name}'s memory to node(s) {numa.nodeset}"))
    want = vm.tuning.emulator_cpus
    if dom.emulator_cpus != want:
        cmds.append(sh(f"virsh -c {{uri}} emulatorpin {{name}} {{cpus}} {where}", uri=uri, name=vm.name,
                       cpus=format_cpulist(want), why=f"emulator threads of {vm.name} onto {format_cpulist(want)}"))
    io_cpus = format_cpulist(tuning.iothread_cpus)
    for i in sorted(tuning.iothreads.values()):
        if i <= dom.iothreads and (dom.iothread_pins or {}).get(i) != tuning.iothread_cpus:
            cmds.append(sh(f"virsh -c {{uri}} iothreadpin {{name}} {{id}} {{cpus}} {where}", uri=uri, name=vm.name,
                           id=i, cpus=io_cpus, why=f"I/O thread {i} of {vm.name} onto {io_cpus}"))
    for i, cpu in enumerate(vm.pins[:dom.vcpus]):
        if dom.vcpu_pins.get(i) != frozenset({cpu}):
            cmds.append(sh(f"virsh -c {{uri}} vcpupin {{name}} {{vcpu}} {{cpu}} {where}", uri=uri, name=vm.name,
                           vcpu=i, cpu=cpu, why=f"vCPU {i} of {vm.name} onto CPU {cpu}"))
    return cmds


def shutdown_command(vm: VM, uri: str, timeout_s: int, force_off: bool) -> Command:
    """ACPI shutdown, then wait for "shut off"; past the deadline power it off only with --force-off."""
    late = ("virsh -c {uri} destroy {name} >/dev/null" if force_off else
            f"echo \"{vm.name} did not shut down within {timeout_s} s (ACPI power button); nothing else was "
            "changed: rerun with --force-off to power it off\" >&2; exit 1")
    return sh("if [ \"$(virsh -c {uri} domstate {name})\" != 'shut off' ]; then "
              "virsh -c {uri} shutdown {name} --mode acpi >/dev/null; fi; i=0; "
              "while [ \"$(virsh -c {uri} domstate {name})\" != 'shut off' ]; do "
              f"if [ $i -ge {timeout_s} ]; then {late}; fi; sleep 1; i=$((i + 1)); done",
              uri=uri, name=vm.name, timeout=timeout_s + 60,
              why=f"shut {vm.name} down (ACPI, {timeout_s} s{', then force it off' if force_off else ''})")


def mark_command(node: str, reason: str) -> Command:
    """Our mark on the node, in its own command before the cordon: the run log records it (a command is
    logged once it returned) before the node can be cordoned, even if the run is killed right after."""
    return sh("k3s kubectl annotate node {node} {mark} --overwrite", node=node, mark=f"{ANNOTATION}={reason}",
              sudo=True, timeout=60, why=f"mark node {node}: cordoned by numa-k3s for {reason}")


def drain_command(node: str, timeout_s: int) -> Command:
    """kubectl drain: cordon, evict (honouring PodDisruptionBudgets); on failure it says the node stays cordoned."""
    return sh("k3s kubectl drain {node} --ignore-daemonsets --delete-emptydir-data --timeout={secs}s || "
              "{{ echo \"node {node} stays cordoned by numa-k3s ({ann}): rerun with --resume to finish, or uncordon "
              "it yourself: kubectl uncordon {node}\" >&2; exit 1; }}",
              node=node, ann=ANNOTATION, secs=timeout_s, sudo=True, timeout=timeout_s + 60,
              why=f"cordon and drain node {node} (at most {timeout_s} s)")


def uncordon_command(node: str) -> Command:
    """Once the API answers again (a restarted server): uncordon, then drop our mark."""
    return sh(f"timeout {API_WAIT_S} sh -c 'until k3s kubectl get --raw /readyz >/dev/null 2>&1; do sleep 1; done' "
              "&& k3s kubectl uncordon {node} && k3s kubectl annotate node {node} {mark}",
              node=node, mark=f"{ANNOTATION}-", sudo=True, timeout=API_WAIT_S + 60,
              why=f"uncordon node {node}")


@dataclass(frozen=True)
class NodeState:
    """What a drain reads of a node: `kubectl get nodes -o json`'s spec.unschedulable, our mark, Ready."""

    name: str
    ready: bool
    unschedulable: bool
    drained_for: str  # our annotation's value; "" when the node does not carry it


def parse_node_states(text: str) -> dict[str, NodeState] | None:
    """Nodes by name from a v1 List of Nodes; None when the text is not that (the API did not answer)."""
    try:
        data = json.loads(text)
        states = {}
        for item in data.get("items", []):
            meta, spec, status = item.get("metadata", {}), item.get("spec", {}), item.get("status", {})
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
            name = meta["name"]
            states[name] = NodeState(name, ready, bool(spec.get("unschedulable")),
                                     (meta.get("annotations") or {}).get(ANNOTATION, ""))
        return states
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def node_checks(vm: VM, node: NodeState | None, *, strict: bool) -> list[Check]:
    """Our cordon gone, always; Ready too after a restart (strict), otherwise only reported."""
    if node is None:
        return []
    ready = (Check(f"node {vm.name} Ready", "True", str(node.ready), node.ready) if strict or node.ready else
             Check.warn(f"node {vm.name} Ready", "True", str(node.ready)))
    return [ready,
            Check(f"node {vm.name} schedulable", "not cordoned by numa-k3s",
                  f"cordoned by numa-k3s ({node.drained_for})" if node.drained_for else
                  ("cordoned (not by numa-k3s: left as it is)" if node.unschedulable else "schedulable"),
                  not node.drained_for)]
