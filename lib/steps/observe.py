"""Read-only observation of running VMs: numa.check, emulator.check, monitor.sample, doctor.

They run on the hypervisor, one batched read per VM: the QEMU pid from libvirt's pid file, its
numa_maps and `numastat -p`, two samples of its threads' /proc stat and of `virsh domstats --vcpu`
an interval apart, the nodes' numastat counters, and `perf stat` for LLC loads/misses when perf
can count them. The spec's thresholds: remote memory under 1 % (numa.check), emulator threads
under 50 % of their cpuset (emulator.check). Parsing is lib/monitor/parse.py's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lib import confine, verdicts
from lib.cpuset import format_cpulist
from lib.domain import live_domain
from lib.facts.sysfs import section, split_sections
from lib.inventory.model import VM, Host
from lib.monitor import parse as mp
from lib.monitor.prom import NUMBERS_ROW, VmNumbers
from lib.reads import Answers, Live, Reads, Run
from lib.results import Check, Outcome
from lib.shell import Command, root_prefix, sh
from lib.steps.base import Plan, Step, Target

DEFAULT_INTERVAL = 1.0
# ps reports %CPU over a thread's life; an idle kernel or daemon thread that last ran on a pinned
# CPU is not a neighbour worth reporting, a busy one is.
INTRUDER_MIN_PCPU = 25.0


@dataclass(frozen=True)
class VmSample:
    pid: int | None
    numa_maps: mp.NumaMaps | None
    numastat: mp.NumastatProcess | None
    node_counters: dict[int, dict[str, int]]
    threads_before: tuple[mp.TaskStat, ...]
    threads_after: tuple[mp.TaskStat, ...]
    domstats_before: mp.DomainVcpus | None
    domstats_after: mp.DomainVcpus | None
    llc: mp.LlcCounts | None  # None: perf not available here
    node_memory: dict[int, mp.NodeMemInfo]  # the host's, per node (numastat -m)
    interval: float
    numa_mode: str  # live numatune mode from libvirt ("" when not running)
    node_counters_after: dict[int, dict[str, int]] = field(default_factory=dict)  # the second sample
    llc_occupancy: int | None = None  # bytes of L3 the VM's resctrl group holds; None: no such group


def llc_occupancy_script(root: str) -> str:
    """The VM's LLC occupancy from resctrl: libvirt's group for a cachetune is qemu-<id>-<name>-vcpus_<list>,
    and its mon_data holds one llc_occupancy (bytes) per L3 instance. A {{name}} template for sh()."""
    return (f"for f in {root}/sys/fs/resctrl/qemu-[0-9]*-{{name}}-vcpus_*/mon_data/mon_L3_*/llc_occupancy; do "
            '[ -e "$f" ] && cat "$f"; done')


def parse_llc_occupancy(text: str) -> int | None:
    values = [int(v) for v in text.split() if v.isdigit()]
    return sum(values) if values else None


def sample_command(vm: VM, sysroot: str, uri: str, interval: float) -> Command:
    root = root_prefix(sysroot)
    stats = f"cat {root}/proc/$pid/task/*/stat 2>/dev/null"
    dom = "virsh -c {uri} domstats --vcpu {name} 2>/dev/null"
    # perf's own `sleep` is the interval when perf can count; otherwise a plain sleep.
    perf = (f"if command -v perf >/dev/null 2>&1; then {section('perf')}; "
            "perf stat -x, -e LLC-loads,LLC-load-misses -p $pid -- sleep {interval} 2>&1; "
            "else sleep {interval}; fi")
    parts = [
        "pid=$(cat /run/libvirt/qemu/{name}.pid 2>/dev/null)",
        f"{section('pid')}; echo $pid",
        '[ -n "$pid" ] || exit 0',
        f"{section('numa_maps')}; cat {root}/proc/$pid/numa_maps 2>/dev/null",
        f"{section('numastat')}; numastat -p $pid 2>/dev/null",
        f"{section('meminfo')}; numastat -m 2>/dev/null",
        f"{section('nodes')}; for f in {root}/sys/devices/system/node/node*/numastat; do "
        'n=${{f%/numastat}}; echo "== ${{n##*node}}"; cat "$f"; done',
        # The clock around the two samples: on a slow host (the NUMA lab's TCG) reading them takes
        # seconds, and CPU time divided by the nominal interval alone would read as several hundred %.
        f"{section('up1')}; cat {root}/proc/uptime 2>/dev/null",
        f"{section('stat1')}; {stats}", f"{section('dom1')}; {dom}",
        perf,
        f"{section('stat2')}; {stats}", f"{section('dom2')}; {dom}",
        f"{section('nodes2')}; for f in {root}/sys/devices/system/node/node*/numastat; do "
        'n=${{f%/numastat}}; echo "== ${{n##*node}}"; cat "$f"; done',
        f"{section('llc_occupancy')}; {llc_occupancy_script(root)}",
        f"{section('up2')}; cat {root}/proc/uptime 2>/dev/null", "true",
    ]
    return sh("; ".join(parts), name=vm.name, uri=uri, interval=f"{interval:g}", timeout=60 + interval,
              sudo=True, why=f"sample {vm.name}'s QEMU process")


def _node_files(text: str) -> dict[int, str]:
    files: dict[int, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("== "):
            current = files.setdefault(int(line[3:]), [])
        elif current is not None:
            current.append(line)
    return {node: "\n".join(lines) for node, lines in files.items()}


def measured_interval(parts: dict[str, str], nominal: float) -> float:
    """Seconds between the two samples by the host's /proc/uptime; the nominal interval without it."""
    try:
        elapsed = float(parts["up2"].split()[0]) - float(parts["up1"].split()[0])
    except (KeyError, IndexError, ValueError):
        return nominal
    return elapsed if elapsed > 0 else nominal


