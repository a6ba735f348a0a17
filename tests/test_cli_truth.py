"""Read-only commands tell the truth through the real `invoke` CLI: a host with nothing listening is
never "no problems found", an empty table or `{}`; each names the host, exits non-zero, and prints
where its records are; only runs that change hosts print a resume hint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness.inventory import small_vm, write_host
from tests.harness.sshd import SshdFarm
from tests.inventory_helpers import REPO


@pytest.fixture
def dead(tmp_path: Path, sshd_farm: SshdFarm) -> Path:
    """hosts/hv1.yaml (one VM) pointing at a port where nothing listens any more."""
    host = sshd_farm.start(f"dead-{tmp_path.name[-12:]}")
    write_host(tmp_path / "hosts", "hv1", host, vms=[small_vm("vm0", 0, host, role="server")])
    sshd_farm.stop(host.name)
    # One connect attempt: the test is about what is reported, not about waiting.
    (tmp_path / "invoke.yaml").write_text(yaml.safe_dump({"retries": {"ssh_connect": {"attempts": 1}}}))
    return tmp_path


def invoke(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, INVOKE_HOSTS_DIR=str(tmp / "hosts"), INVOKE_RUNS_DIR=str(tmp / "runs"))
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), "-f", str(tmp / "invoke.yaml"),
                           *args], check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def reports(tmp: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((tmp / "runs").glob("hv1/*/report.json"))]


def test_doctor_against_a_host_with_nothing_listening(dead: Path) -> None:
    out = invoke(dead, "doctor", "--host=hv1")
    assert out.returncode == 4, out.stdout + out.stderr
    assert "no problems found" not in out.stdout
    assert "NOT EXAMINED hv1 (hv1): hv1: doctor on hv1: cannot connect to" in out.stdout
    assert "not examined, so there may be more" in out.stdout
    assert "hv1: doctor on hv1 could not be read" in out.stderr
    (report,) = reports(dead)
    assert report["exit_code"] == 4 and report["resume_hint"] == ""  # a read-only run resumes nothing
    assert f"records: {report['records']}" in out.stderr and Path(str(report["records"])).is_absolute()


def test_monitor_json_reports_the_error_per_host(dead: Path) -> None:
    out = invoke(dead, "monitor", "--host=hv1", "--json")
    assert out.returncode == 4, out.stdout + out.stderr
    data = json.loads(out.stdout)
    error = data["hv1"]["vm0"]["error"]
    assert error["ok"] is False and "cannot connect to" in error["value"]
    assert "hv1: monitor.sample on vm0 could not be read" in out.stderr


def test_verify_and_plan_name_the_unreachable_host_and_offer_no_resume(dead: Path) -> None:
    for args in (("verify.bios", "--host=hv1"), ("plan", "--host=hv1")):
        out = invoke(dead, *args)
        assert out.returncode == 4, out.stdout + out.stderr
        assert "hv1: FAILED (exit 4)" in out.stderr and "cannot connect to" in out.stderr
        assert "resume:" not in out.stderr and "--resume" not in out.stdout + out.stderr
        assert "records: /" in out.stderr


def test_provision_resume_hint_names_the_failed_host(dead: Path) -> None:
    out = invoke(dead, "provision", "--host=hv1")
    assert out.returncode == 4
    assert "resume: invoke provision --host=hv1 --resume" in out.stderr


def test_verify_all_help_lists_every_verification_it_runs() -> None:
    import tasks

    out = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), "--help", "verify.all"],
                         check=False, capture_output=True, text=True, cwd=REPO, timeout=60)
    text = " ".join(out.stdout.split())
    assert all(name in text for name in tasks.VERIFY_ALL)
    assert {"preflight.access", "k3s.server", "k3s.agents"} <= set(tasks.VERIFY_ALL)
    from lib.steps.registry import REGISTRY

    read_only_checks = {name for name, step in REGISTRY.items()
                        if not step.destructive and name not in ("monitor.sample", "doctor")}
    assert read_only_checks == set(tasks.VERIFY_ALL), "a verification verify.all does not run"
