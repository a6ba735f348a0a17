"""host.tune: the spec's Performance Tuning Parameters, live and persisted across reboot.

Live: every cpufreq governor, kernel.numa_balancing, THP enabled and defrag. Persisted:
/etc/sysctl.d/90-numa-k3s.conf (numa_balancing, applied by systemd-sysctl at boot) and
/etc/tmpfiles.d/numa-k3s.conf (`w` lines that write the sysfs values at boot; tmpfiles accepts
globs, so one line covers every CPU's governor). The sysroot prefixes every path, /etc included,
so tests run it against generated trees.
"""

from __future__ import annotations

from dataclasses import dataclass

from lib import confine, hostperf
from lib.cpuset import format_cpulist
from lib.facts.perf import PerfFacts, joined, parse_perf_facts, perf_facts_command
from lib.facts.read import cat_if_present
from lib.facts.sysfs import cpu_index, grep_values, kernel_choice, section, split_sections
from lib.inventory.model import Host
from lib.reads import Answers
from lib.results import Check
from lib.shell import Command, root_prefix, sh, write_file
from lib.steps.base import Plan, Step, Target

GOVERNORS = "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor"
NUMA_BALANCING = "/proc/sys/kernel/numa_balancing"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
THP_DEFRAG = "/sys/kernel/mm/transparent_hugepage/defrag"
SYSCTL_FILE = "/etc/sysctl.d/90-numa-k3s.conf"
TMPFILES_FILE = "/etc/tmpfiles.d/numa-k3s.conf"
_HEADER = "# Managed by numa-k3s runbooks (step host.tune); changes here are overwritten.\n"


def sysctl_content(host: Host) -> str:
    return f"{_HEADER}kernel.numa_balancing = {host.tuning.numa_balancing}\n"


def tmpfiles_content(host: Host) -> str:
    t = host.tuning
    return (f"{_HEADER}# Applied at boot by systemd-tmpfiles: the sysfs values the spec asks for.\n"
            f"w {THP_ENABLED} - - - - {t.thp_enabled}\n"
            f"w {THP_DEFRAG} - - - - {t.thp_defrag}\n"
            f"w {GOVERNORS} - - - - {t.cpu_governor}\n"
            + hostperf.tmpfiles_lines(host)
            + (f"w {confine.DEFAULT_AFFINITY} - - - - {confine.cpumask(confine.host_cpus(host))}\n"
               if t.confinement.irqs and confine.vcpu_cpus(host) else ""))


@dataclass(frozen=True)
class TuneFacts:
    governors: dict[int, str]  # empty: no cpufreq on this host
    numa_balancing: str
    thp_enabled: str
    thp_defrag: str
    sysctl_file: str  # "" when missing
    tmpfiles_file: str


def _root(sysroot: str) -> str:
    return "" if sysroot in ("", "/") else sysroot


def tune_facts_command(sysroot: str) -> Command:
    script = "; ".join([
        "r={root}", section("values"),
        f'grep -Hs . "$r"{GOVERNORS} "$r"{NUMA_BALANCING} "$r"{THP_ENABLED} "$r"{THP_DEFRAG}',
        # An unreadable persisted file fails the read (named), so nothing is planned over it.
        section("sysctl"), cat_if_present(f'"$r"{SYSCTL_FILE}'),
        section("tmpfiles"), cat_if_present(f'"$r"{TMPFILES_FILE}'), "true",
    ])
    return sh(script, root=_root(sysroot), sudo=False, timeout=60, why="read governors, NUMA balancing, THP")


def parse_tune_facts(stdout: str, sysroot: str) -> TuneFacts:
    parts = split_sections(stdout)
    values = grep_values(parts.get("values", ""), sysroot)
    governors = {cpu: v.strip() for p, v in values.items() if p.endswith("/scaling_governor")
                 and (cpu := cpu_index(p)) is not None}
    return TuneFacts(
        governors=governors,
        numa_balancing=values.get(NUMA_BALANCING, "missing").strip(),
        thp_enabled=kernel_choice(values.get(THP_ENABLED, "missing")),
        thp_defrag=kernel_choice(values.get(THP_DEFRAG, "missing")),
        sysctl_file=parts.get("sysctl", ""),
        tmpfiles_file=parts.get("tmpfiles", ""),
    )


def _same(found: str, want: str) -> bool:
    return found.strip() == want.strip()


