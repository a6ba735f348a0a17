"""Host work off the vCPU CPUs (part of host.tune): cgroup confinement, IRQ affinity, and the proof.

Which mechanism, and why: `AllowedCPUs=` on system.slice, user.slice and init.scope (the cgroup v2
cpuset controller, systemd >= 244), not systemd's `CPUAffinity=`. An affinity is only where a task
starts: any process may widen its own with sched_setaffinity(), and every child of PID 1 inherits
it, libvirtd and QEMU included. A cpuset is enforced by the kernel for every task of the cgroup,
leaves machine.slice (libvirt's VMs) untouched so the vCPU pins apply, and changes at runtime.
Persisted as drop-ins under /etc/systemd/system; applied live with `systemctl set-property
--runtime` when systemd runs the host (on a sysroot, or a host without systemd, the cgroup files
are written directly).

IRQs: irqbalance is told to keep off the vCPU CPUs (IRQBALANCE_BANNED_CPULIST, a drop-in for its
unit), the IRQs that exist are moved to the host CPUs, and new ones start there
(/proc/irq/default_smp_affinity, also written at boot by host.tune's tmpfiles file).

The proof is measured, not assumed: two samples of every task's /proc stat (the `processor` field:
the CPU it last ran on) and of /proc/interrupts an interval apart. A host task that used CPU time
and ended on a vCPU CPU, or a device IRQ counted on one, is an intruder.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from lib.cpuset import format_cpulist, parse_cpulist
from lib.facts.sysfs import section, split_sections
from lib.inventory.model import Host
from lib.monitor import parse as mp
from lib.results import Check
from lib.shell import Command, root_prefix, sh, write_file

UNITS = ("system.slice", "user.slice", "init.scope")
DROPIN = "50-numa-k3s-cpus.conf"
IRQBALANCE_DROPIN = "/etc/systemd/system/irqbalance.service.d/50-numa-k3s.conf"
DEFAULT_AFFINITY = "/proc/irq/default_smp_affinity"
_HEADER = "# Managed by numa-k3s runbooks (step host.tune); changes here are overwritten.\n"


def vcpu_cpus(host: Host) -> frozenset[int]:
    return frozenset(cpu for vm in host.vms for cpu in vm.pins)


def host_cpus(host: Host) -> frozenset[int]:
    """Every CPU no vCPU is pinned to: the emulator cores, host_reserved_cpus, and any free ones."""
    return host.topology.all_cpus - vcpu_cpus(host)


def dropin_path(unit: str) -> str:
    return f"/etc/systemd/system/{unit}.d/{DROPIN}"


def dropin_content(unit: str, cpus: Collection[int]) -> str:
    kind = unit.rsplit(".", 1)[1].capitalize()  # [Slice] or [Scope]
    return f"{_HEADER}[{kind}]\nAllowedCPUs={format_cpulist(cpus)}\n"


def irqbalance_content(banned: Collection[int]) -> str:
    return f"{_HEADER}[Service]\nEnvironment=IRQBALANCE_BANNED_CPULIST={format_cpulist(banned)}\n"


def cpumask(cpus: Collection[int]) -> str:
    """A mask the kernel's %*pb parser takes (/proc/irq/default_smp_affinity): hex, a comma every 32 bits."""
    value = sum(1 << c for c in cpus)
    words = [f"{value >> shift & 0xFFFFFFFF:08x}" for shift in range(0, max(value.bit_length(), 1), 32)]
    return ",".join(reversed(words))


def parse_cpumask(text: str) -> frozenset[int]:
    value = int(text.strip().replace(",", "") or "0", 16)
    return frozenset(i for i in range(value.bit_length()) if value >> i & 1)


def wanted_files(host: Host) -> dict[str, str]:
    """Path -> content of every persisted confinement file the inventory asks for (none without VMs)."""
    c, cpus = host.tuning.confinement, host_cpus(host)
    if not vcpu_cpus(host):
        return {}
    files = {dropin_path(u): dropin_content(u, cpus) for u in UNITS} if c.host_cpus else {}
    if c.irqs:
        files[IRQBALANCE_DROPIN] = irqbalance_content(vcpu_cpus(host))
    return files


