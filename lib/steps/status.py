"""status.vms and status.k3s: the glance `invoke status` takes (read-only).

status.vms: each VM's live state, pins and memory binding in one libvirt read, like vms.start's
verification without the SSH probe into the guest. status.k3s: each node's Ready and taints from
one `kubectl get nodes` on the server, without k3s.taints' pod and add-on reads.
"""

from __future__ import annotations

from lib import k3s
from lib.domain import LiveDomain, live_checks, live_domain
from lib.facts.sysfs import split_sections
from lib.reads import Answers, Live, Reads
from lib.results import Check
from lib.shell import Command, sh
from lib.steps.base import Plan, Step, Target
from lib.steps.k3s import nodes_section, parse_nodes_output, ready_and_taints


class StatusVms(Step[LiveDomain | None]):
    name = "status.vms"
    summary = "each VM's live state, vCPU/emulator pins and memory binding (libvirt API; read-only)"
    targets = "vms"

    def reads(self, target: Target, got: Answers) -> Reads:
        assert target.vm is not None
        return (Live("live", target.loaded.host.libvirt_uri, target.vm.name),)

    def parse(self, target: Target, answers: Answers) -> LiveDomain | None:
        return live_domain(answers.domain("live"))

    def plan(self, target: Target, facts: LiveDomain | None) -> Plan:
        return Plan(reason="read-only")

    def verify(self, target: Target, facts: LiveDomain | None) -> list[Check]:
        assert target.vm is not None
        if facts is None:
            return [Check("state", "running", "not defined", False)]
        return live_checks(target.vm, facts)


class StatusK3s(Step[tuple[dict[str, k3s.Node] | None, str]]):
    name = "status.k3s"
    summary = "each k3s node's Ready and taints (one kubectl get nodes on the server; read-only)"
    targets = "server"

    def facts_command(self, target: Target) -> Command:
        return sh(nodes_section(), sudo=True, timeout=60, why="every node's readiness and taints")

    def parse(self, target: Target, answers: Answers) -> tuple[dict[str, k3s.Node] | None, str]:
        return parse_nodes_output(split_sections(answers.stdout()).get("nodes", ""))

    def plan(self, target: Target, facts: tuple[dict[str, k3s.Node] | None, str] | None) -> Plan:
        return Plan(reason="read-only")

    def verify(self, target: Target, facts: tuple[dict[str, k3s.Node] | None, str]) -> list[Check]:
        nodes, error = facts
        if nodes is None:
            return [Check("k3s API", "answers", error or "no answer", False)]
        managed = k3s.managed_keys(target.loaded.host)
        checks: list[Check] = []
        for vm in (vm for vm in target.loaded.host.vms if vm.k8s):
            node = nodes.get(vm.name)
            checks += ([Check(vm.name, "registered", "not registered", False)] if node is None else
                       list(ready_and_taints(vm, node, managed)))
        return checks
