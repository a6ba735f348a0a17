"""vms.restart.agents and vms.restart.server: a change only a restart applies, one VM at a time.

For each VM whose definition differs from the inventory in a field that needs QEMU to start again
(vCPU count, memory, disks, ...), and only with --restart:

    1. cordon and drain its k3s node (on the server; PodDisruptionBudgets honoured, with a timeout)
    2. ACPI shutdown with a deadline (powered off past it only with --force-off)
    3. redefine the domain from the inventory, start it
    4. wait until every check of vms.define and vms.start holds (pinned, running, SSH)
    5. uncordon the node, wait until it is Ready

Agents (and VMs outside the cluster) in the first step, one at a time; the server in the second,
never while an agent is still drained. Each phase is decided from what the host shows, so a run
stopped anywhere (Ctrl-C, SIGKILL) is finished by --resume: a node we cordoned carries our
annotation (lib/daytwo.ANNOTATION) until it is uncordoned.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from lib import daytwo
from lib.daytwo import NodeState
from lib.domain import domain_checks
from lib.facts.sysfs import section, split_sections
from lib.inventory.model import VM
from lib.reads import Answers, Ask, Reads, Run, Unreached
from lib.results import Check
from lib.shell import Command, sh
from lib.steps.base import Action, Await, OnPeer, Plan, Step, StepMismatch, Target
from lib.steps.virt import (
    DomainFacts,
    StartFacts,
    VmsStart,
    define_command,
    domain_facts_command,
    install_argv,
    parse_domain_facts,
)
from lib.transport import CmdResult
from lib.vmperf import DomainTuning, domain_tuning


@dataclass(frozen=True)
class RestartFacts:
    define: DomainFacts
    nodes: dict[str, NodeState] | None  # None: the k3s API did not answer (or no cluster)
    api_error: str = ""


def _nodes_command() -> Command:
    # One read of the server serves every VM of the step (Command.shared): the agents ask at once.
    return replace(sh(f"{section('nodes')}; k3s kubectl get nodes -o json 2>&1 || true", sudo=True, timeout=60,
                      why="nodes: cordoned, drained by us, Ready"), shared=True)


def parse_nodes(answer: CmdResult | Unreached) -> tuple[dict[str, NodeState] | None, str]:
    """The server's answer about its nodes (asked through its session, lent by the run: Shell.peer)."""
    if isinstance(answer, Unreached):
        return None, answer.why
    out = split_sections(answer.stdout).get("nodes", "")
    nodes = daytwo.parse_node_states(out)
    return nodes, "" if nodes is not None else (out.strip().splitlines() or ["no answer"])[-1]


def _server_up(got: Answers) -> bool:
    return "server state" in got and got.stdout("server state").strip() == "running"


def daytwo_server(target: Target) -> VM | None:
    return next((vm for vm in target.loaded.host.vms if vm.k8s and vm.k8s.role == "server"), None)


def redefine_command(vm: VM, uri: str, virt_type: str, tuning: DomainTuning, owner: str) -> Command:
    """The new definition is written first (virt-install --print-xml, the slow part), then the old one
    is swapped for it in two quick virsh calls: an interruption leaves either definition, rarely none."""
    # The disks are the old definition's own (it still exists while the new one is written).
    argv = [*install_argv(vm, uri, virt_type, tuning, owner), "--check", "path_in_use=off"]
    return sh('tmp=$(mktemp) && {args} > "$tmp" && virsh -c {uri} undefine {name} >/dev/null && '
              'virsh -c {uri} define "$tmp"; rc=$?; rm -f "$tmp"; exit $rc',
              args=argv, uri=uri, name=vm.name, timeout=180,
              why=f"redefine {vm.name} from the inventory, keeping its disks")


