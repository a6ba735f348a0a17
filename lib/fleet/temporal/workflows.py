"""The rollout and host workflows. Deterministic, and nothing runs at import: the sandbox re-imports
this module for every workflow run. Every rollout decision comes from lib/fleet/plan.py, the same
functions the local engine calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from lib.fleet.plan import Budget, parse_budget, startable
    from lib.fleet.temporal.shapes import (
        HOST_ID,
        NOT_RETRYABLE,
        HostInput,
        RolloutInput,
        StepInput,
        StepOutput,
    )


# Child workflows being started at once. Each start and each child's end updates this workflow,
# under its one lock on the server; 100 starts at once made the server give up on that lock some
# 700 times a rollout (acquire_lock_failed), each retried with a back-off of a second or more, so
# the hosts of a 100-host wave started over 15 s. Ten at a time: about 100 misses, from the ends.
STARTS_AT_ONCE = 10
BOUNDED_STARTS = "bounded-child-starts"  # the patch id: a rollout begun before this bound replays as it ran


def _retry(inp: HostInput) -> RetryPolicy:
    return RetryPolicy(initial_interval=timedelta(seconds=inp.retry.initial),
                       maximum_interval=timedelta(seconds=inp.retry.maximum), maximum_attempts=inp.retry.attempts,
                       non_retryable_error_types=[NOT_RETRYABLE])


def _failed_output(err: ActivityError, host: str, step: str) -> StepOutput:
    """The step's own outcome from the activity's last failure (its details), or the failure named."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
        return StepOutput(**cause.details[0])
    return StepOutput(host, step, 4, error=f"{host}: step {step}: {cause or err}")


@workflow.defn(name="numa-k3s.host")
class HostWorkflow:
    """One host's steps, one activity each, in runbook order; stops at the first that fails."""

    def __init__(self) -> None:
        self.drained = ""

    @workflow.signal
    def drain(self, why: str) -> None:
        """The rollout stops: finish the step under way, start no other."""
        self.drained = why

    @workflow.run
    async def run(self, inp: HostInput) -> StepOutput:
        last = StepOutput(inp.host, "")
        for step in inp.steps:
            if self.drained:
                return StepOutput(inp.host, step, 130, last.records,
                                  f"{inp.host}: stopped before step {step} ({self.drained}); nothing of it ran",
                                  stopped=True)
            try:
                last = await workflow.execute_activity(
                    "run_step", StepInput(inp.run_id, inp.host, inp.runbook, step),
                    result_type=StepOutput, task_queue=inp.task_queue,
                    start_to_close_timeout=timedelta(seconds=inp.step_timeout),
                    heartbeat_timeout=timedelta(seconds=inp.heartbeat), retry_policy=_retry(inp))
            except ActivityError as err:
                return _failed_output(err, inp.host, step)
        return last


