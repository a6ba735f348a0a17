"""vms.define: each VM's libvirt domain with the spec's vCPU pins, emulator pin and strict numatune.

A missing domain is written by virt-install (--print-xml) and defined with virsh: defining is not
starting (vms.start does that). An existing domain is compared field by field with the spec; any
difference is drift (exit 5) and the domain is only replaced with --redefine, and only while it is
shut off (its disks are kept).
"""

from __future__ import annotations

from dataclasses import dataclass

from lib.domain import DomainSpec, domain_checks, parse_domain_xml, virt_install_args
from lib.facts.sysfs import section, split_sections
from lib.inventory.model import VM
from lib.remote import CmdResult
from lib.results import Check
from lib.shell import Command, sh
from lib.steps.base import Plan, Step, StepMismatch, Target


@dataclass(frozen=True)
class DomainFacts:
    domain: DomainSpec | None  # None: not defined
    state: str


def domain_facts_command(vm: VM, uri: str) -> Command:
    return sh(f"if virsh -c {{uri}} domstate {{name}} >/dev/null 2>&1; then {section('xml')}; "
              f"virsh -c {{uri}} dumpxml --inactive {{name}}; {section('state')}; virsh -c {{uri}} domstate {{name}}; "
              "fi; true", uri=uri, name=vm.name, timeout=60, why="read the domain definition")


def parse_domain_facts(stdout: str) -> DomainFacts:
    parts = split_sections(stdout)
    xml = parts.get("xml", "").strip()
    return DomainFacts(parse_domain_xml(xml) if xml else None, parts.get("state", "").strip())


def define_command(vm: VM, uri: str, virt_type: str) -> Command:
    # virt-install creates a storage pool for each disk directory; parallel runs raced on it
    # ("pool 'images' already exists"), so the VMs of one host take turns under flock.
    args = ["flock", "/run/lock/numa-k3s-virt-install.lock", *virt_install_args(vm, uri=uri, virt_type=virt_type)]
    return sh('tmp=$(mktemp) && {args} > "$tmp" && virsh -c {uri} define "$tmp"; rc=$?; rm -f "$tmp"; exit $rc',
              args=list(args), uri=uri, timeout=180, why=f"define {vm.name}")


def plan_domain(vm: VM, uri: str, virt_type: str, facts: DomainFacts | None, redefine: bool) -> Plan:
    define = define_command(vm, uri, virt_type)
    if facts is None or facts.domain is None:
        return Plan((define,), f"define {vm.name}: {vm.vcpu_count} vCPUs pinned, emulator on "
                               f"{vm.tuning.emulator_cpuset}, memory strict on node {vm.tuning.numa_memory.nodeset}")
    drift = [c for c in domain_checks(vm, virt_type, facts.domain) if not c.ok]
    if not drift:
        return Plan(reason=f"domain {vm.name} is defined exactly as the spec says")
    if not redefine:
        raise StepMismatch(drift, message=(
            f"domain {vm.name} differs from the spec ({len(drift)} field(s)); it is never redefined silently: "
            "rerun with --redefine to replace its definition (disks are kept)"))
    if facts.state not in ("shut off", ""):
        raise StepMismatch(drift, exit_code=4, message=(
            f"domain {vm.name} is {facts.state}; shut it down before --redefine replaces its definition"))
    undefine = sh("virsh -c {uri} undefine {name}", uri=uri, name=vm.name, why=f"undefine {vm.name}, keeping disks")
    return Plan((undefine, define), f"redefine {vm.name} (--redefine): " + ", ".join(c.name for c in drift))


class VmsDefine(Step):
    name = "vms.define"
    summary = "virt-install with vcpupin, emulatorpin, numatune strict, disks, bridge; drift is never silent"
    targets = "vms"

    def facts_command(self, target: Target) -> Command:
        assert target.vm is not None
        return domain_facts_command(target.vm, target.loaded.host.libvirt_uri)

    def parse(self, target: Target, result: CmdResult | None) -> DomainFacts:
        return parse_domain_facts(result.stdout if result else "")

    def plan(self, target: Target, facts: DomainFacts | None) -> Plan:
        assert target.vm is not None
        host = target.loaded.host
        return plan_domain(target.vm, host.libvirt_uri, host.virt_type, facts, bool(target.options.get("redefine")))

    def verify(self, target: Target, facts: DomainFacts) -> list[Check]:
        assert target.vm is not None
        if facts.domain is None:
            return [Check(f"domain {target.vm.name}", "defined", "not defined", False)]
        return domain_checks(target.vm, target.loaded.host.virt_type, facts.domain)
