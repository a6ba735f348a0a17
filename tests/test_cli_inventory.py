"""The operator's commands through the real `invoke` CLI: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.inventory_helpers import REPO, mutated, write_inventory

INVOKE = [sys.executable, "-m", "invoke", "--search-root", str(REPO)]


def run(*args: str, hosts: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if hosts is not None:
        env["INVOKE_HOSTS_DIR"] = str(hosts)
    return subprocess.run([*INVOKE, *args], check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)


def test_check_passes_on_the_repo_hosts() -> None:
    out = run("inventory.check")
    assert out.returncode == 0, out.stderr
    # hv1's four keys are the spec's placeholder: a warning for a command that only reads (#26)
    assert "hv1: ok (hosts/hv1.yaml: 4 VMs, 64 vCPUs pinned, 4 warnings)" in out.stdout


def test_check_fails_with_exit_2_rule_and_path(tmp_path: Path) -> None:
    def bad(d: dict[str, object]) -> None:
        d["vms"][1]["tuning"]["vcpu_pins"][3] = "40"  # type: ignore[index]

    out = run("inventory.check", hosts=write_inventory(tmp_path, mutated(bad)))
    assert out.returncode == 2
    assert (f"ERROR [pins.numa] {tmp_path}/hosts/hv1.yaml: vms[1] (k3s-worker-data).tuning.vcpu_pins[3]: CPU 40 is "
            "on NUMA node 0, "
            "but numa_memory.nodeset is 1") in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


@pytest.mark.parametrize(("content", "expect"), [
    ("vms: [\n", "[yaml.syntax]"),
    ("42\n", "[yaml.not-mapping]"),
])
def test_bad_files_are_one_clear_line(tmp_path: Path, content: str, expect: str) -> None:
    hosts = write_inventory(tmp_path)
    (hosts / "hv1.yaml").write_text(content)
    out = run("inventory.check", hosts=hosts)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and expect in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_host_is_one_clear_line() -> None:
    out = run("topology", "--host=hv9")
    assert out.returncode == 2
    assert out.stderr.strip() == "ERROR [host.unknown] hosts: unknown host 'hv9'; hosts has hv1, lab, numalab"
    assert "Traceback" not in out.stderr


def test_topology_picture_and_svg(tmp_path: Path) -> None:
    svg = tmp_path / "hv1.svg"
    out = run("topology", "--host=hv1", f"--svg={svg}")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "socket 0 · NUMA node 0 · CPUs 0-17,36-53" in text
    assert "socket 1 · NUMA node 1 · CPUs 18-35,54-71" in text
    # core 16 of socket 0 holds VM1's emulator threads; core 16 of socket 1 those of VM2, VM3 and VM4
    assert " 16 E1 " in text and " 52 E1 " in text and " 34 E2,3,4 " in text
    assert "E2,3,4  emulator threads of VM2, VM3, VM4: CPUs 34-35,70-71" in text
    assert "VM1 118 GiB + host 4 GiB = 122 GiB of 128 GiB" in text
    assert svg.read_text().lstrip().startswith("<svg")
    assert "k3s-worker-slm-heavy" in svg.read_text().replace("&#160;", " ")


def test_pins_show_given_and_planner_agrees() -> None:
    out = run("pins", "--host=hv1", "--replan")
    assert out.returncode == 0, out.stderr
    pins_table = out.stdout.split("what each domain carries")[0]  # the settings table (#20) follows it
    rows = [line for line in pins_table.splitlines() if "k3s-" in line]
    assert len(rows) == 4 and all("same" in row and "given" in row for row in rows)
    assert "18 54 19 55 20 56 21 57 22 58 23 59" in out.stdout


def test_missing_inventory_dir_is_one_clear_line(tmp_path: Path) -> None:
    out = run("inventory.check", hosts=tmp_path / "nope")
    assert out.returncode == 2
    assert out.stderr.strip() == f"ERROR [file.missing] {tmp_path / 'nope'}: inventory directory not found"