def parse_sample(stdout: str, interval: float, numa_mode: str) -> VmSample:
    parts = split_sections(stdout)
    interval = measured_interval(parts, interval)
    pid_text = parts.get("pid", "").strip()
    if not pid_text:
        return VmSample(None, None, None, {}, (), (), None, None, None, {}, interval, numa_mode)

    def dom(key: str) -> mp.DomainVcpus | None:
        found = mp.parse_domstats_vcpu(parts.get(key, ""))
        return next(iter(found.values()), None)

    numastat_text = parts.get("numastat", "")
    perf = parts.get("perf")
    llc = mp.llc_counts(mp.parse_perf_stat_csv(perf)) if perf is not None else None
    return VmSample(
        pid=int(pid_text), numa_maps=mp.parse_numa_maps(parts.get("numa_maps", "")),
        numastat=mp.parse_numastat_process(numastat_text) if numastat_text.strip() else None,
        node_counters=mp.parse_node_numastats(_node_files(parts.get("nodes", ""))),
        threads_before=mp.parse_task_stats(parts.get("stat1", "")),
        threads_after=mp.parse_task_stats(parts.get("stat2", "")),
        domstats_before=dom("dom1"), domstats_after=dom("dom2"), llc=llc,
        node_memory=mp.parse_numastat_meminfo(parts["meminfo"]) if parts.get("meminfo", "").strip() else {},
        interval=interval, numa_mode=numa_mode,
        node_counters_after=mp.parse_node_numastats(_node_files(parts.get("nodes2", ""))),
        llc_occupancy=parse_llc_occupancy(parts.get("llc_occupancy", "")))


def sample_reads(vm: VM, host: Host, interval: float) -> Reads:
    """One VM's observation: its live numatune (libvirt), then one sample read."""
    return (Live(f"live {vm.name}", host.libvirt_uri, vm.name),
            Run(f"sample {vm.name}", sample_command(vm, host.sysroot, host.libvirt_uri, interval)))


def parse_vm_sample(vm: VM, answers: Answers, interval: float) -> VmSample:
    live = live_domain(answers.domain(f"live {vm.name}"))
    return parse_sample(answers.stdout(f"sample {vm.name}"), interval, live.numa_mode if live else "")