class _Back(Step[tuple[DomainFacts, StartFacts]]):
    """The restarted VM is back: every check of vms.define and vms.start (used by Await, not a runbook)."""

    name = "vms.restart (back)"
    summary = "vms.define and vms.start checks"
    targets = "vms"
    converge = True

    def reads(self, target: Target, got: Answers) -> Reads:
        assert target.vm is not None
        return (Run("define", domain_facts_command(target.vm, target.loaded.host.libvirt_uri)),
                *VmsStart().reads(target, got))

    def parse(self, target: Target, answers: Answers) -> tuple[DomainFacts, StartFacts]:
        return parse_domain_facts(answers.stdout("define")), VmsStart().parse(target, answers)

    def plan(self, target: Target, facts: tuple[DomainFacts, StartFacts] | None) -> Plan:
        return Plan(reason="checks only")

    def verify(self, target: Target, facts: tuple[DomainFacts, StartFacts]) -> list[Check]:
        assert target.vm is not None
        define, start = facts
        if define.domain is None:
            return [Check(f"domain {target.vm.name}", "defined", "not defined", False)]
        tuning = domain_tuning(target.loaded.host, target.loaded.cores, target.vm)
        return (domain_checks(target.vm, target.loaded.host.virt_type, define.domain, tuning)
                + VmsStart().verify(target, start))


