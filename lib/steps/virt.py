"""vms.define and vms.start: each VM's libvirt domain with the spec's vCPU pins, emulator pin and strict numatune.

A missing domain is written by virt-install (--print-xml) and defined with virsh: defining is not
starting (vms.start does that). An existing domain is compared field by field with the spec; any
difference is drift (exit 5) and the domain is only replaced with --redefine, and only while it is
shut off (its disks are kept).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lib import guest_state
from lib.cpuset import format_cpulist
from lib.daytwo import live_commands, split_drift
from lib.domain import (
    DomainSpec,
    LiveDomain,
    domain_checks,
    live_checks,
    live_domain,
    parse_domain_xml,
    parse_domifaddr,
    virt_install_args,
)
from lib.facts import libvirt as libvirt_facts
from lib.facts.sysfs import section, split_sections
from lib.inventory.model import VM, Host
from lib.reads import Answers, Ask, Live, Reads, Run, Unreached
from lib.results import Check
from lib.shell import Command, Value, seq, sh
from lib.steps.base import Plan, Step, StepMismatch, Target
from lib.vmperf import DomainTuning, domain_tuning


@dataclass(frozen=True)
class DomainFacts:
    domain: DomainSpec | None  # None: not defined
    state: str


def domain_facts_command(vm: VM, uri: str) -> Command:
    # libvirt not answering fails the read (exit 1, virsh's message): never reported as "not defined".
    dumpxml = sh('if [ "$state" != {absent} ]; then ' + section("xml") + "; "
                 "virsh -c {uri} dumpxml --inactive {name} || exit 1; fi", absent=libvirt_facts.ABSENT, uri=uri,
                 name=vm.name)
    return seq(libvirt_facts.domstate(uri, vm.name), section("state"), libvirt_facts.PRINT_STATE, dumpxml,
               timeout=60, why="read the domain definition")


def parse_domain_facts(stdout: str) -> DomainFacts:
    parts = split_sections(stdout)
    xml = parts.get("xml", "").strip()
    state = parts.get("state", "").strip()
    return DomainFacts(parse_domain_xml(xml) if xml else None, "" if state == libvirt_facts.ABSENT else state)


def owner_mark(host_name: str) -> str:
    """The <description> of every domain we define: how a domain later removed from the inventory is
    still known as ours (reported as unmanaged, never deleted)."""
    return f"managed by numa-k3s for host {host_name}"


def install_argv(vm: VM, uri: str, virt_type: str, tuning: DomainTuning, owner: str) -> list[Value]:
    return [*virt_install_args(vm, uri=uri, virt_type=virt_type, tuning=tuning),
            "--metadata", f"description={owner_mark(owner)}"]


def define_command(vm: VM, uri: str, virt_type: str, tuning: DomainTuning, owner: str) -> Command:
    return sh('tmp=$(mktemp) && {args} > "$tmp" && virsh -c {uri} define "$tmp"; rc=$?; rm -f "$tmp"; exit $rc',
              args=install_argv(vm, uri, virt_type, tuning, owner), uri=uri, timeout=180, why=f"define {vm.name}")


def plan_domain(host: Host, vm: VM, facts: DomainFacts | None, redefine: bool, tuning: DomainTuning,
                mode: str = "apply", owner: str = "") -> Plan:
    uri, virt_type = host.libvirt_uri, host.virt_type
    define = define_command(vm, uri, virt_type, tuning, owner)
    if facts is None or facts.domain is None:
        return Plan((define,), f"define {vm.name}: {vm.vcpu_count} vCPUs pinned, emulator on "
                               f"{vm.tuning.emulator_cpuset}, memory strict on node {vm.tuning.numa_memory.nodeset}; "
                               + tuning_summary(vm, tuning))
    drift = [c for c in domain_checks(vm, virt_type, facts.domain, tuning) if not c.ok]
    if not drift:
        return Plan(reason=f"domain {vm.name} is defined exactly as the spec says")
    split = split_drift(host, vm, facts.domain, tuning)
    running = facts.state not in ("shut off", "")
    if not split.restart and (running or not redefine):  # libvirt moves these on the running domain
        changes = ", ".join(f"{c.name} {c.found} -> {c.expected}" for c in split.live)
        return Plan(tuple(live_commands(vm, uri, facts.domain, running, tuning)),
                    f"live, no restart: {vm.name}: {changes}" if running else
                    f"{vm.name} is shut off: persistent definition only: {changes}")
    if mode == "plan" and not redefine:
        return Plan(reason=f"{vm.name} needs a restart (vms.restart, with --restart): {split.restart_fields}")
    if not redefine:
        raise StepMismatch(drift, message=(
            f"domain {vm.name} differs from the spec in field(s) that need a restart ({split.restart_fields}); "
            "it is never redefined silently: rerun with --restart (drain, shut down, redefine, start, uncordon), "
            "or with --redefine while it is shut off (disks are kept)"))
    if facts.state not in ("shut off", ""):
        raise StepMismatch(drift, exit_code=4, message=(
            f"domain {vm.name} is {facts.state}; shut it down before --redefine replaces its definition"))
    undefine = sh("virsh -c {uri} undefine {name}", uri=uri, name=vm.name, why=f"undefine {vm.name}, keeping disks")
    return Plan((undefine, define), f"redefine {vm.name} (--redefine): " + ", ".join(c.name for c in drift))


def tuning_summary(vm: VM, t: DomainTuning) -> str:
    """One line of what the domain carries beyond pins, for the plan (offline too)."""
    parts = [f"guest {t.topology}", "cpu host-passthrough + cache passthrough" if t.cache_passthrough else "",
             f"hugepages {t.hugepage_kb} KiB locked" if t.hugepage_kb else "", "nosharepages, no balloon"]
    parts += [f"{target} cache=none io=native discard=unmap iothread {i} on CPUs {format_cpulist(t.iothread_cpus)}"
              for target, i in t.iothreads.items()]
    if t.cachetune:
        parts.append(f"L3 {t.cachetune.size_kb // 1024} MB exclusive (cachetune, L3 id {t.cachetune.cache_id})")
    return ", ".join(p for p in parts if p)


def _tuning(target: Target) -> DomainTuning:
    assert target.vm is not None
    return domain_tuning(target.loaded.host, target.loaded.cores, target.vm)


class VmsDefine(Step[DomainFacts]):
    name = "vms.define"
    summary = "virt-install with vcpupin, emulatorpin, numatune strict, disks, bridge; drift is never silent"
    targets = "vms"

    def facts_command(self, target: Target) -> Command:
        assert target.vm is not None
        return domain_facts_command(target.vm, target.loaded.host.libvirt_uri)

    def parse(self, target: Target, answers: Answers) -> DomainFacts:
        return parse_domain_facts(answers.stdout())

    def plan(self, target: Target, facts: DomainFacts | None) -> Plan:
        assert target.vm is not None
        return plan_domain(target.loaded.host, target.vm, facts, target.flags.redefine,
                           _tuning(target), target.mode, target.loaded.name)

    def verify(self, target: Target, facts: DomainFacts) -> list[Check]:
        assert target.vm is not None
        if facts.domain is None:
            return [Check(f"domain {target.vm.name}", "defined", "not defined", False)]
        return domain_checks(target.vm, target.loaded.host.virt_type, facts.domain, _tuning(target))


# -- vms.start -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StartFacts:
    live: LiveDomain | None  # None: not defined
    guest: tuple[Check, ...] = ()  # SSH and cloud-init, once the domain runs


# cloud-init's state is read from its files (lib/guest_state.py); `cloud-init status` is the fallback
# where this boot has none yet. It exits non-zero for "error" and "degraded"; the status line is what
# matters. `timeout` on the guest: our side gives up after _CLOUD_INIT_S, and closing the SSH channel
# does not stop a command without a terminal, so each slow answer (under TCG, several guests on one
# CPU: over 30 s for cloud-init's Python to start) used to stay running and slow the next attempt down.
_CLOUD_INIT_S = 120
_CLOUD_INIT = guest_state.command(_CLOUD_INIT_S - 10)


def guest_checks(vm: VM, reached: str | None, status_output: str) -> tuple[Check, ...]:
    """Pure: did SSH answer (reached is None when it did), and what cloud-init says."""
    where = f"ssh {vm.ssh.user}@{vm.ssh.host or '(domifaddr)'}:{vm.ssh.port}" if vm.ssh else "ssh"
    if reached is not None:
        return (Check(where, "answers", reached, False), Check("cloud-init status", "done", "not reached", False))
    status = guest_state.parse(status_output)
    if status == "not installed":  # a guest without cloud-init (the tiny test guests): accepted, not passed
        return (Check(where, "answers", "answers", True), Check.warn("cloud-init status", "done", status))
    return (Check(where, "answers", "answers", True), Check("cloud-init status", "done", status, status == "done"))


def repin(vm: VM, live: LiveDomain, uri: str) -> list[Command]:
    """Put back live pins someone moved (virsh vcpupin/emulatorpin --live): the definition is right,
    so only the running domain drifted. Memory binding cannot move live under strict mode; verify
    reports it and a restart of the VM applies the definition."""
    actions = [sh("virsh -c {uri} vcpupin {name} {vcpu} {cpu} --live", uri=uri, name=vm.name, vcpu=i, cpu=cpu,
                  why=f"pin vCPU {i} back to CPU {cpu}")
               for i, cpu in enumerate(vm.pins) if live.vcpu_pins.get(i) != frozenset({cpu})]
    if live.emulator_cpus != vm.tuning.emulator_cpus:
        cpus = format_cpulist(vm.tuning.emulator_cpus)
        actions.append(sh("virsh -c {uri} emulatorpin {name} {cpus} --live", uri=uri, name=vm.name, cpus=cpus,
                          why=f"pin the emulator threads back to {cpus}"))
    return actions


def start_command(vm: VM, uri: str) -> Command:
    """virsh start, retry-safe: on a slow host (TCG, the NUMA lab) the first attempt can time out while
    libvirtd goes on starting the domain; the retry then finds it active, which is what was asked:
    running, or still "paused (starting up)" (libvirt resumes it once QEMU is set up; vms.start's
    verification waits for running). A domain paused for any other reason is not started here."""
    return sh("virsh -c {uri} start {name} || case \"$(virsh -c {uri} domstate {name} --reason)\" in "
              "running*|'paused (starting up)') true;; *) false;; esac",
              uri=uri, name=vm.name, timeout=120, why=f"start {vm.name}")


class VmsStart(Step[StartFacts]):
    name = "vms.start"
    summary = "start + autostart each VM, wait for SSH and cloud-init, verify live pins via libvirt"
    targets = "vms"
    converge = True

    def reads(self, target: Target, got: Answers) -> Reads:
        """The live domain; when it runs, the guest's address (unless the inventory gives it), then
        one probe of cloud-init in the guest: each read once the answer it needs is there."""
        assert target.vm is not None
        vm, uri = target.vm, target.loaded.host.libvirt_uri
        live = Live("live", uri, vm.name)
        domain = live_domain(got.domain("live")) if "live" in got else None
        if domain is None or domain.state != "running" or target.guest is None:
            return (live,)
        reads: Reads = (live,)
        guest = target.guest
        if not guest.host:  # no address in the inventory: the one libvirt sees (DHCP lease, then ARP)
            reads += (Run("address", sh("virsh -c {uri} domifaddr --source lease {name} 2>/dev/null; "
                                        "virsh -c {uri} domifaddr --source arp {name} 2>/dev/null; true",
                                        uri=uri, name=vm.name, why="the VM's address")),)
            address = parse_domifaddr(got.stdout("address")) if "address" in got else None
            if address is None:
                return reads
            guest = replace(guest, host=address)
        # The run's own session to the guest (one connect attempt while it boots): the k3s steps
        # after this one reuse the connection instead of opening another through the jump host.
        return (*reads, Ask("guest", guest, sh(_CLOUD_INIT, timeout=_CLOUD_INIT_S, why="is cloud-init done"),
                            once=True))

    def parse(self, target: Target, answers: Answers) -> StartFacts:
        assert target.vm is not None
        vm = target.vm
        live = live_domain(answers.domain("live"))
        if "guest" not in answers:
            if live is None or live.state != "running" or target.guest is None:
                return StartFacts(live)
            return StartFacts(live, guest_checks(vm, "no address yet (virsh domifaddr: no lease, no ARP entry)", ""))
        probe = answers.peer("guest")
        if isinstance(probe, Unreached):
            return StartFacts(live, guest_checks(vm, probe.why, ""))
        return StartFacts(live, guest_checks(vm, None, probe.stdout))

    def plan(self, target: Target, facts: StartFacts | None) -> Plan:
        assert target.vm is not None
        vm, uri = target.vm, target.loaded.host.libvirt_uri
        start = start_command(vm, uri)
        resume = sh("virsh -c {uri} resume {name}", uri=uri, name=vm.name, why=f"resume {vm.name}")
        auto = sh("virsh -c {uri} autostart {name}", uri=uri, name=vm.name, why="start with the host")
        if facts is None:
            return Plan((start, auto), f"start {vm.name}, mark it autostart, wait for SSH")
        if facts.live is None:
            missing = Check(f"domain {vm.name}", "defined", "not defined", False)
            raise StepMismatch([missing], exit_code=4, message=(
                f"domain {vm.name} is not defined; define it: invoke step vms.define --host={target.loaded.name}"))
        actions: list[Command] = []
        if facts.live.state == "paused":
            actions.append(resume)
        elif facts.live.state != "running":
            actions.append(start)
        if not facts.live.autostart:
            actions.append(auto)
        if facts.live.state == "running":
            actions += repin(vm, facts.live, uri)
        if not actions:
            return Plan(reason=f"{vm.name} is running and starts with the host")
        return Plan(tuple(actions), f"{vm.name} is {facts.live.state}: " + ", ".join(a.why for a in actions))

    def verify(self, target: Target, facts: StartFacts) -> list[Check]:
        assert target.vm is not None
        if facts.live is None:
            return [Check(f"domain {target.vm.name}", "defined", "not defined", False)]
        checks = live_checks(target.vm, facts.live) + list(facts.guest)
        if facts.live.state == "running" and target.guest is None:
            checks.append(Check.warn("ssh", "answers", "not checked: the inventory gives no vms[].ssh"))
        return checks
