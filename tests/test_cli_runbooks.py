"""The operator's runbook commands through the real `invoke` CLI against real sshd test hosts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lib.runbook import load_runbook
from lib.steps.registry import REGISTRY
from tests.harness.inventory import ssh_of, write_host
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.sysfs import HostShape, write_tree
from tests.inventory_helpers import REPO


class Cli:
    def __init__(self, tmp: Path, host: SshHost) -> None:
        self.tmp, self.host = tmp, host
        self.hosts = tmp / "hosts"
        self.runs = tmp / "runs"

    def write(self, shape: HostShape, **extra: Any) -> Path:
        sysroot = write_tree(self.tmp / "sysroot", shape)
        write_host(self.hosts, "hv1", self.host, sysroot=sysroot, **extra)
        return sysroot

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, INVOKE_HOSTS_DIR=str(self.hosts), INVOKE_RUNS_DIR=str(self.runs))
        return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), *args], check=False,
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


@pytest.fixture
def cli(tmp_path: Path, sshd_farm: SshdFarm) -> Iterator[Cli]:
    host = sshd_farm.start(f"cli-{tmp_path.name[-12:]}")
    yield Cli(tmp_path, host)
    sshd_farm.stop(host.name)


def recap_line(out: str) -> str:
    """hv1's PLAY RECAP line with its padding squeezed: 'hv1 : ok=1 changed=0 failed=0 skipped=0 wall 0.2s'."""
    return " ".join(next(line for line in out.splitlines() if line.startswith("hv1 ") and " : ok=" in line).split())


def test_steps_lists_the_provision_runbook() -> None:
    out = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), "steps"], check=False,
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    names = yaml.safe_load((REPO / "runbooks" / "provision.yaml").read_text())["steps"]
    assert [line.split()[1] for line in lines[1:len(names) + 1]] == names  # the runbook's order
    assert lines[1].split()[:3] == ["1.", "preflight.access", "hypervisor"]
    assert lines[2].split()[:2] == ["2.", "bios.check"] and lines[3].split()[:2] == ["3.", "host.tune"]
    assert [line.split()[2] for line in lines[1:len(names) + 1] if line.split()[1] == "images.clone"] == ["vms"]


def test_step_bios_check_ok_then_verify_bios(cli: Cli) -> None:
    cli.write(HostShape())
    out = cli("step", "bios.check", "--host=hv1")
    assert out.returncode == 0, out.stderr
    assert "ok=1 changed=0 failed=0 skipped=0" in recap_line(out.stdout)
    verify = cli("verify.bios", "--host=hv1")
    assert verify.returncode == 0, verify.stderr


def test_bios_mismatch_exit_3_with_table_and_resume_command(cli: Cli) -> None:
    sysroot = cli.write(HostShape(sockets=1, cores_per_socket=36))
    before = sorted((p, p.stat().st_mtime_ns) for p in sysroot.rglob("*") if p.is_file())
    out = cli("provision", "--host=hv1")
    assert out.returncode == 3, out.stdout + out.stderr
    err = out.stderr
    assert "hv1: FAILED (exit 3)" in err and "step bios.check on hv1" in err
    row = next(line for line in err.splitlines() if " sockets " in line)
    assert row.split() == ["✗", "sockets", "2", "1"]
    assert "resume: invoke provision --host=hv1 --resume" in err
    assert "Traceback" not in err + out.stdout
    assert sorted((p, p.stat().st_mtime_ns) for p in sysroot.rglob("*") if p.is_file()) == before
    assert "host.tune" not in out.stdout  # stopped before anything changed


def test_step_host_tune_changed_then_ok(cli: Cli) -> None:
    sysroot = cli.write(HostShape())
    first = cli("step", "host.tune", "--host=hv1")
    assert first.returncode == 0, first.stderr
    assert "ok=0 changed=1" in recap_line(first.stdout)
    second = cli("step", "host.tune", "--host=hv1")
    assert second.returncode == 0, second.stderr
    assert "ok=1 changed=0" in recap_line(second.stdout)
    assert "already as the spec says" in second.stdout
    assert (sysroot / "proc/sys/kernel/numa_balancing").read_text().strip() == "0"
    assert cli("verify.tuning", "--host=hv1").returncode == 0


def test_provision_runs_the_runbook_and_plan_shows_nothing_left(cli: Cli) -> None:
    cli.write(HostShape())
    plan = cli("plan", "--host=hv1")
    assert plan.returncode == 0, plan.stderr
    assert "hv1 | host.tune | hv1: would run (" in plan.stdout
    assert "echo performance" in plan.stdout
    out = cli("provision", "--host=hv1")
    assert out.returncode == 0, out.stderr
    # preflight, bios, host.isolation and host.reboot (off), vms.unmanaged; host.tune
    assert "ok=5 changed=1 failed=0" in recap_line(out.stdout)
    assert "STEP TIMES" in out.stdout
    again = cli("plan", "--host=hv1")
    assert "hv1 | host.tune | hv1: no change: " in again.stdout


def test_offline_plan_needs_no_host(cli: Cli) -> None:
    sysroot = cli.write(HostShape())
    data = yaml.safe_load((cli.hosts / "hv1.yaml").read_text())
    data["ssh"] = ssh_of(cli.host) | {"port": 1}  # nothing listens on port 1
    (cli.hosts / "hv1.yaml").write_text(yaml.safe_dump(data))
    out = cli("plan", "--host=hv1", "--offline")
    assert out.returncode == 0, out.stderr
    assert f"echo 0 > {sysroot}/proc/sys/kernel/numa_balancing" in out.stdout


def test_resume_after_a_failure(cli: Cli) -> None:
    cli.write(HostShape(), tuning={"cpu_governor": "performance", "numa_balancing": 0, "thp_enabled": "always",
                                   "thp_defrag": "always"})
    sysroot = cli.tmp / "sysroot"
    # host.tune cannot write THP: the file is replaced by a directory
    thp = sysroot / "sys/kernel/mm/transparent_hugepage/enabled"
    thp.unlink()
    thp.mkdir()
    failed = cli("provision", "--host=hv1")
    assert failed.returncode == 4, failed.stdout + failed.stderr
    assert "step host.tune on hv1" in failed.stderr and "Is a directory" in failed.stderr
    assert "resume: invoke provision --host=hv1 --resume" in failed.stderr
    thp.rmdir()
    thp.write_text("always [madvise] never\n")
    resumed = cli("provision", "--host=hv1", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "hv1 | bios.check | hv1 | skipped | " in resumed.stdout
    assert "verified in run" in resumed.stdout
    # preflight.access and bios.check carried over; the VM steps have no VMs on this host
    vm_steps = sum(step.targets != "hypervisor" for step in load_runbook(REPO / "runbooks/provision.yaml",
                                                                          REGISTRY).steps)
    # ok: host.isolation and host.reboot (isolation off), vms.unmanaged; changed: host.tune
    assert f"ok=3 changed=1 failed=0 skipped={2 + vm_steps}" in recap_line(resumed.stdout)
    assert "hv1 | images.clone | hv1 | skipped | 0.00s | no vms targets on this host" in resumed.stdout


def test_bad_flags_are_one_line(cli: Cli) -> None:
    cli.write(HostShape())
    out = cli("provision", "--host=hv1", "--only=bios.chek")
    assert out.returncode == 2
    assert "--only: 'bios.chek' not in runbook provision" in out.stderr
    assert "Traceback" not in out.stderr
    unknown = cli("step", "no.such", "--host=hv1")
    assert unknown.returncode == 2 and "unknown step 'no.such'; known steps: " in unknown.stderr
