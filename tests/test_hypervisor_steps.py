"""bios.check and host.tune over real sshd against generated sysroots (and this machine's own /sys)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lib.cpuset import parse_cpulist
from lib.facts.host import host_facts_command, parse_host_facts
from lib.remote import Endpoint, Session
from lib.retry import Policies
from tests.harness.inventory import write_host
from tests.harness.sshd import SshHost
from tests.harness.sysfs import HostShape, write_tree
from tests.harness.world import World

MakeRoot = Callable[[HostShape], Path]


@pytest.fixture
def root(tmp_path: Path) -> MakeRoot:
    def make(shape: HostShape) -> Path:
        return write_tree(tmp_path / "sysroot", shape)

    return make


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_spec_host_passes_bios_check_in_one_round_trip(world: World, hv: SshHost, root: MakeRoot) -> None:
    write_host(world.hosts, "hv1", hv, sysroot=root(HostShape()))
    (run,) = world.run("bios.check")
    (result,) = run.results
    assert result.status == "ok", result.checks
    assert result.reason == "read-only check"
    # verify.bios: one remote command reads ~800 sysfs files (provision adds only the lock's two).
    (check,) = world.run("bios.check", mode="verify")
    assert check.results[0].status == "ok"
    log = (world.runs / "hv1" / check.run_id / "run.log").read_text()
    assert log.count("$ ") == 1


@pytest.mark.parametrize(("shape", "row", "expected", "found"), [
    (HostShape(sockets=1, cores_per_socket=36), "sockets", "2", "1"),
    (HostShape(smt_active=False), "SMT active", "yes", "no"),
    (HostShape(drop_nodes=(1,)), "node 1 CPUs", "18-35,54-71", "missing"),
    (HostShape(node_cpus_override={1: "18-33,54-69"}), "node 1 CPUs", "18-35,54-71", "18-33,54-69"),
    (HostShape(vendor_flag=None), "virtualization flag", "vmx or svm", "missing"),
], ids=["one-socket", "smt-off", "missing-node", "short-node", "no-vmx"])
def test_mismatched_host_fails_bios_check_with_exit_3(world: World, hv: SshHost, root: MakeRoot, shape: HostShape,
                                                      row: str, expected: str, found: str) -> None:
    sysroot = root(shape)
    write_host(world.hosts, "hv1", hv, sysroot=sysroot)
    before = snapshot(sysroot)
    (run,) = world.run("bios.check", "host.tune")
    assert run.exit_code == 3
    (result,) = run.results  # host.tune never ran
    assert result.status == "failed" and result.step == "bios.check"
    bad = {c.name: c for c in result.checks if not c.ok}
    assert row in bad, bad
    assert (bad[row].expected, bad[row].found) == (expected, found)
    assert snapshot(sysroot) == before  # nothing changed


def test_tcg_host_without_vmx_warns_and_passes(world: World, hv: SshHost, root: MakeRoot) -> None:
    write_host(world.hosts, "hv1", hv, sysroot=root(HostShape(vendor_flag=None)), virt_type="qemu")
    (run,) = world.run("bios.check")
    (result,) = run.results
    assert result.status == "ok"
    assert result.warnings and "TCG" in result.warnings[0]


def test_tune_sets_every_governor_and_persists_then_changes_nothing(world: World, hv: SshHost,
                                                                   root: MakeRoot) -> None:
    sysroot = root(HostShape())
    write_host(world.hosts, "hv1", hv, sysroot=sysroot)
    (first,) = world.run("host.tune")
    assert [r.status for r in first.results] == ["changed"], first.results[0].error
    governors = sorted(sysroot.glob("sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor"))
    assert len(governors) == 72 and {g.read_text().strip() for g in governors} == {"performance"}
    assert (sysroot / "proc/sys/kernel/numa_balancing").read_text().strip() == "0"
    assert (sysroot / "sys/kernel/mm/transparent_hugepage/enabled").read_text().strip() == "always"
    assert (sysroot / "sys/kernel/mm/transparent_hugepage/defrag").read_text().strip() == "always"
    assert "kernel.numa_balancing = 0" in (sysroot / "etc/sysctl.d/90-numa-k3s.conf").read_text()
    tmpfiles = (sysroot / "etc/tmpfiles.d/numa-k3s.conf").read_text()
    assert "w /sys/kernel/mm/transparent_hugepage/defrag - - - - always" in tmpfiles
    assert all(c.ok for c in first.results[0].checks)

    before = snapshot(sysroot)
    (second,) = world.run("host.tune")
    (result,) = second.results
    assert result.status == "ok" and result.commands == ()
    assert "already as the spec says" in result.reason
    assert snapshot(sysroot) == before


def test_verification_reads_the_persisted_files(world: World, hv: SshHost, root: MakeRoot) -> None:
    sysroot = root(HostShape())
    write_host(world.hosts, "hv1", hv, sysroot=sysroot)
    world.run("host.tune")
    (sysroot / "etc/sysctl.d/90-numa-k3s.conf").write_text("kernel.numa_balancing = 1\n")
    (run,) = world.run("host.tune", mode="verify")
    (result,) = run.results
    assert result.status == "failed" and run.exit_code == 5
    bad = [c for c in result.checks if not c.ok]
    assert [(c.name, c.found) for c in bad] == [("persisted /etc/sysctl.d/90-numa-k3s.conf", "differs")]
    assert (sysroot / "etc/sysctl.d/90-numa-k3s.conf").read_text() == "kernel.numa_balancing = 1\n"  # verify-only


def test_tune_without_cpufreq_reports_not_available(world: World, hv: SshHost, root: MakeRoot) -> None:
    write_host(world.hosts, "hv1", hv, sysroot=root(HostShape(cpufreq=False)))
    (run,) = world.run("host.tune")
    (result,) = run.results
    assert result.status == "changed"
    assert result.checks[0].found == "not available (no cpufreq on this host)" and result.checks[0].ok
    assert result.checks[0].kind == "warning"


def test_bios_and_tuning_verification_cost_one_command_each(hv: SshHost, root: MakeRoot) -> None:
    sysroot = root(HostShape())
    ep = Endpoint("hv1", hv.host, hv.port, hv.user, str(hv.key_file), str(hv.known_hosts))
    session = Session(ep, Policies())
    from lib.steps.tuning import parse_tune_facts, tune_facts_command

    try:
        facts = parse_host_facts(session.run(host_facts_command(str(sysroot))).stdout, str(sysroot))
        tune = parse_tune_facts(session.run(tune_facts_command(str(sysroot))).stdout, str(sysroot))
    finally:
        session.close()
    assert session.commands_run == 2 and session.connects == 1
    assert len(facts.cpus) == 72 and len(tune.governors) == 72


def test_topology_facts_agree_with_lscpu_on_this_machine(hv: SshHost) -> None:
    """The parser against the real kernel's /sys (sysroot /), checked by util-linux."""
    lscpu = shutil.which("lscpu") or "/usr/bin/lscpu"  # util-linux is essential on Debian
    ep = Endpoint("self", hv.host, hv.port, hv.user, str(hv.key_file), str(hv.known_hosts))
    session = Session(ep, Policies())
    try:
        facts = parse_host_facts(session.run(host_facts_command("/")).stdout, "/")
    finally:
        session.close()
    fields = {f["field"].rstrip(":"): f.get("data") for f in
              json.loads(subprocess.run([lscpu, "-J"], capture_output=True, text=True, check=True).stdout)["lscpu"]}
    assert facts.sockets == int(fields["Socket(s)"])
    assert facts.cores_per_socket == int(fields["Core(s) per socket"])
    assert facts.threads_per_core == int(fields["Thread(s) per core"])
    assert len(facts.online) == int(fields["CPU(s)"]) == os.cpu_count()
    for node, cpus in facts.nodes.items():
        assert parse_cpulist(fields[f"NUMA node{node} CPU(s)"]) == cpus
    assert len(facts.nodes) == int(fields["NUMA node(s)"])
