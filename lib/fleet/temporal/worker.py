"""`invoke fleet.worker`: one process that runs rollout and host workflows from the main queue and the
steps (activities) of one site's hosts from that site's queue. Run one per site, or several, on any
number of control nodes: Temporal hands each task to one of them.

Secrets stay here: at start-up the worker reads the cluster token of every host it may run (the
same NUMA_K3S_TOKEN or token file the local engine reads, never creating one), so every text its
activities return is masked with it before it reaches Temporal's history.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import PollerBehaviorAutoscaling, Worker

from lib.fleet.kept import KeptConnections
from lib.fleet.plan import in_flight_bound
from lib.fleet.temporal.activities import StepActivities
from lib.fleet.temporal.client import connect
from lib.fleet.temporal.config import TemporalConfig
from lib.fleet.temporal.workflows import HostWorkflow, RolloutWorkflow
from lib.inventory.load import Inventory
from lib.retry import Policies
from lib.runbook import Runbook
from lib.token import TokenError, cluster_token


def learn_secrets(inv: Inventory) -> int:
    """Register each host's cluster token with the masking of lib.shell; how many were found."""
    found = 0
    for name, loaded in inv.hosts.items():
        with contextlib.suppress(TokenError, OSError):  # a host this worker cannot read a token for has none here
            found += cluster_token(loaded.host.k3s.token_file, name, create=False) is not None
    return found


async def serve(config: TemporalConfig, activity_queue: str, inv: Inventory, hosts_dir: Path, runs_dir: Path,
                books: dict[str, Runbook], policies: Policies, fd_limit: int,
                ready: asyncio.Event | None = None) -> None:
    learn_secrets(inv)
    client: Client = await connect(config)
    bound = in_flight_bound(fd_limit)  # each activity holds one host's SSH session: 4 descriptors at most
    kept = KeptConnections(limit=bound)  # between a host's steps: one handshake per host, as a local run
    steps = StepActivities(hosts_dir, runs_dir, books, policies, config.heartbeat, kept)
    executor = ThreadPoolExecutor(max_workers=bound)
    # Pollers scale with the work: a wave of 100 hosts is 100 host workflows and a step each at once.
    polls = PollerBehaviorAutoscaling()
    workers = [Worker(client, task_queue=config.task_queue, workflows=[RolloutWorkflow, HostWorkflow],
                      activities=[steps.run_step, steps.verify_host] if activity_queue == config.task_queue else [],
                      activity_executor=executor, max_concurrent_activities=bound,
                      workflow_task_poller_behavior=polls, activity_task_poller_behavior=polls)]
    if activity_queue != config.task_queue:
        workers.append(Worker(client, task_queue=activity_queue, activities=[steps.run_step, steps.verify_host],
                              activity_executor=executor, max_concurrent_activities=bound,
                              activity_task_poller_behavior=polls))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop polling, let the steps under way finish
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        print(f"fleet.worker {steps.identity}: workflows on {config.task_queue}, steps on {activity_queue}, "
              f"at most {bound} steps at once; {config.address} namespace {config.namespace}", flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
    executor.shutdown(wait=True)
    kept.close_all()
