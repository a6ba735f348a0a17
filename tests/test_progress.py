"""Progress in every wait (issue #30): a status line on the terminal's stderr naming host, step, the
targets still waited on and for how long; never on stdout, in --json or in the run's records."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from lib.options import RunFlags
from lib.progress import Ticker, status_line
from lib.results import StepResult
from tests.inventory_helpers import HOSTS, REPO


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Inner:
    """What the runner's real output would print (stdout, records): everything it was handed."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def host_started(self, host: str, steps: int) -> None:
        self.seen.append(f"host {host}")

    def step_started(self, host: str, step: str, target: str) -> None:
        self.seen.append(f"start {step} {target}")

    def step_done(self, result: StepResult) -> None:
        self.seen.append(f"done {result.step} {result.target}")

    def waiting(self, host: str, text: str) -> None:
        self.seen.append(text)

    def message(self, text: str) -> None:
        self.seen.append(text)

    def close(self) -> None:
        self.seen.append("closed")


def test_status_line_names_host_step_targets_and_time_after_two_seconds() -> None:
    waiting = {("lab", "vms.start"): {"lab-data": 10.0, "lab-slm": 11.0}, ("hv1", "bios.check"): {"hv1": 20.5}}
    assert status_line(waiting, 21.0, 2.0) == "lab | vms.start | waiting on lab-data, lab-slm for 11 s"
    assert status_line(waiting, 11.0, 2.0) == ""


def test_the_ticker_draws_on_the_terminal_only_and_clears_before_any_output() -> None:
    clock, tty, inner = Clock(), io.StringIO(), Inner()
    ticker = Ticker(inner, tty, tty=True, every=3600, clock=clock)
    ticker.step_started("lab", "vms.start", "lab-data")
    ticker.step_started("lab", "vms.start", "lab-slm")
    ticker.tick()
    assert tty.getvalue() == ""  # under 2 s: nothing
    clock.now += 12
    ticker.tick()
    assert tty.getvalue().endswith("lab | vms.start | waiting on lab-data, lab-slm for 12 s")
    ticker.step_done(StepResult("lab", "vms.start", "lab-data", "ok", 0.0, 1.0))
    assert tty.getvalue().endswith("\r\x1b[K")  # cleared before the result is printed
    ticker.tick()
    assert tty.getvalue().endswith("lab | vms.start | waiting on lab-slm for 12 s")
    ticker.close()
    assert tty.getvalue().endswith("\r\x1b[K")
    assert not any("waiting on" in line for line in inner.seen)  # never handed to stdout or the records
    assert inner.seen[-1] == "closed"


def test_not_a_terminal_no_line() -> None:
    clock, stream = Clock(), io.StringIO()
    ticker = Ticker(Inner(), stream, tty=False, every=3600, clock=clock)
    ticker.step_started("hv1", "bios.check", "hv1")
    clock.now += 30
    ticker.close()
    assert stream.getvalue() == ""


def test_a_silent_host_shows_on_the_terminal_and_never_in_json_or_records(tmp_path: Path) -> None:
    """A TCP listener that never sends an SSH banner: the connection waits 10 s (banner timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    hosts, runs = tmp_path / "hosts", tmp_path / "runs"
    hosts.mkdir()
    (hosts / "defaults.yaml").write_text((HOSTS / "defaults.yaml").read_text())
    data = yaml.safe_load((HOSTS / "hv1.yaml").read_text())
    data["ssh"] = {"host": "127.0.0.1", "port": port}
    (hosts / "hv1.yaml").write_text(yaml.safe_dump(data))
    config = tmp_path / "invoke.yaml"
    config.write_text(yaml.safe_dump({"retries": {"ssh_connect": {"attempts": 1}}}))
    env = {**os.environ, "INVOKE_HOSTS_DIR": str(hosts), "INVOKE_RUNS_DIR": str(runs)}
    parent, child = pty.openpty()  # stderr is a terminal; stdout a pipe, as in `... --json | jq`
    try:
        proc = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(REPO), "-f", str(config),
                                 "verify.bios", "--host=hv1", "--json"], stdout=subprocess.PIPE, stderr=child,
                                env=env, cwd=tmp_path, text=True)
        os.close(child)
        terminal = b""
        while True:
            ready, _, _ = select.select([parent], [], [], 120)
            if not ready:
                break
            try:
                chunk = os.read(parent, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        stdout, _ = proc.communicate(timeout=120)
    finally:
        os.close(parent)
        listener.close()
    assert "hv1 | bios.check | waiting on hv1 for" in terminal.decode(errors="replace"), terminal
    json.loads(stdout)
    assert "waiting on" not in stdout
    for record in runs.rglob("*"):
        if record.is_file():
            assert "waiting on" not in record.read_text(errors="replace"), record


def test_monitor_watch_samples_draw_no_status_line_over_the_watch_screen(monkeypatch: Any, tmp_path: Path) -> None:
    """A watch's own screen is its progress: its samples run without the ticker; a one-off sample has it."""
    from types import SimpleNamespace

    from invoke.config import Config
    from invoke.context import Context

    import lib.runner
    import tasks

    handed: list[Any] = []

    class Engine:
        def __init__(self, _book: Any, _options: Any, output: Any) -> None:
            handed.append(output)

        def run(self, _hosts: Any) -> list[Any]:
            return []

    monkeypatch.setattr(lib.runner, "Engine", Engine)
    monkeypatch.setattr(tasks, "_inventory", lambda _c, _h, **_kw: SimpleNamespace(hosts={}))
    c = Context(config=Config(overrides={"runs_dir": str(tmp_path), "hosts_dir": "hosts"}))
    book = tasks._book("monitor", "monitor.sample")
    tasks._run_quiet(c, None, book, RunFlags(), records=False)  # a --watch sample
    tasks._run_quiet(c, None, book, RunFlags(), records=True)  # monitor once
    assert [isinstance(o, Ticker) for o in handed] == [False, True]


def test_a_live_display_gets_the_line_in_its_host_line_unless_the_runner_just_said_more() -> None:
    clock, stderr, inner = Clock(), io.StringIO(), Inner()
    ticker = Ticker(inner, stderr, live=True, every=3600, clock=clock)
    ticker.step_started("hv1", "verify.all", "hv1")
    ticker.step_started("hv1", "vms.start", "vm-a")
    clock.now += 20
    ticker.tick()
    assert "vms.start | waiting on vm-a for 20 s" in inner.seen
    ticker.waiting("hv1", "vms.start vm-a: attempt 3, 23 s of 300 s, waiting for ssh")  # the runner's own note
    inner.seen.clear()
    clock.now += 1
    ticker.tick()
    assert inner.seen == []  # the runner's note stays: it names the attempt and the deadline
    assert stderr.getvalue() == ""  # never beside the live display
    ticker.close()