class _VmObservation(Step[VmSample]):
    """Shared by the read-only VM observations: live numatune (libvirt) + one sample read."""

    targets = "vms"
    read_ahead = False  # each VM's sample is taken when its step runs, side by side with the others

    def interval(self, target: Target) -> float:
        return target.flags.interval or DEFAULT_INTERVAL

    def reads(self, target: Target, got: Answers) -> Reads:
        assert target.vm is not None
        return sample_reads(target.vm, target.loaded.host, self.interval(target))

    def parse(self, target: Target, answers: Answers) -> VmSample:
        assert target.vm is not None
        return parse_vm_sample(target.vm, answers, self.interval(target))

    def plan(self, target: Target, facts: VmSample | None) -> Plan:
        return Plan(reason="read-only: observes the running VM, changes nothing")


def _not_running(vm: VM) -> list[Check]:
    return [Check(f"QEMU process of {vm.name}", "running", "not running", False)]


def numa_checks(vm: VM, s: VmSample, limit: float) -> list[Check]:
    if s.pid is None or s.numa_maps is None:
        return _not_running(vm)
    nodes = vm.tuning.numa_memory.nodes
    # numa_maps, anonymous + hugepage + shared memory only: file pages are the page cache's, not the VM's.
    checks = [Check("numatune mode", "strict", s.numa_mode or "unknown", s.numa_mode == "strict"),
              mp.check_remote_memory(s.numa_maps.guest_bytes, nodes, limit)]
    if s.numastat is not None:  # numastat -p counts file pages too: reported beside, never compared
        per_node = s.numastat.per_node_mb
        checks.append(Check.evidence("memory per node (numastat -p)",
                                     ", ".join(f"node{n} {mb:.0f} MB" for n, mb in sorted(per_node.items())) or "none",
                                     f"on node(s) {format_cpulist(nodes)}"))
    counters = ", ".join(f"node{n} miss {c.get('numa_miss', 0)} foreign {c.get('numa_foreign', 0)}"
                         for n, c in sorted(s.node_counters.items()))
    checks.append(Check.evidence("host numa_miss / numa_foreign (since boot)", counters or "not available"))
    if s.node_counters_after:
        checks += mp.check_node_allocations(s.node_counters, s.node_counters_after, s.interval, limit)
    return checks


def emulator_percents(s: VmSample) -> tuple[dict[int, float], mp.QemuThreads]:
    percents = mp.thread_cpu_percent(s.threads_before, s.threads_after, s.interval)
    return percents, mp.classify_qemu_threads(s.threads_after)


def emulator_checks(vm: VM, s: VmSample, limit: float = mp.EMULATOR_SHARE_LIMIT) -> list[Check]:
    if s.pid is None:
        return _not_running(vm)
    percents, threads = emulator_percents(s)
    emulator = [percents.get(t.tid, 0.0) for t in threads.emulator]
    check = mp.check_emulator_load(emulator, vm.tuning.emulator_cpus, limit)
    busiest = max(threads.emulator, key=lambda t: percents.get(t.tid, 0.0), default=None)
    shown = f"{busiest.comm} (tid {busiest.tid}) {percents.get(busiest.tid, 0.0):.1f}%" if busiest else "none"
    return [check, Check.evidence("busiest emulator thread", shown),
            Check.evidence("emulator threads", str(len(threads.emulator)))]


class NumaCheck(_VmObservation):
    name = "numa.check"
    summary = ("read-only: QEMU memory per node (numa_maps, numastat -p), remote share < 1%, numatune strict, "
               "numa_foreign/numa_miss at most 1% of allocations over an interval")

    def verify(self, target: Target, facts: VmSample) -> list[Check]:
        assert target.vm is not None
        return numa_checks(target.vm, facts, target.flags.max_remote or mp.REMOTE_SHARE_LIMIT)


class EmulatorCheck(_VmObservation):
    name = "emulator.check"
    summary = "read-only: emulator threads (non-vCPU QEMU threads) under 50% of their cpuset over an interval"

    def verify(self, target: Target, facts: VmSample) -> list[Check]:
        assert target.vm is not None
        return emulator_checks(target.vm, facts)


