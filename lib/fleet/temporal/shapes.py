"""What crosses Temporal: host and step names, run ids, outcomes. Never a secret: workers read the k3s
token (and anything else secret) from their own machine, and mask every text they return.

Plain dataclasses, so the default JSON converter carries them and nothing here imports temporalio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLLOUT_ID = "numa-k3s-rollout-{run_id}"
# One host, one id, fleet-wide: Temporal refuses a second running workflow with it, so no two
# rollouts (from any control node) ever change one host at the same time.
HOST_ID = "numa-k3s-host-{host}"
NOT_RETRYABLE = "NotRetryable"  # inventory, mismatch, verification: the same input fails the same way
RETRYABLE = "Retryable"  # the lock was held, or the worker stopped under the step


@dataclass
class Retry:
    """The tool's transient policy, as Temporal's activity retry policy (lib/retry.py's values)."""

    attempts: int = 3
    initial: float = 2.0
    maximum: float = 20.0


@dataclass
class StepInput:
    run_id: str
    host: str
    runbook: str
    step: str


@dataclass
class StepOutput:
    host: str
    step: str
    exit_code: int = 0
    records: str = ""
    error: str = ""
    details: str = ""
    stopped: bool = False
    worker: str = ""  # which worker process ran it (identity), for the record and the tests


@dataclass
class HostInput:
    run_id: str
    host: str
    runbook: str
    steps: list[str]
    task_queue: str  # the activity queue of the host's site
    heartbeat: float
    step_timeout: float
    retry: Retry = field(default_factory=Retry)


@dataclass
class RolloutInput:
    state: dict[str, Any]  # lib.fleet.record.FleetState.to_json(): the plan and every host's entry
    steps: list[str]  # the runbook's steps, in order
    queues: dict[str, str]  # host -> the task queue its steps run on
    parallel: int  # hosts in flight at once (0: the whole wave)
    heartbeat: float
    step_timeout: float
    retry: Retry = field(default_factory=Retry)
