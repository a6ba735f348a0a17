"""Every task's flags fed bad values through the real `invoke` CLI: no traceback, ever, and exit 2 with a
message that names the flag. Also: `-h` is help for every task, short flags do not exist (so none can
mean two things), tasks that change hosts refuse to run without --host, and unknown names get a
suggestion. The inventory points at 127.0.0.1:1, where nothing listens: a value that passes the checks
ends in a refused connection (not retried), so nothing here can reach or change a host.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from invoke.program import Program

import tasks
from tests.harness.inventory import lock_path_for
from tests.inventory_helpers import HOSTS, REPO, with_real_keys

TASKS = sorted(tasks.ns.task_names)
SERVERS = {"exporter"}  # long-running: tests/test_exporter.py drives it
BAD = ("abc", "-1", "", "/missing/dir/x.svg", "nan", "1e999", "hv1,,", "é\u202e", "0")


def _flags(name: str) -> list[tuple[str, bool]]:
    """(--flag, takes a value) for each of the task's options."""
    out = []
    for arg in tasks.ns[name].get_arguments():
        if not arg.positional:
            out.append((f"--{arg.name.rstrip('_').replace('_', '-')}", arg.kind is not bool))
    return out


class Invoker:
    def __init__(self, tmp: Path) -> None:
        self.hosts, self.runs = tmp / "hosts", tmp / "runs"
        self.hosts.mkdir()
        (self.hosts / "defaults.yaml").write_text((HOSTS / "defaults.yaml").read_text())
        for host in ("hv1", "hv2"):
            data = with_real_keys(yaml.safe_load((HOSTS / "hv1.yaml").read_text()))  # runs that apply get that far
            data["ssh"] = {"host": "127.0.0.1", "port": 1}  # refused: nothing listens on port 1
            data["lock_path"] = str(lock_path_for(self.hosts, host))
            data["k3s"] = {**data.get("k3s", {}), "token_file": str(tmp / f"{host}.token")}
            (self.hosts / f"{host}.yaml").write_text(yaml.safe_dump(data))
        self.config = tmp / "invoke.yaml"  # one connect attempt: a refused port fails at once either way
        self.config.write_text(yaml.safe_dump({"retries": {"ssh_connect": {"attempts": 1}}}))

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, "INVOKE_HOSTS_DIR": str(self.hosts), "INVOKE_RUNS_DIR": str(self.runs), **(env or {})}
        return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), "-f", str(self.config),
                               *args], check=False, capture_output=True, text=True, env=full, timeout=120,
                              cwd=self.hosts.parent)  # a relative output path (--svg=x) lands here, not in the repo


@pytest.fixture
def inv(tmp_path: Path) -> Iterator[Invoker]:
    yield Invoker(tmp_path)


def _argv(task: str, *rest: str) -> list[str]:
    return [task, "bios.check", *rest] if task == "step" else [task, *rest]


