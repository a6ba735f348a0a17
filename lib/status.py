"""`invoke status`: one row per VM from the checks of status.vms and status.k3s (pure).

Columns: state, pins (ok, or drifted with the first moved pin), memory node (live numatune), k3s
node Ready, taints ok. A cell the reads could not fill says why in one word (unknown, -).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from lib.inventory.load import LoadedHost
from lib.results import HostRun, StepResult
from lib.shell import mask

COLUMNS = ("host", "vm", "state", "pins", "memory node", "k3s Ready", "taints")


@dataclass(frozen=True)
class Row:
    host: str
    vm: str
    state: str
    pins: str
    memory_node: str
    k3s_ready: str
    taints: str

    @property
    def ok(self) -> bool:
        return (self.state == "running" and self.pins == "ok" and self.k3s_ready in ("Ready", "-")
                and self.taints in ("ok", "-"))


def _pins(result: StepResult | None) -> tuple[str, str, str]:
    """(state, pins, memory node) from status.vms's checks."""
    if result is None or (result.status == "failed" and not result.checks):
        return "unknown", "unknown", "unknown"
    checks = {c.name: c for c in result.checks}
    state = checks["state"].found if "state" in checks else "unknown"
    pins = [c for c in result.checks if c.name.startswith(("virsh vcpupin ", "virsh emulatorpin "))]
    moved = [c for c in pins if not c.ok]
    if state != "running":
        shown = "-"
    elif moved:
        first = moved[0]
        what = first.name.split()[1] + (f" {first.name.split()[-1]}" if "vcpupin" in first.name else "")
        shown = f"drifted ({len(moved)}: {what} on {first.found}, want {first.expected})"
    else:
        shown = "ok"
    numa = next((c for c in result.checks if c.name.startswith("virsh numatune ")), None)
    node = "-" if numa is None else (numa.found if numa.ok else f"{numa.found} (want {numa.expected})")
    return state, shown, node


def _k3s(result: StepResult | None, vm: str) -> tuple[str, str]:
    if result is None:
        return "unknown", "unknown"
    checks = {c.name: c for c in result.checks}
    ready, taints = checks.get(f"{vm} Ready"), checks.get(f"{vm} taints")
    if f"{vm}" in checks and not checks[vm].ok:
        return "not registered", "-"
    if ready is None:
        return "unknown", "unknown"
    return ("Ready" if ready.ok else "NotReady"), ("ok" if taints and taints.ok else
                                                  f"differ (have {taints.found if taints else '?'})")


def rows(runs: list[HostRun], hosts: dict[str, LoadedHost]) -> list[Row]:
    out: list[Row] = []
    for run in runs:
        loaded = hosts[run.host]
        by_vm = {r.target: r for r in run.results if r.step == "status.vms"}
        cluster = next((r for r in run.results if r.step == "status.k3s" and r.status != "skipped"), None)
        for vm in loaded.host.vms:
            state, pins, node = _pins(by_vm.get(vm.name))
            ready, taints = _k3s(cluster, vm.name) if vm.k8s else ("-", "-")
            out.append(Row(run.host, vm.name, state, pins, node, ready, taints))
    return out


def table(found: list[Row]) -> str:
    cells = [COLUMNS] + [(r.host, r.vm, r.state, r.pins, r.memory_node, r.k3s_ready, r.taints) for r in found]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return mask("\n".join(lines))


def as_json(found: list[Row]) -> str:
    return mask(json.dumps([asdict(r) | {"ok": r.ok} for r in found], indent=2))