def monitor_checks(vm: VM, s: VmSample) -> list[Check]:
    """The spec's key metrics as rows; ok=False marks a value past the spec's threshold."""
    if s.pid is None or s.numa_maps is None:
        return _not_running(vm)
    rows: list[Check] = []
    if s.domstats_before and s.domstats_after:
        util = mp.vcpu_utilisation(s.domstats_before, s.domstats_after, int(s.interval * 1e9))
        delay = {i: (v.delay_ns or 0) - (s.domstats_before.vcpus[i].delay_ns or 0)
                 for i, v in s.domstats_after.vcpus.items() if i in s.domstats_before.vcpus}
        rows.append(Check("vCPU utilisation", "per vCPU", " ".join(f"{i}:{u:.0%}" for i, u in sorted(util.items())),
                          True))
        wait = verdicts.RUN_QUEUE_WAIT.limit()
        rows.append(Check("vCPU wait (run-queue delay)", f"< {wait:.0%} of the interval",
                          " ".join(f"{i}:{d / 1e6:.1f}ms" for i, d in sorted(delay.items())),
                          all(d < wait * s.interval * 1e9 for d in delay.values())))
    else:
        rows.append(Check.warn("vCPU utilisation", "per vCPU", "not available (virsh domstats)"))
    rows += [c for c in numa_checks(vm, s, mp.REMOTE_SHARE_LIMIT) if c.name in ("remote memory", "numatune mode")]
    rows.append(emulator_checks(vm, s)[0])
    memory = ", ".join(f"node{n} {m.used_mb:.0f}/{m.total_mb:.0f} MB used" for n, m in sorted(s.node_memory.items()))
    rows.append(Check.evidence("host memory per node (numastat -m)", memory or "not available"))
    if s.llc is None or s.llc.loads is None:
        rows.append(Check.warn("LLC loads / misses", "counted", "not available (perf cannot count LLC here)"))
    else:
        ratio = s.llc.miss_ratio
        rows.append(Check.evidence("LLC loads / misses", f"{s.llc.loads} / {s.llc.misses}"
                                   + (f" ({ratio:.1%} miss)" if ratio is not None else "")))
    occupancy = (f"{s.llc_occupancy / 2**20:.1f} MiB" if s.llc_occupancy is not None else
                 "not available (no resctrl group: the VM has no exclusive_l3_mb, or the host no resctrl)")
    rows.append(Check.evidence("LLC occupancy (resctrl)", occupancy))
    return rows


def vm_numbers(vm: VM, s: VmSample) -> VmNumbers:
    """The sample as numbers, for `monitor --prometheus` (the rows above are the same values as text)."""
    if s.pid is None or s.numa_maps is None:
        return VmNumbers()
    before, after = s.domstats_before, s.domstats_after
    util = mp.vcpu_utilisation(before, after, int(s.interval * 1e9)) if before and after else {}
    vcpus = after.vcpus if after else {}
    percents, threads = emulator_percents(s)
    emulator = mp.cpuset_share([percents.get(t.tid, 0.0) for t in threads.emulator], vm.tuning.emulator_cpus)
    return VmNumbers(
        vcpu_utilisation=util,
        vcpu_cpu_seconds={i: v.time_ns / 1e9 for i, v in vcpus.items() if v.time_ns is not None},
        vcpu_delay_seconds={i: v.delay_ns / 1e9 for i, v in vcpus.items() if v.delay_ns is not None},
        memory_bytes=dict(s.numa_maps.guest_bytes),
        remote_ratio=mp.remote_share(s.numa_maps.guest_bytes, vm.tuning.numa_memory.nodes),
        emulator_ratio=emulator, llc_occupancy_bytes=s.llc_occupancy,
        llc_miss_ratio=s.llc.miss_ratio if s.llc else None,
        node_memory_total_bytes={n: int(m.total_mb * 2**20) for n, m in s.node_memory.items()},
        node_memory_used_bytes={n: int(m.used_mb * 2**20) for n, m in s.node_memory.items()},
        node_counters=s.node_counters_after or s.node_counters)