# -- facts ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConfineFacts:
    files: dict[str, str]  # path -> content ("" when missing)
    cgroup_cpus: dict[str, str | None]  # unit -> its cpuset.cpus (None: no such cgroup)
    irq_affinity: dict[int, frozenset[int]]
    default_affinity: frozenset[int] | None
    tasks_before: tuple[mp.TaskStat, ...]
    tasks_after: tuple[mp.TaskStat, ...]
    task_pids: dict[int, int]  # tid -> pid (thread group), from the second sample
    interrupts_before: dict[str, dict[int, int]]
    interrupts_after: dict[str, dict[int, int]]
    qemu_pids: frozenset[int]
    interval: float


def qemu_pids_script(run_dir: str = "/run/libvirt/qemu") -> str:
    """Shell: the running domains' QEMU pids, one a line. libvirt writes its pid files without a
    newline, so `cat *.pid` ran several domains' pids together into one number."""
    return f'for f in {run_dir}/*.pid; do [ -e "$f" ] && echo "$(cat "$f")"; done'


def _raw_root(sysroot: str) -> str:
    return "" if sysroot in ("", "/") else sysroot


def confine_facts_command(host: Host, interval: float) -> Command:
    files = " ".join(f'"$r"{p}' for p in (*(dropin_path(u) for u in UNITS), IRQBALANCE_DROPIN))
    # Each stat line is prefixed with its pid, so threads group into processes (QEMU is skipped whole).
    # (Plain strings: sh() formats the template, so the shell's braces are doubled.)
    tasks = ('for f in "$r"/proc/[0-9]*/task/[0-9]*/stat; do p=${{f#"$r"/proc/}}; '
             'read -r line < "$f" 2>/dev/null && echo "${{p%%/*}} $line"; done')
    parts = [
        "r={root}",
        section("files"), f"for f in {files}; do " + '[ -e "$f" ] && {{ echo "== ${{f#"$r"}}"; cat "$f"; }}; done',
        section("cgroups"), *(f'[ -e "$r"/sys/fs/cgroup/{u}/cpuset.cpus ] && echo "{u} $(cat "$r"/sys/fs/cgroup/{u}'
                              f'/cpuset.cpus)"' for u in (*UNITS, "machine.slice")),
        section("irqs"), 'for f in "$r"/proc/irq/[0-9]*/smp_affinity_list; do n=${{f%/*}}; '
                         'echo "${{n##*/}} $(cat "$f" 2>/dev/null)"; done',
        section("default"), f'cat "$r"{DEFAULT_AFFINITY} 2>/dev/null',
        section("qemu"), qemu_pids_script(),
        section("tasks1"), tasks, section("int1"), 'cat "$r"/proc/interrupts 2>/dev/null',
        "sleep {interval}",
        section("tasks2"), tasks, section("int2"), 'cat "$r"/proc/interrupts 2>/dev/null', "true",
    ]
    return sh("; ".join(parts), root=_raw_root(host.sysroot), interval=f"{interval:g}", sudo=True,
              timeout=60 + interval,
              why="read the confinement files, cgroup cpusets, IRQ affinity, and host tasks/IRQs over an interval")


