"""`invoke status` and `invoke monitor --watch` through the real CLI on tests/test_vms_lab.py's running
tiny guests (real libvirt, real QEMU, real sshd): called from that test while its guests run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.harness.world import World
from tests.inventory_helpers import REPO


def invoke(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INVOKE_HOSTS_DIR": str(world.hosts), "INVOKE_RUNS_DIR": str(world.runs)}
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), *args], check=False,
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=180)


def status_shows_the_moved_pin(world: World, a: str, b: str) -> None:
    """b's vCPU 0 was moved to CPU 0 by hand; a is as the inventory says."""
    runs_before = sorted(world.runs.rglob("run.json"))
    out = invoke(world, "status", "--host=lab")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["host", "vm", "state", "pins", "memory", "node", "k3s", "Ready", "taints"]
    rows = {line.split()[1]: line for line in lines[1:]}
    assert set(rows) == {a, b}  # one row per VM, nothing else
    assert rows[a].split() == ["lab", a, "running", "ok", "0", "strict", "-", "-"]
    assert "drifted (1: vcpupin 0 on 0, want 1)" in rows[b]
    data = json.loads(invoke(world, "status", "--host=lab", "--json").stdout)
    assert [(r["vm"], r["pins"] == "ok", r["ok"]) for r in data] == [(a, True, True), (b, False, False)]
    assert sorted(world.runs.rglob("run.json")) == runs_before  # a glance leaves no run records


def watch_marks_breaches_in_text(world: World) -> None:
    """Two plain samples (not a TTY): each line timestamped, a breach written as BREACH, exit 5 exactly
    when one was seen, and no run directory per sample."""
    runs_before = sorted(world.runs.rglob("run.json"))
    out = invoke(world, "monitor", "--host=lab", "--watch", "--count=2", "--interval=1")
    lines = out.stdout.splitlines()
    stamps = {line.split()[0] for line in lines}
    assert len(stamps) == 2 and all(s.endswith("Z") and "T" in s for s in stamps), lines[:3]
    # "n/a": a value the host cannot give (perf's LLC counters under TCG), its own state, never "ok" (issue 29).
    assert all(line.endswith(("| ok", "| BREACH", "| n/a")) for line in lines), lines
    assert not any("not available" in line and line.endswith("| ok") for line in lines), lines
    breached = any(line.endswith("| BREACH") for line in lines)
    assert out.returncode == (5 if breached else 0), out.stderr
    assert "\x1b[" not in out.stdout  # plain text when not on a terminal
    assert sorted(world.runs.rglob("run.json")) == runs_before