class MonitorSample(_VmObservation):
    name = "monitor.sample"
    summary = "read-only: the spec's key metrics per VM (vCPU, NUMA, emulator, LLC) over an interval"

    def verify(self, target: Target, facts: VmSample) -> list[Check]:
        assert target.vm is not None
        rows = monitor_checks(target.vm, facts)
        if target.flags.prometheus:  # carried to the task as one machine-readable evidence row
            rows.append(Check.evidence(NUMBERS_ROW, json.dumps(vm_numbers(target.vm, facts).as_json())))
        return rows


# -- doctor: the spec's troubleshooting table as checks ----------------------------------------------

@dataclass(frozen=True)
class Finding:
    symptom: str
    evidence: str
    fix: str
    ok: bool
    outcome: Outcome | None = None  # "warning": said, never a problem (lib/verdicts.py decides)


def doctor_findings(vm: VM, s: VmSample, ps: tuple[mp.PsThread, ...], qemu_pids: frozenset[int],
                    governors: dict[int, str]) -> list[Finding]:
    """Pure: each row of the spec's table for one VM, healthy or not, with its evidence and fix."""
    if s.pid is None or s.numa_maps is None:
        return [Finding(f"{vm.name}: not running", "no QEMU pid file", "invoke step vms.start", False)]
    nodes = vm.tuning.numa_memory.nodes
    share = mp.remote_share(s.numa_maps.guest_bytes, nodes)
    counters = [c for c in mp.check_node_allocations(s.node_counters, s.node_counters_after, s.interval)
                if c.kind != "evidence"] if s.node_counters_after else []
    out = [Finding(
        f"{vm.name}: high cross-NUMA traffic", f"numatune {s.numa_mode or 'unknown'}, {share:.2%} of memory off "
        f"node(s) {format_cpulist(nodes)}" + "".join(f"; {c.name} {c.found}" for c in counters),
        "numatune mode strict on the VM's node (invoke provision --redefine); no remote memory requests",
        s.numa_mode == "strict" and share < mp.REMOTE_SHARE_LIMIT and all(c.ok for c in counters))]
    percents, threads = emulator_percents(s)
    load = mp.cpuset_share([percents.get(t.tid, 0.0) for t in threads.emulator], vm.tuning.emulator_cpus)
    out.append(Finding(
        f"{vm.name}: emulator CPU bottleneck", f"emulator threads at {load:.0%} of CPUs "
        f"{vm.tuning.emulator_cpuset}", "add a core to emulator_cpuset (the spec: over 50%, add another core)",
        load < mp.EMULATOR_SHARE_LIMIT))
    vcpu_cpus = frozenset(vm.pins)
    not_perf = sorted(c for c in vcpu_cpus if governors.get(c, "performance") != "performance")
    busy = [t for t in mp.threads_on_cpus(ps, vcpu_cpus, qemu_pids) if t.pcpu >= INTRUDER_MIN_PCPU]
    overlap = vm.tuning.emulator_cpus & vcpu_cpus
    evidence = []
    if not_perf:
        evidence.append(f"governor not performance on CPUs {format_cpulist(not_perf)}")
    evidence += [f"{t.comm} pid {t.pid} on CPU {t.psr} ({t.pcpu:.0f}% CPU)" for t in busy]
    if overlap:
        evidence.append(f"emulator shares vCPU cores {format_cpulist(overlap)}")
    # A CPU without cpufreq has no governor at all: said so, never shown as "performance".
    no_freq = sorted(c for c in vcpu_cpus if c not in governors)
    governor = (f"governor not available (no cpufreq) on CPUs {format_cpulist(no_freq)}" if no_freq
                else "governor performance")
    out.append(Finding(
        f"{vm.name}: vCPU scheduling delays", "; ".join(evidence) or
        f"{governor}, no busy thread on CPUs {format_cpulist(vcpu_cpus)}, emulator apart",
        "governor performance (invoke step host.tune); move or stop the listed processes (taskset, "
        "or isolate the vCPU CPUs); keep the emulator off vCPU cores", not evidence))
    return out


