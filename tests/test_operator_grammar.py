"""The command line's grammar (issue #30): a mistyped task or flag is a bad flag like any other (exit 2,
a did-you-mean), a selection that selects nothing and a flag that needs another are refused with why,
plan takes every flag of provision that changes what would happen, and a plan is not noise: no step
times, skipped and "restarted by" targets folded into one line per reason. Through the real CLI
(tests/test_cli_flags.py's Invoker: hosts on 127.0.0.1:1, where nothing listens).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context

import tasks
from lib.options import RunFlags
from lib.planview import PlanOutput
from lib.results import StepResult
from tests.test_cli_flags import Invoker, inv  # noqa: F401  (the fixture)


@pytest.mark.parametrize(("argv", "message"), [
    (["plna"], "unknown task 'plna' (did you mean plan?)"),
    (["verify.al", "--host=hv1"], "unknown task 'verify.al' (did you mean verify.all?)"),
    (["plan", "--hots=hv1"], "plan: unknown flag --hots (did you mean --host?)"),
    (["provision", "--host=hv1", "--restrat"], "provision: unknown flag --restrat (did you mean --restart?)"),
    (["monitor", "--count"], "monitor: --count needs a value (--count=VALUE)"),
    (["plan", "--host=hv1", "--offline", "--from=vms.define", "--only=host.tune"],
     "--from=vms.define --only=host.tune selects no step (host.tune: before --from vms.define); nothing was done"),
    (["plan", "--host=hv1", "--offline", "--only=host.tune", "--skip=host.tune"],
     "--only=host.tune --skip=host.tune selects no step (host.tune: --skip)"),
    (["monitor", "--host=hv1", "--count=3"], "--count=3 only goes with --watch"),
    (["plan", "--host=hv1", "--force-off"], "--force-off, --drain-timeout and --shutdown-timeout only go with"),
])
def test_grammar_errors_exit_2_and_say_why(inv: Invoker, argv: list[str], message: str) -> None:  # noqa: F811
    out = inv(*argv)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "No idea what" not in out.stderr
    assert not inv.runs.exists() or not any(inv.runs.rglob("run.json"))  # refused before any run


def _options(name: str) -> set[str]:
    return {arg.name for arg in tasks.ns[name].get_arguments()}


def test_plan_takes_every_flag_of_provision_that_changes_what_would_happen() -> None:
    # --host/--all choose where, --resume where to start: the rest change what provision would do.
    assert _options("provision") - {"all_", "resume"} <= _options("plan")


def test_plan_hands_the_day_two_flags_to_its_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def execute(_c: Any, _host: Any, _book: Any, mode: str, again: Any, **opts: Any) -> None:
        seen.update(opts, mode=mode, again=again("hv1"))

    monkeypatch.setattr(tasks, "_execute", execute)
    tasks.plan.body(Context(), host="hv1", restart=True, force_off=True, drain_timeout="30",
                    shutdown_timeout="40", reboot=True)
    assert seen["mode"] == "plan"
    assert seen["flags"] == RunFlags(redefine=False, restart=True, force_off=True, drain_timeout=30,
                                     shutdown_timeout=40, reboot=True)
    assert seen["again"] == ("invoke plan --host=hv1 --restart --force-off --drain-timeout=30 "
                             "--shutdown-timeout=40 --reboot")


def test_plan_with_restart_and_reboot_reaches_the_host(inv: Invoker) -> None:  # noqa: F811
    out = inv("plan", "--host=hv1", "--restart", "--drain-timeout=30", "--reboot")
    assert out.returncode == 4, out.stdout + out.stderr  # parsed and run: only the refused port stops it
    assert "[127.0.0.1]:1: connection refused" in out.stderr


def test_offline_plan_of_hv1_has_no_step_times_and_folds_what_it_skips(inv: Invoker) -> None:  # noqa: F811
    out = inv("plan", "--host=hv1", "--offline")
    assert out.returncode == 0, out.stderr
    assert "STEP TIMES" not in out.stdout and not re.search(r"\b0\.00s\n", out.stdout.split("PLAY RECAP")[1])
    restarted = [line for line in out.stdout.splitlines() if "restarted by" in line]
    assert restarted == [
        "hv1 | vms.restart.agents | k3s-server-tasks: no change: restarted by vms.restart.server",
        "hv1 | vms.restart.server | k3s-worker-slm-heavy, k3s-worker-data, k3s-worker-slm: no change: "
        "restarted by vms.restart.agents"]
    only = inv("plan", "--host=hv1", "--offline", "--only=host.tune")
    skipped = [line for line in only.stdout.splitlines() if "skipped" in line and "|" in line]
    assert skipped == ["hv1 | 2 steps skipped: not in --only: preflight.access, bios.check",
                       "hv1 | 13 steps skipped: not in --only: host.isolation, host.reboot, vms.unmanaged, "
                       "images.clone, cloudinit.build, vms.restart.agents, vms.restart.server, vms.define, vms.start, "
                       "k3s.server, k3s.addons, k3s.agents, k3s.taints"]


def _result(step: str, target: str, status: Any, reason: str, **kw: Any) -> StepResult:
    return StepResult("hv1", step, target, status, 0.0, 0.0, reason=reason, **kw)


def test_plan_output_folds_only_what_says_nothing_new() -> None:
    stream = io.StringIO()
    out = PlanOutput(stream)
    out.step_done(_result("a", "hv1", "skipped", "not in --only"))
    out.step_done(_result("b", "hv1", "skipped", "not in --only"))
    out.step_done(_result("c", "vm1", "ok", "vm1: restarted by d"))
    out.step_done(_result("c", "vm2", "ok", "vm2: restarted by d"))
    out.step_done(_result("c", "vm3", "ok", "vm3: no change needs a restart"))  # not folded: says something
    out.step_done(_result("e", "hv1", "skipped", "--skip", warnings=("look here",)))  # a warning is never folded
    out.close()
    assert stream.getvalue().splitlines() == [
        "hv1 | 2 steps skipped: not in --only: a, b",
        "hv1 | c | vm1, vm2: no change: restarted by d",
        "hv1 | c | vm3: no change: vm3: no change needs a restart",
        "hv1 | e | hv1: skipped: --skip",
        "    WARNING: look here",
    ]


def test_every_json_output_is_valid_json_ending_in_a_newline(inv: Invoker, tmp_path: Path) -> None:  # noqa: F811
    import json

    for argv in (["inventory.check", "--json"], ["verify.bios", "--host=hv1", "--json"],
                 ["status", "--host=hv1", "--json"], ["monitor", "--host=hv1", "--json"],
                 ["verify.all", "--host=hv1", "--json"]):
        out = inv(*argv)
        assert out.stdout.endswith("}\n") or out.stdout.endswith("]\n"), (argv, out.stdout[-50:], out.stderr)
        json.loads(out.stdout)
