"""One verdict (issue 29): doctor, verify, monitor and the recap classify a finding from lib/verdicts.py.

The doctor cases are the ones `make numa-lab` met: rcu_preempt and khugepaged ran on vCPU CPUs in
doctor's 1 s window, and doctor exited 5 where verify.tuning said "warning"."""

from __future__ import annotations

import io
import json

from lib import verdicts
from lib.confine import parse_confine_facts
from lib.monitor.show import show_findings, show_runs
from lib.output import recap
from lib.results import Check, HostRun, StepResult
from lib.steps.observe import host_work_findings
from tests.test_host_confinement import hv1_host, stat_line

KTHREAD = 69238880  # flags with PF_KTHREAD, as a Linux 6.1 kernel thread's


def _doctor_run(host_work: str) -> list[HostRun]:
    host = hv1_host()
    findings = host_work_findings(host, parse_confine_facts(host_work, 1.0))
    checks = tuple(Check(f.symptom, f.fix, f.evidence, f.ok, f.outcome) for f in findings)
    return [HostRun("hv1", "r", "doctor", "verify", 0.0, 1.0,
                    [StepResult("hv1", "doctor", "hv1", "ok", 0.0, 1.0, checks=checks)])]


def test_kernel_threads_on_vcpu_cpus_are_a_doctor_warning_not_a_problem() -> None:
    text = ("@@qemu@@\n\n@@tasks1@@\n" + f"16 {stat_line(16, 'rcu_preempt', 3, 37, KTHREAD)}\n"
            f"90 {stat_line(90, 'khugepaged', 1, 12, KTHREAD)}\n@@tasks2@@\n"
            f"16 {stat_line(16, 'rcu_preempt', 4, 37, KTHREAD)}\n90 {stat_line(90, 'khugepaged', 2, 12, KTHREAD)}\n")
    out = io.StringIO()
    assert show_findings(_doctor_run(text), out=out) is False  # doctor exits 0
    text_out = out.getvalue()
    assert "WARNING hv1: host: kernel threads on vCPU CPUs" in text_out and "rcu_preempt" in text_out
    assert "tuning.kernel_isolation" in text_out  # the way to keep them off, though no step fixes it now
    assert "no problems found (1 warning(s)" in text_out


def test_a_host_process_on_a_vcpu_cpu_is_still_a_problem() -> None:
    text = ("@@qemu@@\n\n@@tasks1@@\n" + f"40 {stat_line(40, 'cron', 1, 3)}\n@@tasks2@@\n"
            f"40 {stat_line(40, 'cron', 9, 3)}\n")
    out = io.StringIO()
    assert show_findings(_doctor_run(text), out=out) is True
    assert "PROBLEM hv1: host: host tasks on vCPU CPUs" in out.getvalue()
    assert "fix: invoke step host.tune" in out.getvalue()


def test_a_fix_the_inventory_rules_out_names_the_field_instead() -> None:
    host = hv1_host()
    off = host.model_copy(update={"tuning": host.tuning.model_copy(update={"cpu_governor": "powersave"})})
    assert verdicts.GOVERNOR.advice(host) == verdicts.GOVERNOR.fix
    advice = verdicts.GOVERNOR.advice(off)
    assert "tuning.cpu_governor" in advice and "host.tune" not in advice
    assert verdicts.GOVERNOR.outcome(off, True) == "warning" and verdicts.GOVERNOR.outcome(host, True) == "failed"
    assert verdicts.KERNEL_WORK.outcome(host, True) == "warning"


def test_not_available_is_its_own_state_in_monitor_views() -> None:
    rows = (Check.warn("LLC loads / misses", "counted", "not available (perf cannot count LLC here)"),
            Check.evidence("LLC occupancy (resctrl)", "not available (no resctrl group)"),
            Check("emulator load", "< 50% of CPUs 0", "12.0%", True))
    runs = [HostRun("hv1", "r", "monitor", "verify", 0.0, 1.0,
                    [StepResult("hv1", "monitor.sample", "vm-a", "ok", 0.0, 1.0, checks=rows)])]
    out = io.StringIO()
    show_runs(runs, as_json=True, out=out)
    data = json.loads(out.getvalue())["hv1"]["vm-a"]
    assert data["LLC loads / misses"]["ok"] is None and data["LLC occupancy (resctrl)"]["ok"] is None
    assert data["emulator load"]["ok"] is True
    assert [verdicts.state(c) for c in rows] == ["not available", "not available", "ok"]
    table = io.StringIO()
    show_runs(runs, out=table)
    assert "N/A" in table.getvalue() and "BREACH" not in table.getvalue()


def test_recap_lists_each_warning_with_host_step_name_and_found() -> None:
    warn = Check.warn("kernel threads on vCPU CPUs 1 over 1s", "none", "rcu_preempt (pid 16 tid 16) on CPU 1")
    run = HostRun("hv1", "r", "verify-all", "verify", 0.0, 1.0,
                  [StepResult("hv1", "host.tune", "hv1", "ok", 0.0, 1.0, checks=(warn,))])
    lines = [line.strip() for line in recap([run], ["host.tune"]).splitlines()]
    at = lines.index("! hv1 | host.tune | hv1 | kernel threads on vCPU CPUs 1 over 1s")
    assert lines[at + 1] == "found: rcu_preempt (pid 16 tid 16) on CPU 1"
    long = Check.warn("kernel threads", "none", "kworker/u145:3 on CPU 12, " * 10)
    text = recap([HostRun("hv1", "r", "verify-all", "verify", 0.0, 1.0, [StepResult(
        "hv1", "host.tune", "hv1", "ok", 0.0, 1.0, checks=(long,))])], [])
    assert max(len(line) for line in text.splitlines()) <= 80 and "found: kworker/u145:3 on CPU 12" in text


def test_watch_lines_mark_not_available_apart_from_ok_and_breach() -> None:
    from lib.monitor.watch import plain_sample

    rows = (Check.warn("LLC loads / misses", "counted", "not available (perf cannot count LLC here)"),
            Check("emulator load", "< 50% of CPUs 0", "72.0%", False),
            Check("remote memory", "< 1.00% off node(s) 0", "0.00%", True))
    runs = [HostRun("hv1", "r", "monitor", "verify", 0.0, 1.0,
                    [StepResult("hv1", "monitor.sample", "vm-a", "ok", 0.0, 1.0, checks=rows)])]
    marks = [line.rsplit("| ", 1)[1] for line in plain_sample(runs, "2026-12-06T00:00:00Z").splitlines()]
    assert marks == ["n/a", "BREACH", "ok"]