def governors_command(sysroot: str) -> Command:
    root = root_prefix(sysroot)
    return sh(f"for f in {root}/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do "
              '[ -e "$f" ] && echo "${{f%/cpufreq/*}} $(cat "$f")"; done; true', why="CPU governors")


def parse_governors(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in text.splitlines():
        path, _, gov = line.partition(" ")
        cpu = path.rsplit("/cpu", 1)[-1]
        if cpu.isdigit():
            out[int(cpu)] = gov.strip()
    return out


@dataclass(frozen=True)
class DoctorFacts:
    samples: dict[str, VmSample]
    ps: tuple[mp.PsThread, ...]
    governors: dict[int, str]
    confine: confine.ConfineFacts | None = None


def host_work_findings(host: Host, f: confine.ConfineFacts) -> list[Finding]:
    """Host tasks and device IRQs measured on vCPU CPUs over the interval (host.tune's proof), each
    classified by lib/verdicts.py as verify.tuning and the exporter classify it: kernel threads and
    kernel-managed IRQs are warnings (no step moves them), and where the inventory turned
    confinement off the finding names that field instead of offering host.tune."""
    out = []
    for c in confine.intrusion_checks(host, f):
        if c.kind == "evidence":
            continue
        verdict = _work_verdict(c.name)
        if not c.ok:  # "not measured": no task stats were read, never a pass
            out.append(Finding(f"host: {c.name}", c.found, verdict.advice(host), False))
            continue
        outcome = verdict.outcome(host, c.found != "none")
        out.append(Finding(f"host: {c.name}", c.found, verdict.advice(host), outcome != "failed", outcome))
    return out


def _work_verdict(name: str) -> verdicts.Verdict:
    if name.startswith("kernel"):
        return verdicts.KERNEL_WORK
    return verdicts.DEVICE_IRQS if name.startswith("device IRQs") else verdicts.HOST_TASKS


class Doctor(Step[DoctorFacts]):
    name = "doctor"
    summary = "read-only: the spec's troubleshooting table (cross-NUMA, emulator, vCPU delays) as findings"
    targets = "hypervisor"
    read_ahead = False  # its samples are taken one after another when it runs, each over its interval

    def reads(self, target: Target, got: Answers) -> Reads:
        """Each VM's observation, then the threads, the governors and the confinement sample."""
        host, interval = target.loaded.host, target.flags.interval or DEFAULT_INTERVAL
        return (*(read for vm in host.vms for read in sample_reads(vm, host, interval)),
                Run("ps", sh("ps -eLo pid,tid,psr,pcpu,comm", why="threads and their CPUs")),
                Run("governors", governors_command(host.sysroot)),
                Run("confine", confine.confine_facts_command(host, interval)))

    def parse(self, target: Target, answers: Answers) -> DoctorFacts:
        host, interval = target.loaded.host, target.flags.interval or DEFAULT_INTERVAL
        return DoctorFacts({vm.name: parse_vm_sample(vm, answers, interval) for vm in host.vms},
                           mp.parse_ps_threads(answers.stdout("ps")), parse_governors(answers.stdout("governors")),
                           confine.parse_confine_facts(answers.stdout("confine"), interval))

    def plan(self, target: Target, facts: DoctorFacts | None) -> Plan:
        return Plan(reason="read-only: diagnoses, changes nothing")

    def verify(self, target: Target, facts: DoctorFacts) -> list[Check]:
        host = target.loaded.host
        qemu = frozenset(s.pid for s in facts.samples.values() if s.pid is not None)
        findings = [f for vm in host.vms
                    for f in doctor_findings(vm, facts.samples[vm.name], facts.ps, qemu, facts.governors)]
        if facts.confine is not None:
            findings += host_work_findings(host, facts.confine)
        # A finding as a Check: the symptom is the row, the fix what is expected, the evidence what was found.
        return [Check(f.symptom, f.fix, f.evidence, f.ok, f.outcome) for f in findings]