def _files(text: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("== /"):
            current = out.setdefault(line[3:], [])
        elif current is not None:
            current.append(line)
    return {path: "\n".join(lines) + "\n" for path, lines in out.items()}


def _tasks(text: str) -> tuple[tuple[mp.TaskStat, ...], dict[int, int]]:
    tasks: list[mp.TaskStat] = []
    pids: dict[int, int] = {}
    for line in text.split("\n"):
        pid, _, stat = line.partition(" ")
        if not pid.isdigit() or not stat.strip():
            continue
        try:
            task = mp.parse_task_stat(stat)
        except ValueError:
            continue  # a task that ended mid-read leaves a short line; it did not run anywhere after
        tasks.append(task)
        pids[task.tid] = int(pid)
    return tuple(tasks), pids


def parse_interrupts(text: str) -> dict[str, dict[int, int]]:
    """/proc/interrupts: IRQ name ("24", "LOC", ...) -> {CPU: count}; the header names the CPU columns."""
    lines = text.splitlines()
    if not lines:
        return {}
    cpus = [int(c[3:]) for c in lines[0].split() if c.startswith("CPU") and c[3:].isdigit()]
    out: dict[str, dict[int, int]] = {}
    for line in lines[1:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        cells = rest.split()
        counts = [int(c) for c in cells[:len(cpus)] if c.isdigit()]
        out[name.strip()] = dict(zip(cpus, counts, strict=False))
    return out


def parse_confine_facts(stdout: str, interval: float) -> ConfineFacts:
    parts = split_sections(stdout)
    cgroups: dict[str, str | None] = dict.fromkeys((*UNITS, "machine.slice"))
    for line in parts.get("cgroups", "").splitlines():
        unit, _, cpus = line.partition(" ")
        if unit in cgroups:
            cgroups[unit] = cpus.strip()
    irqs: dict[int, frozenset[int]] = {}
    for line in parts.get("irqs", "").splitlines():
        irq, _, cpus = line.partition(" ")
        if irq.isdigit() and cpus.strip():
            try:
                irqs[int(irq)] = parse_cpulist(cpus.strip())
            except ValueError:
                continue
    default = parts.get("default", "").strip()
    before, _ = _tasks(parts.get("tasks1", ""))
    after, pids = _tasks(parts.get("tasks2", ""))
    qemu = frozenset(int(p) for p in parts.get("qemu", "").split() if p.isdigit())
    return ConfineFacts(
        files=_files(parts.get("files", "")), cgroup_cpus=cgroups, irq_affinity=irqs,
        default_affinity=parse_cpumask(default) if re.fullmatch(r"[0-9a-f,]+", default) else None,
        tasks_before=before, tasks_after=after, task_pids=pids,
        interrupts_before=parse_interrupts(parts.get("int1", "")),
        interrupts_after=parse_interrupts(parts.get("int2", "")), qemu_pids=qemu, interval=interval)


# -- the measured proof (pure) --------------------------------------------------------------------

def intruding_tasks(before: tuple[mp.TaskStat, ...], after: tuple[mp.TaskStat, ...], pids: Mapping[int, int],
                    cpus: Collection[int], ignore_pids: Collection[int]) -> list[mp.TaskStat]:
    """Tasks that used CPU time during the interval and last ran on `cpus` (QEMU's own and the
    per-CPU kernel threads, which cannot move, left out)."""
    first = {t.tid: t for t in before}
    out = []
    for task in after:
        old = first.get(task.tid)
        ran = task.ticks > old.ticks if old is not None else task.ticks > 0
        if (ran and task.processor in cpus and pids.get(task.tid) not in ignore_pids
                and not mp.is_per_cpu_kthread(task.comm)):
            out.append(task)
    return out


def intruding_irqs(before: Mapping[str, Mapping[int, int]], after: Mapping[str, Mapping[int, int]],
                   cpus: Collection[int]) -> dict[str, dict[int, int]]:
    """Device IRQs (numbered lines) counted on `cpus` during the interval. The named lines (LOC
    timer, RES/CAL/TLB IPIs) are per-CPU by nature and only kernel isolation reduces them."""
    out: dict[str, dict[int, int]] = {}
    for name, counts in after.items():
        if not name.isdigit():
            continue
        old = before.get(name, {})
        delta = {cpu: n - old.get(cpu, 0) for cpu, n in counts.items() if cpu in cpus and n > old.get(cpu, 0)}
        if delta:
            out[name] = delta
    return out


@dataclass(frozen=True)
class HostWork:
    """What ran on vCPU CPUs over the interval, split by who can move it (doctor, verify and the exporter)."""

    tasks: list[mp.TaskStat]  # host processes: confinement's to keep off
    kthreads: list[mp.TaskStat]  # kernel threads: only kernel isolation keeps them off
    irqs: dict[str, dict[int, int]]  # device IRQs: IRQ affinity's
    managed: dict[str, dict[int, int]]  # kernel-managed IRQs: only isolcpus=managed_irq moves them


def host_work(host: Host, f: ConfineFacts) -> HostWork:
    cpus = vcpu_cpus(host)
    ran = intruding_tasks(f.tasks_before, f.tasks_after, f.task_pids, cpus, f.qemu_pids)
    fired = intruding_irqs(f.interrupts_before, f.interrupts_after, cpus)
    # A kernel-managed IRQ (a multi-queue device's per-CPU vector) keeps its affinity whatever host.tune
    # writes: only isolcpus=managed_irq moves it, so it is said apart, as kernel threads are.
    managed = {n: d for n, d in fired.items() if not f.irq_affinity.get(int(n), frozenset()) <= host_cpus(host)
               and int(n) in f.irq_affinity}
    return HostWork([t for t in ran if not t.kthread], [t for t in ran if t.kthread],
                    {n: d for n, d in fired.items() if n not in managed}, managed)


def intrusion_checks(host: Host, f: ConfineFacts) -> list[Check]:
    cpus = vcpu_cpus(host)
    where = format_cpulist(cpus) or "none"
    work = host_work(host, f)
    tasks, kthreads, irqs, managed = work.tasks, work.kthreads, work.irqs, work.managed
    irq_text = _irqs_text(irqs)
    name_t = f"host tasks on vCPU CPUs {where} over {f.interval:g}s"
    name_i = f"device IRQs on vCPU CPUs {where} over {f.interval:g}s"
    if not cpus:
        return [Check.evidence(name_t, "no vCPU pinned on this host")]
    if not f.tasks_after:
        return [Check(name_t, "none", "not measured (no /proc task stats read)", False)]
    confined = host.tuning.confinement
    rows = []
    for name, found, on in ((name_t, _tasks_text(tasks, f), confined.host_cpus), (name_i, irq_text, confined.irqs)):
        if on:
            rows.append(Check(name, "none", found or "none", not found))
        else:  # confinement off in the inventory: what runs there is reported, never passed or failed
            rows.append(Check.warn(name, "none (confinement is off in the inventory)", found or "none"))
    isolated = " despite tuning.kernel_isolation" if host.tuning.kernel_isolation else \
        "; tuning.kernel_isolation keeps them off"
    if kthreads:  # cgroups do not hold kernel threads (unbound kworkers, RCU): only kernel isolation does
        rows.append(Check.warn(f"kernel threads on vCPU CPUs {where} over {f.interval:g}s", "none",
                               f"{_tasks_text(kthreads, f)}{isolated}"))
    if managed:
        rows.append(Check.warn(f"kernel-managed IRQs on vCPU CPUs {where} over {f.interval:g}s", "none",
                               f"{_irqs_text(managed)}{isolated}"))
    return rows


def _irqs_text(irqs: Mapping[str, Mapping[int, int]]) -> str:
    return ", ".join(f"IRQ {n} on CPU {format_cpulist(d)} ({sum(d.values())}x)" for n, d in sorted(irqs.items()))


def _tasks_text(tasks: list[mp.TaskStat], f: ConfineFacts) -> str:
    return ", ".join(f"{t.comm} (pid {f.task_pids.get(t.tid)} tid {t.tid}) on CPU {t.processor}"
                     for t in tasks[:8]) + (f" and {len(tasks) - 8} more" if len(tasks) > 8 else "")


# -- plan and verify ------------------------------------------------------------------------------

def plan_confinement(host: Host, f: ConfineFacts | None) -> tuple[list[Command], list[str]]:
    c, root = host.tuning.confinement, root_prefix(host.sysroot)
    cpus, banned = host_cpus(host), vcpu_cpus(host)
    actions: list[Command] = []
    changes: list[str] = []
    if not banned:  # no VM pinned: nothing to keep host work away from
        return actions, changes
    for path, content in wanted_files(host).items():
        if f is None or f.files.get(path, "") != content:
            before = (f.files.get(path) or None) if f else None
            actions.append(write_file(root, path, content, before=before, why=f"persist in {path}"))
            changes.append(f"write {path}")
    want = format_cpulist(cpus)
    if c.host_cpus and (f is None or any(f.cgroup_cpus.get(u) != want for u in UNITS)):
        props = " && ".join(f"systemctl set-property --runtime {u} AllowedCPUs={want}" for u in UNITS)
        direct = "; ".join(f'[ -d "$r"/sys/fs/cgroup/{u} ] && echo {want} > "$r"/sys/fs/cgroup/{u}/cpuset.cpus'
                           for u in UNITS)
        actions.append(sh(f"r={{root}}; if [ -z \"$r\" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload "
                          f"&& {props}; else {direct}; true; fi", root=_raw_root(host.sysroot),
                          why=f"host processes onto CPUs {want} (system.slice, user.slice, init.scope)"))
        changes.append(f"AllowedCPUs={want} for {', '.join(UNITS)}")
    moved = [] if f is None else sorted(i for i, a in f.irq_affinity.items() if not a <= cpus)
    if c.irqs and (f is None or moved or f.default_affinity != cpus):
        # Managed IRQs (per-queue NVMe, virtio) refuse a new affinity (EIO): the kernel places those,
        # and verification names any that still fire on a vCPU CPU.
        actions.append(sh(f'r={{root}}; echo {cpumask(cpus)} > "$r"{DEFAULT_AFFINITY}; '
                          'for f in "$r"/proc/irq/[0-9]*/smp_affinity_list; do echo {cpus} > "$f" 2>/dev/null; done; '
                          'if [ -z "$r" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; '
                          "systemctl try-restart irqbalance.service; fi; true",
                          root=_raw_root(host.sysroot), cpus=want,
                          why=f"IRQs onto CPUs {want}, irqbalance off {format_cpulist(banned)}"))
        changes.append(f"IRQ affinity -> {want}" + (f" ({len(moved)} IRQs moved)" if moved else ""))
    return actions, changes


def confinement_checks(host: Host, f: ConfineFacts) -> list[Check]:
    if not vcpu_cpus(host):
        return [Check.evidence("host confinement", "no vCPU pinned on this host: nothing to keep off")]
    c = host.tuning.confinement
    cpus = host_cpus(host)
    want = format_cpulist(cpus)
    rows: list[Check] = []
    for path, content in wanted_files(host).items():
        found = f.files.get(path, "")
        state = "missing" if not found else "as planned" if found == content else "differs"
        rows.append(Check(f"persisted {path}", "as planned", state, found == content))
    if c.host_cpus:
        for unit in UNITS:
            got = f.cgroup_cpus.get(unit)
            rows.append(Check(f"{unit} cpuset.cpus", want,
                              "no cgroup v2 cpuset here" if got is None else got or "all (unset)", got == want))
    machine = f.cgroup_cpus.get("machine.slice")
    free = machine is None or machine == "" or parse_cpulist(machine) >= vcpu_cpus(host)
    rows.append(Check("machine.slice cpuset.cpus", "every CPU (unset), so libvirt's pins apply",
                      "not created yet" if machine is None else machine or "all (unset)", free))
    if c.irqs:
        stray = sorted(i for i, a in f.irq_affinity.items() if not a <= cpus)
        if stray:  # after apply, only kernel-managed IRQs keep theirs: whether they fire is measured below
            rows.append(Check.warn("IRQ affinity", f"every IRQ on CPUs {want}",
                                   f"IRQs {', '.join(map(str, stray[:10]))} keep their affinity (kernel-managed)"))
        else:
            rows.append(Check("IRQ affinity", f"every IRQ on CPUs {want}", "all on host CPUs", True))
        default = f.default_affinity
        rows.append(Check(DEFAULT_AFFINITY, want, format_cpulist(default) if default is not None else "missing",
                          default == cpus))
    return rows + intrusion_checks(host, f)
