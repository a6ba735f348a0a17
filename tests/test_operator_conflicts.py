"""Errors that point at the operator's change (issue #30): a pin added to VM3 that VM4 already has names
both VMs and both fields, and `topology` draws the invalid inventory with the clashing CPU marked,
then exits 2 with the same errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from lib.inventory.draft import conflict_cpus, load_despite_rules
from tests.inventory_helpers import HOSTS, REPO


def _hosts_with_vm3_on_cpu_28(tmp: Path) -> Path:
    hosts = tmp / "hosts"
    hosts.mkdir()
    (hosts / "defaults.yaml").write_text((HOSTS / "defaults.yaml").read_text())
    data = yaml.safe_load((HOSTS / "hv1.yaml").read_text())
    assert data["vms"][3]["tuning"]["vcpu_pins"][0] == "28"  # VM4's vCPU 0
    data["vms"][2]["tuning"]["vcpu_pins"][7] = "28"  # the operator's change: VM3's last vCPU onto it
    (hosts / "hv1.yaml").write_text(yaml.safe_dump(data))
    return hosts


def _invoke(hosts: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INVOKE_HOSTS_DIR": str(hosts), "INVOKE_RUNS_DIR": str(hosts.parent / "runs")}
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), *args], check=False,
                          capture_output=True, text=True, env=env, cwd=hosts.parent, timeout=120)


def test_a_shared_pin_names_both_vms_and_both_fields(tmp_path: Path) -> None:
    out = _invoke(_hosts_with_vm3_on_cpu_28(tmp_path), "inventory.check")
    assert out.returncode == 2
    line = next(line for line in out.stderr.splitlines() if "[pins.shared]" in line)
    assert "vms[3] (k3s-server-tasks).tuning.vcpu_pins[0]" in line  # the later VM's field (the path)
    assert "vms[2] (k3s-worker-slm).tuning.vcpu_pins[7] both pin CPU 28 (change either)" in line


def test_topology_draws_an_invalid_inventory_with_the_conflict_marked_and_exits_2(tmp_path: Path) -> None:
    hosts = _hosts_with_vm3_on_cpu_28(tmp_path)
    loaded = load_despite_rules(hosts, "hv1")
    assert loaded is not None and conflict_cpus(loaded.host) == frozenset({28})
    out = _invoke(hosts, "topology", "--host=hv1")
    assert out.returncode == 2, out.stderr
    assert " 28 VM3,4!" in out.stdout  # the cell, marked in text as well as in red
    assert "conflict: CPUs 28" in out.stdout
    assert "[pins.shared]" in out.stderr and "Traceback" not in out.stderr
    valid = _invoke(HOSTS, "topology", "--host=hv1")
    assert valid.returncode == 0 and "!" not in valid.stdout.split("╭")[0]  # a valid inventory: nothing marked


def test_a_host_file_that_does_not_parse_is_not_drawn(tmp_path: Path) -> None:
    hosts = _hosts_with_vm3_on_cpu_28(tmp_path)
    (hosts / "hv1.yaml").write_text("vms: [unclosed\n")
    out = _invoke(hosts, "topology", "--host=hv1")
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