def plan_tuning(host: Host, facts: TuneFacts | None) -> Plan:
    t, root = host.tuning, root_prefix(host.sysroot)
    actions: list[Command] = []
    changes: list[str] = []
    off_governor = {c: g for c, g in facts.governors.items() if g != t.cpu_governor} if facts else {}
    if facts is None or off_governor:
        actions.append(sh(f'for f in {root}{GOVERNORS}; do [ -e "$f" ] && echo {{gov}} > "$f"; done; true',
                          gov=t.cpu_governor, why="CPU governor"))
        changes.append(f"governor -> {t.cpu_governor} on CPUs {format_cpulist(off_governor) or 'all'}")
    live = [(NUMA_BALANCING, str(t.numa_balancing), facts.numa_balancing if facts else None, "numa_balancing"),
            (THP_ENABLED, t.thp_enabled, facts.thp_enabled if facts else None, "THP enabled"),
            (THP_DEFRAG, t.thp_defrag, facts.thp_defrag if facts else None, "THP defrag")]
    for path, want, found, label in live:
        if found != want:
            actions.append(sh(f"echo {{value}} > {root}{path}", value=want, why=label))
            changes.append(f"{label} {found or '?'} -> {want}")
    files = [(SYSCTL_FILE, sysctl_content(host), facts.sysctl_file if facts else None),
             (TMPFILES_FILE, tmpfiles_content(host), facts.tmpfiles_file if facts else None)]
    for path, content, found in files:
        if found is None or not _same(found, content):
            actions.append(write_file(root, path, content, before=found or None, why=f"persist in {path}"))  # "": none
            changes.append(f"{'write' if not found else 'update'} {path}")
    if not actions:
        return Plan(reason="governor, numa_balancing, THP and the persisted files already as the spec says")
    if facts is None:
        return Plan(tuple(actions), "offline: facts not read, so every value and file is written")
    return Plan(tuple(actions), "; ".join(changes))


def tuning_checks(host: Host, facts: TuneFacts) -> list[Check]:
    t = host.tuning
    if facts.governors:
        off = sorted(c for c, g in facts.governors.items() if g != t.cpu_governor)
        found = (f"{t.cpu_governor} on all {len(facts.governors)} CPUs" if not off else
                 f"{facts.governors[off[0]]} on CPUs {format_cpulist(off)}")
        gov = Check("CPU governor", f"{t.cpu_governor} on every CPU with cpufreq", found, not off)
    else:
        gov = Check.warn("CPU governor", t.cpu_governor, "not available (no cpufreq on this host)")
    return [
        gov,
        Check("kernel.numa_balancing", str(t.numa_balancing), facts.numa_balancing,
              facts.numa_balancing == str(t.numa_balancing)),
        Check("THP enabled", t.thp_enabled, facts.thp_enabled, facts.thp_enabled == t.thp_enabled),
        Check("THP defrag", t.thp_defrag, facts.thp_defrag, facts.thp_defrag == t.thp_defrag),
        Check(f"persisted {SYSCTL_FILE}", "as planned", _file_state(facts.sysctl_file, sysctl_content(host)),
              _same(facts.sysctl_file, sysctl_content(host))),
        Check(f"persisted {TMPFILES_FILE}", "as planned", _file_state(facts.tmpfiles_file, tmpfiles_content(host)),
              _same(facts.tmpfiles_file, tmpfiles_content(host))),
    ]


def _file_state(found: str, want: str) -> str:
    return "missing" if not found.strip() else ("as planned" if _same(found, want) else "differs")


@dataclass(frozen=True)
class HostTuneFacts:
    tune: TuneFacts
    perf: PerfFacts
    confine: confine.ConfineFacts


def plan_host_tune(host: Host, facts: HostTuneFacts | None) -> Plan:
    """The spec's tuning, then hugepages, then host confinement: one plan, every change named."""
    base = plan_tuning(host, facts.tune if facts else None)
    pages, page_changes = hostperf.plan_hugepages(host, facts.perf if facts else None)
    cage, cage_changes = confine.plan_confinement(host, facts.confine if facts else None)
    if not pages and not cage:
        return base
    changes = ([] if base.empty or facts is None else [base.reason]) + page_changes + cage_changes
    reason = base.reason if facts is None else "; ".join(changes)
    return Plan((*base.actions, *pages, *cage), reason)


class HostTune(Step[HostTuneFacts]):
    name = "host.tune"
    summary = ("governor performance, numa_balancing 0, THP always/always, hugepages per node, host work and "
               "IRQs off the vCPU CPUs; persisted across reboot")

    def interval(self, target: Target) -> float:
        return target.flags.interval or 1.0

    def facts_command(self, target: Target) -> Command:
        """One round trip: the tuning values, hugepages and features, and the confinement over an interval."""
        host = target.loaded.host
        return joined(joined(tune_facts_command(host.sysroot), perf_facts_command(host.sysroot)),
                      confine.confine_facts_command(host, self.interval(target)))

    def parse(self, target: Target, answers: Answers) -> HostTuneFacts:
        out, sysroot = answers.stdout(), target.loaded.host.sysroot
        return HostTuneFacts(parse_tune_facts(out, sysroot), parse_perf_facts(out, sysroot),
                             confine.parse_confine_facts(out, self.interval(target)))

    def plan(self, target: Target, facts: HostTuneFacts | None) -> Plan:
        return plan_host_tune(target.loaded.host, facts)

    def verify(self, target: Target, facts: HostTuneFacts) -> list[Check]:
        host = target.loaded.host
        return (tuning_checks(host, facts.tune) + hostperf.hugepage_checks(host, facts.perf)
                + confine.confinement_checks(host, facts.confine))