def _valued() -> list[tuple[str, str]]:
    return [(task, flag) for task in TASKS for flag, takes in _flags(task) if takes]


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def _in_process(inv: Invoker, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Ran:
    """One invocation of the same tasks and the same Program entry as `invoke ...`, in this process:
    the fuzz's few hundred cases then cost parsing and checking, not a Python start-up each. Any
    exception that escapes invoke's Program is the traceback an operator would have seen."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setenv("INVOKE_HOSTS_DIR", str(inv.hosts))
    monkeypatch.setenv("INVOKE_RUNS_DIR", str(inv.runs))
    monkeypatch.chdir(inv.hosts.parent)  # a relative output path (--svg=x) lands here, not in the repo
    program = Program(namespace=tasks.ns, binary="invoke")
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            program.run(["invoke", "-f", str(inv.config), *argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            err.write("Traceback (in process):\n" + traceback.format_exc())
            code = 99
    return Ran(code, out.getvalue(), err.getvalue())


def _fuzz(inv: Invoker, cases: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    results = [(argv, _in_process(inv, argv, monkeypatch)) for argv in cases]  # one at a time: signal handlers
    for argv, out in results:
        text = out.stdout + out.stderr
        assert "Traceback" not in text, f"{argv}:\n{text}"
        assert out.returncode in (0, 1, 2, 3, 4, 5), f"{argv}: exit {out.returncode}\n{text}"
        if out.returncode:
            assert out.stderr.strip(), f"{argv}: failed without a word"
    # Nothing was changed or even locked: no lock file, no token, on any "host".
    assert not any(lock_path_for(inv.hosts, h).exists() for h in ("hv1", "hv2"))
    assert not list(inv.hosts.parent.glob("*.token"))


def test_every_flag_of_every_task_with_a_bad_value_never_gives_a_traceback(inv: Invoker,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each value-taking flag of each task once, the bad values taken in turn; every switch on at once."""
    cases = [_argv(task, f"{flag}={value}") for (task, flag), value in zip(_valued(), itertools.cycle(BAD))]
    # The exporter serves until stopped: run with no bad value it would never end (its flags are fuzzed above).
    cases += [_argv(task, *(flag for flag, takes in _flags(task) if not takes)) for task in TASKS
              if task not in SERVERS]
    assert len(cases) > 50
    _fuzz(inv, cases, monkeypatch)


@pytest.mark.slow
def test_every_flag_of_every_task_with_every_bad_value(inv: Invoker, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole product (a few hundred invocations): make test-reliability."""
    cases = [_argv(task, f"{flag}={value}") for (task, flag), value in itertools.product(_valued(), BAD)]
    cases += [_argv(task, flag) for task, flag in _valued()]  # the value left out
    _fuzz(inv, cases, monkeypatch)


@pytest.mark.parametrize(("argv", "message"), [
    (["verify.numa", "--host=hv1", "--max-remote=abc"], "--max-remote='abc': not a number"),
    (["verify.numa", "--host=hv1", "--max-remote=101"], "--max-remote=101: out of range; allowed: [0, 100]"),
    (["monitor", "--host=hv1", "--interval=-1"], "--interval=-1: out of range; allowed: (0, 3600]"),
    (["monitor", "--host=hv1", "--interval=0"], "--interval=0: out of range"),
    (["doctor", "--host=hv1", "--interval=inf"], "--interval=inf: out of range"),
    (["verify.emulator", "--host=hv1", "--interval=nan"], "--interval=nan: out of range"),
    (["monitor", "--host=hv1", "--watch", "--count=1.5"], "--count=1.5: a whole number"),
    (["topology", "--host=hv1", "--svg=/missing/dir/t.svg"], "--svg=/missing/dir/t.svg: directory /missing/dir does "
                                                             "not exist"),
    (["topology", "--host=hv1", "--html=/"], "--html=/: is a directory"),
    (["step", "host.tun", "--host=hv1"], "unknown step 'host.tun' (did you mean host.tune?)"),
    (["plan", "--host=hv1", "--only=bios.chek"], "(did you mean bios.check?)"),
    (["plan", "--host=hv1", "--from=host.tune,bios.check"], "--from: one step"),
    (["plan", "--host=hv1", "--vm=k3s-worker-slmm"], "--vm: 'k3s-worker-slmm' not in the VMs of hv1 (did you mean "
                                                     "k3s-worker-slm?)"),
    (["steps", "--runbook=provison"], "--runbook=provison: unknown runbook (did you mean provision?)"),
    (["plan", "--host=hv1", "--runbook=../hosts/hv1"], "unknown runbook"),
    (["provision", "--host=hv1", "--all"], "give --host or --all, not both"),
])
def test_bad_values_exit_2_naming_the_flag(inv: Invoker, argv: list[str], message: str) -> None:
    out = inv(*argv)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not inv.runs.exists() or not any(inv.runs.rglob("run.json"))  # refused before any run started


def test_dash_h_is_help_for_every_task_and_no_task_has_short_flags(inv: Invoker) -> None:
    def helps(task: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        return task, inv(task, "-h")

    with ThreadPoolExecutor(max_workers=4) as pool:
        for task, out in pool.map(helps, TASKS):
            assert out.returncode == 0, f"{task}: {out.stderr}"
            assert out.stdout.startswith("Usage: inv[oke] [--core-opts] " + task), out.stdout
            options = out.stdout.split("Options:", 1)[-1]
            # Every option is spelled out: "  --host=STRING", never "  -h STRING, --host=STRING".
            short = [line for line in options.splitlines() if line.strip().startswith("-") and
                     not line.strip().startswith("--")]
            assert short == [], f"{task}: {short}"


@pytest.mark.parametrize("task", ["provision", "teardown", "step"])
def test_a_task_that_changes_hosts_refuses_without_host_and_changes_nothing(inv: Invoker, task: str) -> None:
    before = {p: p.read_bytes() for p in inv.hosts.parent.rglob("*") if p.is_file()}
    out = inv(*_argv(task))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{task} changes hosts: say which with --host=hv1 or --host=hv2 (or --all for every host in" in out.stderr
    assert "nothing was done" in out.stderr
    after = {p: p.read_bytes() for p in inv.hosts.parent.rglob("*") if p.is_file()}
    assert after == before  # no run directory, no lock, no token: not a byte changed
    # --all is the explicit way to every host: it gets as far as the (refused) connection to both.
    everyone = inv(*_argv(task), "--all")
    assert "hv1: FAILED" in everyone.stderr and "hv2: FAILED" in everyone.stderr
    assert "[127.0.0.1]:1: connection refused" in everyone.stderr


def test_an_unwritable_runs_dir_is_refused_before_any_work(inv: Invoker, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the runs directory should be")
    out = inv("plan", "--host=hv1", "--offline", env={"INVOKE_RUNS_DIR": str(blocked / "runs")})
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"the runs directory {blocked / 'runs'} is not writable" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_a_name_that_does_not_resolve_fails_at_once_with_a_human_message(inv: Invoker) -> None:
    data = yaml.safe_load((inv.hosts / "hv1.yaml").read_text())
    data["ssh"] = {"host": "hv9.example", "port": 22}
    (inv.hosts / "hv1.yaml").write_text(yaml.safe_dump(data))
    inv.config.write_text("")  # the default policy: 5 attempts for what is transient
    out = inv("verify.bios", "--host=hv1")
    assert out.returncode == 4, out.stdout + out.stderr
    assert "hv9.example: name does not resolve" in out.stderr
    assert "after 1 attempt(s)" in out.stderr  # not retried: it will not resolve in 16 s either


def test_status_that_cannot_read_says_why_and_exits_non_zero(inv: Invoker) -> None:
    out = inv("status", "--host=hv1")
    assert out.returncode == 4, out.stdout + out.stderr
    rows = out.stdout.splitlines()[1:]
    assert len(rows) == 4 and all(row.split()[2] == "unknown" for row in rows)  # one row per VM, no guess
    assert "hv1 | status.vms | k3s-worker-slm: could not read: " in out.stderr
    assert "Traceback" not in out.stderr
