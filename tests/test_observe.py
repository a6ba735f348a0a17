"""numa.check, emulator.check, monitor.sample and doctor without a host: the captured QEMU samples
(tests/fixtures/monitor, from a real TCG guest: vCPU 0 spinning on CPU 1, emulator on CPU 0) fed
through the steps' own parsing and checks, plus the hand-written two-node sample for remote memory."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from lib.inventory.model import VM
from lib.monitor import parse as mp
from lib.monitor.show import show_findings, show_runs
from lib.results import Check, HostRun, StepResult
from lib.steps.observe import (
    VmSample,
    doctor_findings,
    emulator_checks,
    emulator_percents,
    monitor_checks,
    numa_checks,
    parse_governors,
    parse_sample,
)

FIX = Path(__file__).parent / "fixtures" / "monitor"


def fixture(name: str) -> str:
    return (FIX / name).read_text()


def captured_stdout(numa_maps: str = "numa_maps.txt") -> str:
    """What sample_command prints, assembled from the files captured one command at a time."""
    parts = {
        "pid": "14219\n", "numa_maps": fixture(numa_maps), "numastat": fixture("numastat_p.txt"),
        "meminfo": fixture("numastat_m.txt"),
        "nodes": "== 0\n" + fixture("node0_numastat.1.txt"),
        "stat1": fixture("task_stat.1.txt"), "dom1": fixture("domstats_vcpu.1.txt"),
        "perf": fixture("perf_stat_llc.txt"),
        "stat2": fixture("task_stat.2.txt"), "dom2": fixture("domstats_vcpu.2.txt"),
    }
    return "".join(f"@@{k}@@\n{v}" for k, v in parts.items())


def vm(nodeset: str = "0", emulator: str = "0", pins: tuple[int, ...] = (1, 1)) -> VM:
    return VM.model_validate({
        "name": "moncap", "vcpu_count": len(pins), "memory_mb": 128, "disk_path": "/x/a.qcow2", "disk_size_gb": 1,
        "base_image_path": "/x/b.qcow2", "bridge_network_interface": "br0", "cloud_init_iso_path": "/x/s.iso",
        "tuning": {"vcpu_pins": list(pins), "emulator_cpuset": emulator,
                   "numa_memory": {"nodeset": nodeset, "mode": "strict"}}})


@pytest.fixture
def sample() -> VmSample:
    return parse_sample(captured_stdout(), 1.0, "strict")


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_captured_sample_passes_numa_and_emulator_checks(sample: VmSample) -> None:
    numa = by_name(numa_checks(vm(), sample, mp.REMOTE_SHARE_LIMIT))
    assert numa["remote memory"].found == "0.00%" and numa["remote memory"].ok
    assert numa["numatune mode"].ok and numa["host numa_miss / numa_foreign (since boot)"].found == \
        "node0 miss 0 foreign 0"
    emu = by_name(emulator_checks(vm(), sample))
    assert emu["emulator load"].ok and int(emu["emulator threads"].found) >= 2


def test_remote_memory_past_one_percent_fails(sample: VmSample) -> None:
    two_node = parse_sample(captured_stdout("numa_maps_2node.handwritten.txt"), 1.0, "preferred")
    checks = by_name(numa_checks(vm(nodeset="1"), two_node, mp.REMOTE_SHARE_LIMIT))  # mostly on node 0
    assert not checks["remote memory"].ok and checks["remote memory"].found == "99.59%"
    assert not checks["numatune mode"].ok
    assert checks["numatune mode"].found == "preferred"


def test_monitor_rows_show_the_spinning_vcpu_and_llc_not_available(sample: VmSample) -> None:
    rows = by_name(monitor_checks(vm(), sample))
    util = dict(cell.split(":") for cell in rows["vCPU utilisation"].found.split())
    assert int(util["0"].rstrip("%")) >= 90 and util["1"] == "0%"  # vCPU 0 spins, vCPU 1 never started
    assert rows["LLC loads / misses"].found.startswith("not available")
    assert rows["host memory per node (numastat -m)"].found.startswith("node0 ")


def test_doctor_names_a_busy_neighbour_and_a_slow_governor(sample: VmSample) -> None:
    ps = mp.parse_ps_threads("  PID   TID PSR %CPU COMMAND\n  777   777   1 99.0 stress\n  778   778   1  0.1 idle\n"
                             "14219 14224   1 99.0 CPU 0/TCG\n")
    findings = {f.symptom: f for f in doctor_findings(vm(), sample, ps, frozenset({14219}), {1: "powersave"})}
    delays = findings["moncap: vCPU scheduling delays"]
    assert not delays.ok
    assert delays.evidence == "governor not performance on CPUs 1; stress pid 777 on CPU 1 (99% CPU)"
    assert findings["moncap: high cross-NUMA traffic"].ok and findings["moncap: emulator CPU bottleneck"].ok
    crowded = {f.symptom: f for f in doctor_findings(vm(emulator="0-1"), sample, (), frozenset(), {})}
    assert "emulator shares vCPU cores 1" in crowded["moncap: vCPU scheduling delays"].evidence


def test_not_running_is_one_clear_row() -> None:
    empty = parse_sample("@@pid@@\n\n", 1.0, "")
    assert [c.found for c in numa_checks(vm(), empty, 0.01)] == ["not running"]


def test_governors_parsed_from_sysfs_paths() -> None:
    text = "/sys/devices/system/cpu/cpu0 performance\n/sys/devices/system/cpu/cpu12 powersave\n"
    assert parse_governors(text) == {0: "performance", 12: "powersave"}


def result(target: str, checks: tuple[Check, ...]) -> StepResult:
    return StepResult("hv1", "monitor.sample", target, "ok", 0.0, 1.0, checks=checks)


def test_monitor_json_and_table_and_doctor_text() -> None:
    runs = [HostRun("hv1", "r", "monitor", "verify", 0.0, 1.0, [
        result("vm-a", (Check("emulator load", "< 50% of CPUs 0", "72.0%", False),))])]
    out = io.StringIO()
    show_runs(runs, as_json=True, out=out)
    data: dict[str, Any] = json.loads(out.getvalue())
    assert data == {"hv1": {"vm-a": {"emulator load": {"value": 72.0, "unit": "%", "text": "72.0%",
                                                         "threshold": "< 50% of CPUs 0", "ok": False}}}}
    table = io.StringIO()
    show_runs(runs, out=table)
    assert "hv1 / vm-a" in table.getvalue() and "72.0%  BREACH" in table.getvalue()  # in text, not only red
    text = io.StringIO()
    assert show_findings(runs, out=text) is True
    assert "PROBLEM hv1: emulator load\n        evidence: 72.0%\n        fix: < 50% of CPUs 0" in text.getvalue()


def test_cpu_shares_are_over_the_measured_time_between_samples() -> None:
    """Seen on the NUMA lab's emulated host: reading the samples took ~5 s for a 1 s interval, and
    the emulator load read 499% of one CPU. The host's /proc/uptime around the samples is the divisor."""
    nominal = parse_sample(captured_stdout(), 1.0, "strict")
    slow = parse_sample(captured_stdout() + "@@up1@@\n1000.00 3.00\n@@up2@@\n1005.00 4.00\n", 1.0, "strict")
    assert slow.interval == 5.0 and nominal.interval == 1.0
    fast, measured = emulator_percents(nominal)[0], emulator_percents(slow)[0]
    assert fast and all(measured[tid] == pytest.approx(fast[tid] / 5) for tid in fast)
    broken = parse_sample(captured_stdout() + "@@up1@@\nnot a number\n@@up2@@\n1005.00 4.00\n", 2.0, "strict")
    assert broken.interval == 2.0  # unreadable clock: the nominal interval, as before
