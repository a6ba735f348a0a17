"""What the operator reads about a rollout: the recap (one row per host, 80 columns), the verdict with
the failed hosts and the resume command, and the exit code from the existing table."""

from __future__ import annotations

import contextlib
from pathlib import Path

from lib.fleet.record import FleetState

_COLUMNS = (("host", 12), ("site", 8), ("wave", 4), ("outcome", 8), ("exit", 4), ("failed step", 14))
WIDTH = 80
SHOWN = 3  # failed hosts whose whole failure (expected, found, records) the verdict prints


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def recap(state: FleetState, runs_dir: Path) -> str:
    """One row per host in rollout order; the records column is relative to the runs directory."""
    head = "  ".join(f"{name:<{w}}" for name, w in _COLUMNS)
    rest = WIDTH - len(head) - 2
    lines = [f"{head}  records"[:WIDTH]]
    order = [h for wave in state.waves for h in wave]
    for host in order:
        e = state.hosts[host]
        records = e.records
        if records:
            with contextlib.suppress(ValueError):  # records elsewhere: shown as they are
                records = str(Path(records).relative_to(runs_dir.resolve()))
        cells = (host, e.site, str(e.wave), e.outcome, str(e.exit_code) if e.exit_code else "",
                 e.failed_step)
        row = "  ".join(f"{_cut(c, w):<{w}}" for c, (_, w) in zip(cells, _COLUMNS, strict=True))
        lines.append(f"{row}  {_cut(records, rest)}".rstrip())
    counts = {k: sum(1 for e in state.hosts.values() if e.outcome == k)
              for k in ("verified", "failed", "stopped", "pending", "running")}
    lines.append("fleet: " + " ".join(f"{k}={v}" for k, v in counts.items()) + f"  ({state.state})")
    return "\n".join(lines)


def exit_code(state: FleetState) -> int:
    """The most fundamental failure wins, as for one run; stopped hosts alone mean 130; else 0."""
    codes = [e.exit_code for e in state.hosts.values() if e.outcome == "failed" and e.exit_code]
    if codes:
        return min(codes)
    if state.state in ("stopped", "paused", "soaking", "running") or any(
            e.outcome in ("stopped", "pending", "running") for e in state.hosts.values()):
        return 130
    return 0


def verdict(state: FleetState, records_dir: Path) -> str:
    """Why the rollout did not verify every host, who failed, and how to continue it."""
    failed = [h for wave in state.waves for h in wave if state.hosts[h].outcome == "failed"]
    left = [h for wave in state.waves for h in wave if state.hosts[h].outcome in ("pending", "stopped", "running")]
    lines = [f"rollout {state.run_id} {state.state}" + (f": {state.reason}" if state.reason else "")]
    if failed:
        shown = failed[:SHOWN]
        lines += [state.hosts[h].details or f"{h}: {state.hosts[h].error}" for h in shown]
        if len(failed) > len(shown):
            lines.append(f"... and {len(failed) - len(shown)} more failed hosts: invoke fleet.status")
        lines.append(f"failed hosts: {', '.join(failed)}")
    if left:
        lines.append(f"not verified, not failed (stopped or never started): {len(left)}")
    lines.append(f"fleet record: {records_dir / 'fleet.json'}")
    if state.resume:
        lines.append(f"resume: {state.resume}")
    return "\n".join(lines)
