"""Start-up (issue #30): a task imports only what it uses. `invoke --list` (and `-h`) load tasks.py and
nothing heavy: no pydantic models, rich, paramiko, fabric or libvirt. Checked on the modules a fresh
interpreter has loaded, not on a clock."""

from __future__ import annotations

import json
import subprocess
import sys

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
