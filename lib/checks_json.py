"""--json for the verify tasks and inventory.check: the same evidence, numbers as numbers (pure).

A check's found and expected are texts for people ("0.4%", "61440 MiB", "12"); scripts get the
number itself, its unit apart, and the text as it was printed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lib.errors import InventoryError, Problem
from lib.results import Check, HostRun, StepResult
from lib.shell import mask

# A whole value that is one number, optionally followed by a unit: "12", "-0.5", "0.4%", "2.0 GiB", "30 s".
_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*([%A-Za-z/]{0,8})\s*$")


def number_of(text: str) -> tuple[int | float, str] | None:
    """(value, unit) when the text is one number with an optional unit, else None."""
    match = _NUMBER.match(text)
    if not match:
        return None
    raw, unit = match.groups()
    value: int | float = int(raw) if re.fullmatch(r"-?\d+", raw) else float(raw)
    return value, unit


def _side(name: str, text: str) -> dict[str, Any]:
    parsed = number_of(text)
    if parsed is None:
        return {name: text}
    value, unit = parsed
    out: dict[str, Any] = {name: value, f"{name}_text": text}
    if unit:
        out[f"{name}_unit"] = unit
    return out


def check_json(check: Check) -> dict[str, Any]:
    return {"name": check.name, "outcome": check.kind, "ok": check.ok,
            **_side("expected", check.expected), **_side("found", check.found)}


def result_json(result: StepResult) -> dict[str, Any]:
    return {"step": result.step, "target": result.target, "status": result.status,
            "duration_s": round(result.duration, 4), "exit_code": result.exit_code, "error": result.error,
            "checks": [check_json(c) for c in result.checks]}


def runs_json(runs: list[HostRun]) -> str:
    data = [{"host": run.host, "run_id": run.run_id, "exit_code": run.exit_code, "error": run.error,
             "results": [result_json(r) for r in run.results]} for run in runs]
    return mask(json.dumps({"runs": data}, indent=2))


def _problem(p: Problem) -> dict[str, str]:
    return {"severity": p.severity, "rule": p.rule, "file": p.file, "path": p.path, "message": p.message}


def inventory_json(hosts_dir: Path, names: list[str] | None) -> tuple[str, bool]:
    """inventory.check as JSON, and whether the inventory is valid."""
    from lib.inventory.load import load_inventory

    try:
        inv = load_inventory(hosts_dir, names)
    except InventoryError as exc:
        return json.dumps({"ok": False, "hosts": {}, "problems": [_problem(p) for p in exc.problems]}, indent=2), False
    hosts = {name: {"file": loaded.file, "vms": len(loaded.host.vms),
                    "vcpus_pinned": sum(v.vcpu_count for v in loaded.host.vms),
                    "warnings": sum(1 for w in inv.warnings if w.file == loaded.file)}
             for name, loaded in inv.hosts.items()}
    return json.dumps({"ok": True, "hosts": hosts, "problems": [_problem(p) for p in inv.warnings]}, indent=2), True