class _Restart(Step[RestartFacts]):
    targets = "vms"
    converge = True
    server: ClassVar[bool]

    def _mine(self, vm: VM) -> bool:
        return (vm.k8s is not None and vm.k8s.role == "server") == self.server

    def reads(self, target: Target, got: Answers) -> Reads:
        """The domain; for a k3s VM of this step, whether the server VM runs, and only then (never
        wait for SSH to a server VM that is not up) the server's nodes."""
        assert target.vm is not None
        vm, host = target.vm, target.loaded.host
        define: Reads = (Run("define", domain_facts_command(vm, host.libvirt_uri)),)
        server = daytwo_server(target)
        if not self._mine(vm) or vm.k8s is None or server is None:
            return define
        state = Run("server state", sh("virsh -c {uri} domstate {name} 2>/dev/null; true", uri=host.libvirt_uri,
                                       name=server.name, why="is the k3s server VM running"))
        if not _server_up(got) or target.peer is None:
            return (*define, state)
        return (*define, state, Ask("nodes", target.peer, _nodes_command()))

    def parse(self, target: Target, answers: Answers) -> RestartFacts:
        assert target.vm is not None
        define = parse_domain_facts(answers.stdout("define"))
        if not self._mine(target.vm) or target.vm.k8s is None:
            return RestartFacts(define, None, "not in the k3s cluster")
        if not _server_up(answers):
            return RestartFacts(define, None, "the k3s server VM is not running")
        if "nodes" not in answers:
            return RestartFacts(define, None, "no k3s server in the inventory")
        return RestartFacts(define, *parse_nodes(answers.peer("nodes")))

    def _node(self, vm: VM, facts: RestartFacts) -> NodeState | None:
        return (facts.nodes or {}).get(vm.name) if vm.k8s else None

    def plan(self, target: Target, facts: RestartFacts | None) -> Plan:
        assert target.vm is not None
        vm, host = target.vm, target.loaded.host
        if not self._mine(vm):
            other = "vms.restart.agents" if self.server else "vms.restart.server"
            return Plan(reason=f"{vm.name}: restarted by {other}")
        if facts is None:
            return Plan(reason="offline: a restart is decided from the running domain")
        dom, state = facts.define.domain, facts.define.state
        node = self._node(vm, facts)
        ours = node.drained_for if node else ""
        tuning = domain_tuning(host, target.loaded.cores, vm)
        drift = daytwo.split_drift(host, vm, dom, tuning) if dom is not None else daytwo.Drift((), ())
        if not drift.restart and not ours:
            return Plan(reason=f"{vm.name}: no change needs a restart")
        if not drift.restart and dom is None:
            return Plan(reason=f"{vm.name} is not defined: vms.define creates it")
        flagged = target.flags.restart
        mode = target.mode
        if drift.restart and state == "shut off" and not ours and not flagged:
            return Plan(reason=f"{vm.name} is shut off: vms.define redefines it with --redefine "
                               f"({drift.restart_fields})")
        actions = self._sequence(target, facts, drift, node)
        if drift.restart and not flagged and mode != "plan":
            still = f"; its node is cordoned by numa-k3s ({ours})" if ours else ""
            raise StepMismatch(list(drift.restart), message=(
                f"{vm.name} needs a restart to apply: {drift.restart_fields}{still}; nothing was changed: rerun "
                "with --restart (cordon and drain its node, ACPI shutdown, redefine, start, verify, uncordon)"))
        if self.server and mode != "plan":
            drained = sorted(n.name for n in (facts.nodes or {}).values() if n.drained_for and n.name != vm.name)
            if drained:
                raise StepMismatch([Check(f"node {n}", "uncordoned", "drained by numa-k3s", False) for n in drained],
                                   exit_code=4, message=(
                    f"the server {vm.name} is never restarted while an agent is drained: {', '.join(drained)}; "
                    "finish their restart first (--resume)"))
        why = (f"restart {vm.name}, one VM at a time: {drift.restart_fields}" if drift.restart else
               f"finish the restart of {vm.name} (its node is cordoned by numa-k3s: {ours})")
        if not flagged and drift.restart:
            why += " (needs --restart)"
        return Plan(tuple(actions), why, exclusive=True)

    def _sequence(self, target: Target, facts: RestartFacts, drift: daytwo.Drift,
                  node: NodeState | None) -> list[Action]:
        assert target.vm is not None
        vm, host = target.vm, target.loaded.host
        uri, state, flags = host.libvirt_uri, facts.define.state, target.flags
        running = facts.define.domain is not None and state not in ("shut off", "")
        actions: list[Action] = []
        if vm.k8s is not None:
            if facts.nodes is None and running:
                raise StepMismatch([Check("k3s API", "answers", facts.api_error or "no answer", False)], exit_code=4,
                                   message=f"cannot drain {vm.name}'s node before its restart: the k3s API did not "
                                           f"answer ({facts.api_error}); nothing was changed")
            if node is not None and running and drift.restart:
                reason = "restart: " + ", ".join(c.name for c in drift.restart) if drift.restart else node.drained_for
                actions += [OnPeer(daytwo.mark_command(vm.name, reason or "restart")),
                            OnPeer(daytwo.drain_command(vm.name, flags.drain_timeout or daytwo.DRAIN_TIMEOUT_S))]
        if drift.restart:
            if running:
                actions.append(daytwo.shutdown_command(vm, uri, flags.shutdown_timeout or daytwo.SHUTDOWN_TIMEOUT_S,
                                                       flags.force_off))
            actions.append(redefine_command(vm, uri, host.virt_type, domain_tuning(host, target.loaded.cores, vm),
                                            target.loaded.name))
        elif facts.define.domain is None:  # stopped between undefine and define
            actions.append(define_command(vm, uri, host.virt_type, domain_tuning(host, target.loaded.cores, vm),
                                          target.loaded.name))
        if drift.restart or not running:
            actions.append(sh("virsh -c {uri} start {name} && virsh -c {uri} autostart {name} >/dev/null",
                              uri=uri, name=vm.name, timeout=120, why=f"start {vm.name}, autostart"))
        else:  # started by a run stopped before its autostart (the redefine dropped the old one)
            actions.append(sh("virsh -c {uri} autostart {name} >/dev/null", uri=uri, name=vm.name,
                              why=f"{vm.name} starts with the host"))
        actions.append(Await(_Back(), f"{vm.name} is defined and running as vms.define and vms.start verify"))
        if vm.k8s is not None and (node is not None or facts.nodes is None):
            actions.append(OnPeer(daytwo.uncordon_command(vm.name)))
        return actions

    def verify(self, target: Target, facts: RestartFacts) -> list[Check]:
        assert target.vm is not None
        vm = target.vm
        if not self._mine(vm) or facts.define.domain is None:
            return []
        checks = [Check(c.name, c.expected, c.found, c.ok) for c in
                  daytwo.split_drift(target.loaded.host, vm, facts.define.domain,
                                     domain_tuning(target.loaded.host, target.loaded.cores, vm)).restart]
        if not checks:
            checks.append(Check.evidence("fields that need a restart", "as the inventory says"))
        if vm.k8s is not None:
            if facts.nodes is None:  # before k3s is installed, or its server is down: nothing to drain
                checks.append(Check.warn("k3s API", "answers", facts.api_error or "no answer"))
            else:
                checks += daytwo.node_checks(vm, self._node(vm, facts), strict=target.flags.restart)
        return checks


class VmsRestartAgents(_Restart):
    name = "vms.restart.agents"
    summary = "--restart: each agent VM (and non-k3s VM) in turn: drain, ACPI shutdown, redefine, start, uncordon"
    server = False


class VmsRestartServer(_Restart):
    name = "vms.restart.server"
    summary = "--restart: the k3s server VM, after every agent is uncordoned: the same sequence"
    server = True
