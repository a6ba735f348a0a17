"""Start-up (issue #30): a task imports only what it uses. `invoke --list` (and `-h`) load tasks.py and
nothing heavy: no pydantic models, rich, paramiko, fabric or libvirt. Checked on the modules a fresh
interpreter has loaded, not on a clock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.inventory_helpers import REPO

HEAVY = ("pydantic", "rich", "paramiko", "fabric", "libvirt", "lib.inventory.model", "lib.runner")


def _loaded_after(*argv: str) -> list[str]:
    code = ("import json, sys\nfrom invoke.main import program\n"
            f"program.run(['invoke', '--search-root', {str(REPO)!r}, *{list(argv)!r}], exit=False)\n"
            f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def test_list_and_help_import_nothing_heavy() -> None:
    assert _loaded_after("--list") == []
    assert _loaded_after("plan", "-h") == []


def test_the_engine_loads_no_metrics_writer_terminal_ui_or_libvirt_binding() -> None:
    """Every run loads the engine and every step; prometheus_client, rich and libvirt only where used."""
    code = ("import json, sys\nimport lib.runner, lib.steps\n"
            "print(json.dumps([m for m in ('prometheus_client', 'rich', 'libvirt') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert json.loads(out.stdout) == []


def test_a_process_that_ran_the_engine_skips_the_last_collection(tmp_path: Path) -> None:
    """lib/quickexit.py: the heap is frozen at exit (the last collection was 50 ms of a 1-host verify).
    The probe is registered first, so it runs after the engine's hook (atexit runs hooks last-in first-out)."""
    code = ("import atexit, gc, io, sys\nfrom pathlib import Path\n"
            "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
            "from lib.output import Output\nfrom lib.runbook import Runbook\n"
            "from lib.runner import Engine, RunOptions\n"
            f"Engine(Runbook('t', '', '', ()), RunOptions(mode='verify', runs_dir=Path({str(tmp_path)!r})), "
            "Output(io.StringIO(), tty=False)).run([])\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    frozen = int(out.stdout.split("frozen")[-1])
    assert frozen > 1000, out.stdout  # every module's objects, not a handful


def test_a_process_with_temporal_s_runtime_keeps_its_last_collection() -> None:
    """temporalio's Rust threads are stopped by what the last collection frees: without it a rollout
    that succeeded exited with SIGABRT (tests/test_fleet_temporal.py saw it)."""
    code = ("import atexit, gc\natexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
            "import temporalio.client\nfrom lib.quickexit import skip_last_collection\nskip_last_collection()\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.stdout.split() == ["frozen", "0"]


def test_nagle_is_off_before_the_ssh_handshake() -> None:
    """lib/remote.py: the socket paramiko's Transport gets already has TCP_NODELAY, so the key exchange
    and the first channel open do not wait on delayed ACKs (set after connect it came too late)."""
    import socket

    from lib.remote import Endpoint, Session, nodelay_transport
    from lib.retry import Policies

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # the kernel's default
        transport = nodelay_transport(client)
        try:
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert not transport.is_active()  # no SSH byte sent yet: the handshake comes after
        finally:
            transport.close()
            client.close()
    session = Session(Endpoint("hv", "127.0.0.1", 22, "root"), Policies())
    assert session._new_connection().connect_kwargs["transport_factory"] is nodelay_transport
