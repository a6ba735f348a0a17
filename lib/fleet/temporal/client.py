"""Start, follow, query and signal a rollout on Temporal, from any control node.

The rollout's state lives in its workflow: `fleet.status` queries it while it runs and reads its
result once it ended, so any control node that can reach Temporal sees it. The node that started it
also keeps the fleet record (.runs/fleet/<run-id>/fleet.json) of what it followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError

from lib.errors import ToolError
from lib.fleet.plan import RolloutPlan
from lib.fleet.record import FleetRecord, FleetState
from lib.fleet.temporal.config import TemporalConfig, TemporalError
from lib.fleet.temporal.shapes import ROLLOUT_ID, Retry, RolloutInput
from lib.fleet.temporal.workflows import RolloutWorkflow
from lib.retry import Policies

T = TypeVar("T")


def _reachable(config: TemporalConfig) -> None:
    """A plain TCP connect first: an address nobody listens on is refused by name at once, before
    temporalio's runtime starts (its threads, cut off by an exit during a failed connect, can abort
    the interpreter as it finalizes)."""
    host, _, port = config.address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=10):
            pass
    except (OSError, ValueError) as exc:
        raise TemporalError(f"cannot reach Temporal at {config.address} (namespace {config.namespace}): "
                            f"{getattr(exc, 'strerror', None) or exc}; set temporal.address in invoke.yaml or "
                            "--address") from None


async def connect(config: TemporalConfig) -> Client:
    _reachable(config)
    try:
        return await Client.connect(config.address, namespace=config.namespace)
    except (RuntimeError, RPCError, OSError) as exc:
        raise TemporalError(f"cannot reach Temporal at {config.address} (namespace {config.namespace}): {exc}; "
                            "set temporal.address in invoke.yaml or --address") from None


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, then a collection while the interpreter is whole. temporalio's objects left in
    reference cycles were otherwise dropped as the interpreter finalized, and its Rust threads,
    calling back into it then, aborted the process (SIGABRT or SIGSEGV after a rollout that had
    succeeded, in 3 of 6 Temporal tests one afternoon): an exit code that lies."""
    try:
        return asyncio.run(work)
    finally:
        gc.collect()


def retry_of(policies: Policies) -> Retry:
    """The tool's transient policy as the activities' retry policy: same attempts, same back-off."""
    t = policies.transient
    return Retry(max(1, t.attempts), t.wait_initial, t.wait_max)


def _handle(client: Client, run_id: str) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(ROLLOUT_ID.format(run_id=run_id))


async def _follow(handle: WorkflowHandle[Any, Any], say: Callable[[str], None], poll: float) -> FleetState:
    """Print each host as it finishes, until the rollout ends; its final state."""
    seen: dict[str, str] = {}
    said_state = ""
    result = asyncio.ensure_future(handle.result())
    while not result.done():
        with contextlib.suppress(RPCError):  # no worker has picked the workflow up yet
            now = await handle.query(RolloutWorkflow.progress)
            _changes(now, seen, say)
            if now.get("state") != said_state and now.get("reason"):
                said_state = str(now["state"])
                say(f"{said_state}: {now['reason']}")
        await asyncio.wait([result], timeout=poll)
    final: dict[str, Any] = result.result()
    _changes(final, seen, say)
    return FleetState.from_json(final)


def _changes(state: dict[str, Any], seen: dict[str, str], say: Callable[[str], None]) -> None:
    for host, entry in state.get("hosts", {}).items():
        outcome = entry["outcome"]
        if outcome in ("verified", "failed", "stopped") and seen.get(host) != outcome:
            seen[host] = outcome
            where = f" at {entry['failed_step']} (exit {entry['exit_code']}): {entry['error']}" if entry["exit_code"] \
                else ""
            say(f"  {host} ({entry['site']}) {outcome}{where}")


async def start_rollout(config: TemporalConfig, state: FleetState, steps: list[str], queues: dict[str, str],
                        parallel: int, policies: Policies, say: Callable[[str], None],
                        poll: float = 1.0) -> FleetState:
    client = await connect(config)
    arg = RolloutInput(state.to_json(), steps, queues, parallel, config.heartbeat, config.step_timeout,
                       retry_of(policies))
    handle = await client.start_workflow(RolloutWorkflow.run, arg, id=ROLLOUT_ID.format(run_id=state.run_id),
                                         task_queue=config.task_queue)
    say(f"rollout workflow {handle.id} started on {config.address} ({config.namespace}, queue "
        f"{config.task_queue}); it goes on without this command: invoke fleet.status --engine=temporal "
        f"--run={state.run_id}")
    return await _follow(handle, say, poll)


async def rollout_state(config: TemporalConfig, run_id: str) -> FleetState:
    """The rollout as it stands: its live progress while it runs, its result once it ended."""
    handle = _handle(await connect(config), run_id)
    try:
        described = await handle.describe()
        if described.status == WorkflowExecutionStatus.RUNNING:
            return FleetState.from_json(await handle.query(RolloutWorkflow.progress))
        return FleetState.from_json(await handle.result())
    except RPCError as exc:
        raise TemporalError(f"rollout {run_id}: {exc} (workflow {handle.id} on {config.address})") from None


async def approve(config: TemporalConfig, run_id: str) -> tuple[FleetState, int]:
    handle = _handle(await connect(config), run_id)
    state = FleetState.from_json(await handle.query(RolloutWorkflow.progress))
    if state.state != "paused":
        raise TemporalError(f"fleet run {run_id} is {state.state}, not paused before a wave; nothing to approve")
    await handle.signal(RolloutWorkflow.approve, state.wave)
    return state, state.wave


def as_json(state: FleetState) -> dict[str, Any]:
    return asdict(state)


def run_rollout(config: TemporalConfig, plan: RolloutPlan, state: FleetState, steps: list[str], parallel: int,
                policies: Policies, runs_dir: Path, say: Callable[[str], None]) -> FleetRecord:
    """Start (or continue) the rollout on Temporal and follow it; this node keeps its fleet record."""
    queues = {h: config.queue_of(plan.sites.get(h)) for h in plan.hosts}
    record = FleetRecord(runs_dir, state)
    say(f"fleet run {state.run_id}: {len(plan.hosts)} hosts, {len(plan.waves)} waves on Temporal; "
        f"record {record.file}")
    try:
        record.state = run_async(start_rollout(config, state, steps, queues, parallel, policies, say))
    except KeyboardInterrupt:  # Ctrl-C stops this command, not the rollout: it lives on the workers
        raise Followed(f"stopped following fleet run {state.run_id}; the rollout goes on on the workers: "
                       f"invoke fleet.status --engine=temporal --run={state.run_id}") from None
    record.save()
    return record


class Followed(ToolError):
    """The operator stopped watching a Temporal rollout (it was not stopped)."""

    exit_code = 130
