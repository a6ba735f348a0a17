"""Pure parsers and planners of bios.check and host.tune, against captured command outputs.

Fixtures under tests/fixtures/facts/ are the facts commands' real output: on generated trees
(spec host, a 1-socket AMD host without cpufreq) and on this Debian 12 machine's own kernel.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lib.facts.host import HostFacts, parse_host_facts
from lib.inventory.load import load_inventory
from lib.inventory.model import Host
from lib.steps.bios import topology_checks, virtualization_warnings
from lib.steps.tuning import (
    SYSCTL_FILE,
    TMPFILES_FILE,
    TuneFacts,
    parse_tune_facts,
    plan_tuning,
    sysctl_content,
    tmpfiles_content,
    tuning_checks,
)
from tests.inventory_helpers import REPO

FIXTURES = REPO / "tests" / "fixtures" / "facts"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.fixture(scope="module")
def hv1() -> Host:
    return load_inventory(REPO / "hosts", ["hv1"]).hosts["hv1"].host


def test_spec_host_facts() -> None:
    facts = parse_host_facts(fixture("host-spec-2x18x2.txt"), "/")
    assert (facts.sockets, facts.cores_per_socket, facts.threads_per_core) == (2, 18, 2)
    assert facts.nodes == {0: frozenset([*range(18), *range(36, 54)]), 1: frozenset([*range(18, 36), *range(54, 72)])}
    assert facts.node_mem_kb == {0: 131072 * 1024, 1: 131072 * 1024}
    assert facts.cpus[0].siblings == {0, 36} and facts.cpus[71].package == 1
    assert facts.l3_kb == {0: 46080, 1: 46080}
    assert facts.virt_flags == ("vmx",) and facts.kvm and facts.smt_active is True
    assert facts.iommu == ("dmar0",) and facts.iommu_enabled
    assert facts.dmi["bios_vendor"] and facts.dmi["product_name"]


def test_amd_host_facts() -> None:
    facts = parse_host_facts(fixture("host-amd-1x8x2-nocpufreq.txt"), "/")
    assert (facts.sockets, facts.cores_per_socket, facts.threads_per_core) == (1, 8, 2)
    assert facts.virt_flags == ("svm",)
    assert not facts.iommu and not facts.iommu_enabled


def test_real_kernel_facts() -> None:
    """Captured from this machine (1 node, 2 CPUs, SMT off, no cpufreq, nested /dev/kvm)."""
    facts = parse_host_facts(fixture("host-real-debian12-2cpu.txt"), "/")
    assert (facts.sockets, facts.cores_per_socket, facts.threads_per_core) == (1, 2, 1)
    assert facts.nodes == {0: frozenset({0, 1})} and facts.node_mem_kb == {0: 4810524}
    assert facts.l3_kb == {0: 32768} and facts.smt_active is False and facts.kvm


def test_sysroot_prefix_is_stripped() -> None:
    text = fixture("host-spec-2x18x2.txt").replace("/sys/", "/tmp/root x/sys/").replace("/proc/", "/tmp/root x/proc/")
    assert parse_host_facts(text, "/tmp/root x") == parse_host_facts(fixture("host-spec-2x18x2.txt"), "/")


def test_spec_facts_match_hv1(hv1: Host) -> None:
    checks = topology_checks(hv1, parse_host_facts(fixture("host-spec-2x18x2.txt"), "/"))
    assert [c.name for c in checks if not c.ok] == []
    names = [c.name for c in checks]
    assert names[:6] == ["virtualization flag", "/dev/kvm", "sockets", "cores per socket", "threads per core",
                         "SMT active"]
    assert "node 1 CPUs" in names and "socket 1 L3" in names and names[-2:] == ["IOMMU", "BIOS"]


def test_real_kernel_differs_from_hv1_row_by_row(hv1: Host) -> None:
    checks = {c.name: c for c in topology_checks(hv1, parse_host_facts(fixture("host-real-debian12-2cpu.txt"), "/"))}
    assert (checks["sockets"].found, checks["sockets"].ok) == ("1", False)
    assert (checks["node 1 CPUs"].expected, checks["node 1 CPUs"].found) == ("18-35,54-71", "missing")
    assert (checks["socket 0 L3"].expected, checks["socket 0 L3"].found) == ("45 MB", "32 MB")


def test_missing_vmx_is_a_warning_under_tcg(hv1: Host) -> None:
    facts = parse_host_facts(fixture("host-spec-2x18x2.txt"), "/")
    no_virt = HostFacts(**{**facts.__dict__, "virt_flags": (), "kvm": False})
    kvm_checks = {c.name: c for c in topology_checks(hv1, no_virt)}
    assert not kvm_checks["virtualization flag"].ok and kvm_checks["virtualization flag"].found == "missing"
    tcg = hv1.model_copy(update={"virt_type": "qemu"})
    tcg_checks = {c.name: c for c in topology_checks(tcg, no_virt)}
    assert tcg_checks["virtualization flag"].ok and "TCG: warning" in tcg_checks["virtualization flag"].found
    assert tcg_checks["virtualization flag"].kind == "warning"  # accepted, never counted as passed
    assert virtualization_warnings(tcg, no_virt) == [
        "VT-x/AMD-V flag and /dev/kvm missing: fine for TCG guests (virt_type: qemu), far too slow for production"]
    assert virtualization_warnings(hv1, no_virt) == []


def test_tune_facts_of_an_untuned_spec_host() -> None:
    facts = parse_tune_facts(fixture("tune-spec-2x18x2.txt"), "/")
    assert len(facts.governors) == 72 and set(facts.governors.values()) == {"powersave"}
    assert (facts.numa_balancing, facts.thp_enabled, facts.thp_defrag) == ("1", "madvise", "madvise")
    assert facts.sysctl_file == "" and facts.tmpfiles_file == ""


def test_tune_facts_of_the_real_kernel() -> None:
    facts = parse_tune_facts(fixture("tune-real-debian12-2cpu.txt"), "/")
    assert facts.governors == {}
    assert (facts.numa_balancing, facts.thp_enabled, facts.thp_defrag) == ("0", "madvise", "madvise")


def test_tune_plan_for_an_untuned_host_lists_every_change(hv1: Host) -> None:
    plan = plan_tuning(hv1, parse_tune_facts(fixture("tune-spec-2x18x2.txt"), "/"))
    shown = [a.shown for a in plan.actions]
    assert shown == [
        "for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do [ -e \"$f\" ] && "
        "echo performance > \"$f\"; done; true",
        "echo 0 > /proc/sys/kernel/numa_balancing",
        "echo always > /sys/kernel/mm/transparent_hugepage/enabled",
        "echo always > /sys/kernel/mm/transparent_hugepage/defrag",
        # Written beside, then renamed into place.
        f"mkdir -p /etc/sysctl.d && printf %s '{sysctl_content(hv1)}' > {SYSCTL_FILE}.tmp && "
        f"chown 0:0 {SYSCTL_FILE}.tmp && chmod 644 {SYSCTL_FILE}.tmp && mv -f {SYSCTL_FILE}.tmp {SYSCTL_FILE}",
        f"mkdir -p /etc/tmpfiles.d && printf %s '{tmpfiles_content(hv1)}' > {TMPFILES_FILE}.tmp && "
        f"chown 0:0 {TMPFILES_FILE}.tmp && chmod 644 {TMPFILES_FILE}.tmp && mv -f {TMPFILES_FILE}.tmp {TMPFILES_FILE}",
    ]
    assert plan.reason.startswith("governor -> performance on CPUs 0-71; numa_balancing 1 -> 0")


def test_tune_plan_is_empty_when_tuned(hv1: Host) -> None:
    tuned = TuneFacts({c: "performance" for c in range(72)}, "0", "always", "always", sysctl_content(hv1),
                      tmpfiles_content(hv1))
    plan = plan_tuning(hv1, tuned)
    assert plan.empty and "already as the spec says" in plan.reason
    assert all(c.ok for c in tuning_checks(hv1, tuned))


def test_tune_plan_only_fixes_what_differs(hv1: Host) -> None:
    facts = TuneFacts({0: "performance", 1: "powersave"}, "0", "always", "never", sysctl_content(hv1),
                      "stale")
    plan = plan_tuning(hv1, facts)
    assert plan.reason == "governor -> performance on CPUs 1; THP defrag never -> always; update " + TMPFILES_FILE
    checks = {c.name: c for c in tuning_checks(hv1, facts)}
    assert checks["CPU governor"].found == "powersave on CPUs 1"
    assert checks[f"persisted {TMPFILES_FILE}"].found == "differs"


def test_no_cpufreq_is_not_available_not_failed(hv1: Host) -> None:
    facts = parse_tune_facts(fixture("tune-amd-1x8x2-nocpufreq.txt"), "/")
    (gov, *_) = tuning_checks(hv1, facts)
    assert gov.ok and gov.found == "not available (no cpufreq on this host)"
    assert gov.kind == "warning"


def test_offline_plan_writes_everything(hv1: Host) -> None:
    plan = plan_tuning(hv1, None)
    assert len(plan.actions) == 6


def test_persisted_files_are_what_boot_needs(hv1: Host) -> None:
    assert "kernel.numa_balancing = 0" in sysctl_content(hv1).splitlines()
    lines = [line for line in tmpfiles_content(hv1).splitlines() if not line.startswith("#")]
    assert lines == ["w /sys/kernel/mm/transparent_hugepage/enabled - - - - always",
                     "w /sys/kernel/mm/transparent_hugepage/defrag - - - - always",
                     "w /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor - - - - performance",
                     # hv1's hugepages per node and the IRQ default affinity (the host CPUs), at boot too
                     "w /sys/devices/system/node/node0/hugepages/hugepages-1048576kB/nr_hugepages - - - - 118",
                     "w /sys/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages - - - - 116",
                     "w /proc/irq/default_smp_affinity - - - - 000000c0,0030000c,00030000"]


def test_fixture_dir_is_complete() -> None:
    assert {p.name for p in FIXTURES.iterdir()} >= {"host-spec-2x18x2.txt", "tune-spec-2x18x2.txt",
                                                     "host-real-debian12-2cpu.txt"}
    assert Path(FIXTURES / "host-spec-2x18x2.txt").read_text().count("thread_siblings_list") == 72