@workflow.defn(name="numa-k3s.rollout")
class RolloutWorkflow:
    """The waves, the budget, pause and soak between waves; progress as a query, approve as a signal."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.approved: set[int] = set()
        self.why = ""
        self.starting = asyncio.Semaphore(STARTS_AT_ONCE)

    @workflow.query
    def progress(self) -> dict[str, Any]:
        return self.state

    @workflow.signal
    def approve(self, wave: int) -> None:
        self.approved.add(wave)

    @workflow.run
    async def run(self, inp: RolloutInput) -> dict[str, Any]:
        self.state = inp.state
        hosts = self.state["hosts"]
        for number, wave in enumerate(self.state["waves"], 1):
            todo = [h for h in wave if hosts[h]["outcome"] != "verified"]
            if not todo:
                continue
            if number > 1 and not await self._between(inp, number):
                return self.state
            self._set("running", "", number)
            await self._wave(inp, number, wave, todo)
            if self.why:
                self._set("stopped", self.why, number)
                return self.state
        verified = sum(1 for e in hosts.values() if e["outcome"] == "verified")
        self._set("done", f"every wave ran: {verified} of {len(hosts)} hosts verified")
        return self.state

    def _set(self, state: str, reason: str, wave: int | None = None) -> None:
        self.state["state"], self.state["reason"] = state, reason
        if wave is not None:
            self.state["wave"] = wave

    async def _wave(self, inp: RolloutInput, number: int, wave: list[str], todo: list[str]) -> None:
        hosts, sites = self.state["hosts"], {h: (e["site"] if e["site"] != "-" else None)
                                             for h, e in self.state["hosts"].items()}
        budget = Budget(parse_budget(self.state["max_fail"]))
        pending = list(todo)
        running: dict[asyncio.Task[StepOutput | None], str] = {}
        children: dict[str, Any] = {}
        slots = inp.parallel or len(todo)
        while pending or running:
            if not self.why:
                for host in startable(pending, running.values(), sites, per_site=self.state["per_site"],
                                      slots=slots):
                    pending.remove(host)
                    running[asyncio.ensure_future(self._host(inp, host, children))] = host
            if not running:
                break
            done, _ = await workflow.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                host = running.pop(task)
                out = task.result()
                entry = hosts[host]
                if out is None:  # the budget ran out while it waited to start: it never started
                    entry["outcome"] = "pending"
                    continue
                entry["outcome"] = "verified" if out.exit_code == 0 else "stopped" if out.stopped else "failed"
                entry.update(exit_code=out.exit_code, failed_step=out.step if out.exit_code else "",
                             error=out.error, records=out.records or entry["records"],
                             details=out.details if entry["outcome"] == "failed" else "")
                failed_wave = sum(1 for h in wave if hosts[h]["outcome"] == "failed")
                failed_all = sum(1 for e in hosts.values() if e["outcome"] == "failed")
                reason = budget.exceeded(failed_wave, len(wave), failed_all, len(hosts))
                if reason and not self.why:
                    self.why = f"the failure budget was exceeded in wave {number}: {reason}"
                    for other, handle in children.items():
                        if other in running.values():
                            # A child may have ended since this activation began: signalling it fails,
                            # and nothing is lost (its result is taken below). It must not fail the rollout.
                            with contextlib.suppress(Exception):
                                await handle.signal(HostWorkflow.drain, self.why)

    async def _host(self, inp: RolloutInput, host: str, children: dict[str, Any]) -> StepOutput | None:
        """The host's child workflow, started once a start slot is free; None if the rollout stopped
        while it waited for one (nothing of it ran)."""
        host_input = HostInput(self.state["run_id"], host, self.state["runbook"], inp.steps, inp.queues[host],
                               inp.heartbeat, inp.step_timeout, inp.retry)
        bounded = workflow.patched(BOUNDED_STARTS)
        try:
            async with self.starting if bounded else contextlib.nullcontext():
                if self.why:
                    return None
                self.state["hosts"][host]["outcome"] = "running"
                handle = await workflow.start_child_workflow(HostWorkflow.run, host_input,
                                                             id=HOST_ID.format(host=host))
        except WorkflowAlreadyStartedError:
            return StepOutput(host, inp.steps[0] if inp.steps else "", 6,
                              error=f"{host}: another rollout is changing this host (workflow "
                                    f"{HOST_ID.format(host=host)} is running); nothing was done")
        children[host] = handle
        try:
            result: StepOutput = await handle
            return result
        except ChildWorkflowError as err:
            return StepOutput(host, "", 4, error=f"{host}: its workflow failed: {err.cause or err}")

    async def _between(self, inp: RolloutInput, number: int) -> bool:
        if self.state["pause"]:
            self._set("paused", f"waiting for an operator before wave {number}: invoke fleet.approve "
                                f"--engine=temporal --run={self.state['run_id']}", number)
            await workflow.wait_condition(lambda: number in self.approved)
            self.state["approved"].append(number)
            return True
        if self.state["soak"]:
            return await self._soak(inp, number)
        return True

    async def _soak(self, inp: RolloutInput, number: int) -> bool:
        self._set("soaking", f"soaking {self.state['soak']:g} s before wave {number}, then re-verifying", number)
        await workflow.sleep(timedelta(seconds=self.state["soak"]))
        hosts = self.state["hosts"]
        finished = [h for w in self.state["waves"][:number - 1] for h in w if hosts[h]["outcome"] == "verified"]
        checks = await asyncio.gather(*(workflow.execute_activity(
            "verify_host", StepInput(self.state["run_id"], h, self.state["runbook"], ""), result_type=StepOutput,
            task_queue=inp.queues[h], start_to_close_timeout=timedelta(seconds=inp.step_timeout),
            heartbeat_timeout=timedelta(seconds=inp.heartbeat)) for h in finished))
        unhealthy = [c for c in checks if c.exit_code]
        for check in unhealthy:
            hosts[check.host].update(outcome="failed", exit_code=check.exit_code, failed_step=check.step,
                                     error=f"after the soak: {check.error}", records=check.records)
        if unhealthy:
            self.why = (f"after the soak before wave {number}, {len(unhealthy)} hosts no longer verify: "
                        f"{', '.join(c.host for c in unhealthy)}")
            self._set("stopped", self.why, number)
            return False
        return True
