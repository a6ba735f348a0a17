"""The local engine: a rollout's waves on this control node, hosts on a bounded thread pool.

Every decision (waves, budget, who starts next) comes from lib/fleet/plan.py; every host runs
through lib/fleet/hostrun.py. This file only schedules: it starts hosts while the budget holds,
waits, and writes each change to the fleet record. When the budget is exceeded no host starts any
more, the hosts in flight finish their current step and stop (exit 130, resumable), and the rollout
ends with the failed hosts named.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from lib.fleet.hostrun import HostOutcome, HostRunner
from lib.fleet.plan import RolloutPlan, site_of, startable
from lib.fleet.record import FleetRecord, approved
from lib.inventory.load import LoadedHost

Say = Callable[[str], None]


@dataclass
class Waiting:
    """How the rollout waits between waves; tests pass a poll that does not sleep for real."""

    stop: threading.Event
    poll: float = 0.5  # how often a paused rollout looks for the operator's approval


class LocalRollout:
    def __init__(self, plan: RolloutPlan, hosts: Mapping[str, LoadedHost], runner: HostRunner, record: FleetRecord,
                 *, slots: int, say: Say, waiting: Waiting, resume: bool = False) -> None:
        self.plan, self.hosts, self.runner, self.record = plan, hosts, runner, record
        self.slots, self.say, self.waiting, self.resume = slots, say, waiting, resume
        self.drain = threading.Event()  # set once the budget is exceeded: hosts stop before their next step
        self.why = ""

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: no new host, and the hosts in flight stop after their commands in flight."""
        self.why = "stopped by the operator"
        self.drain.set()
        self.waiting.stop.set()
        self.runner.interrupt()

    def run(self) -> None:
        state = self.record.state
        total = len(self.plan.hosts)
        done_before = {h for h, e in state.hosts.items() if e.outcome == "verified"}
        for number, wave in enumerate(self.plan.waves, 1):
            todo = [h for h in wave if h not in done_before]
            if not todo:
                continue
            if number > 1 and not self._between(number):
                return
            self.record.set("running", "", wave=number)
            self.say(f"wave {number}/{len(self.plan.waves)}: {len(todo)} hosts")
            self._wave(number, wave, todo, total)
            if self.drain.is_set():
                self._stopped(number)
                return
        self.record.set("done", f"every wave ran: {self._count('verified')} of {total} hosts verified")

    # -- one wave ---------------------------------------------------------------------------
    def _wave(self, number: int, wave: tuple[str, ...], todo: list[str], total: int) -> None:
        pending = list(todo)
        running: dict[Future[HostOutcome], str] = {}
        with ThreadPoolExecutor(max_workers=max(1, min(self.slots, len(todo)))) as pool:
            while pending or running:
                if not self.drain.is_set():
                    starting = startable(pending, running.values(), self.plan.sites, per_site=self.plan.per_site,
                                         slots=self.slots)
                    self.record.hosts_started(starting)  # one rewrite of the record for all of them
                    for host in starting:
                        pending.remove(host)
                        running[pool.submit(self._host, host)] = host
                elif not running:
                    break
                finished, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
                for future in finished:
                    host = running.pop(future)
                    self._done(host, future.result())
                    failed_wave = sum(1 for h in wave if self.record.state.hosts[h].outcome == "failed")
                    reason = self.plan.budget.exceeded(failed_wave, len(wave), self._count("failed"), total)
                    if reason and not self.drain.is_set():
                        self.why = f"the failure budget was exceeded in wave {number}: {reason}"
                        self.say(f"STOPPING: {self.why}; no host starts any more")
                        self.drain.set()
                if finished:  # the hosts that ended together, in one rewrite
                    self.record.save()

    def _host(self, host: str) -> HostOutcome:
        entry_records = self.record.state.hosts[host].records
        # A host this fleet run already started once (a --resume) continues after its last verified step.
        return self.runner.run(self.hosts[host], resume=self.resume and bool(entry_records), drain=self.drain,
                               why=lambda: self.why or "the rollout stopped")

    def _done(self, host: str, done: HostOutcome) -> None:
        self.record.host_done(done, save=False)  # saved once per batch of hosts that ended together
        where = f"at {done.failed_step} (exit {done.exit_code}): {done.error}" if not done.verified else ""
        self.say(f"  {host} ({site_of(self.plan.sites, host)}) {done.outcome} {where}".rstrip())

    def _count(self, outcome: str) -> int:
        return sum(1 for e in self.record.state.hosts.values() if e.outcome == outcome)

    def _stopped(self, number: int) -> None:
        failed = sorted(h for h, e in self.record.state.hosts.items() if e.outcome == "failed")
        self.record.set("stopped" if failed or self.why else "failed", self.why, wave=number)
        if failed:
            self.say(f"failed: {', '.join(failed)}")

    # -- between waves ----------------------------------------------------------------------
    def _between(self, number: int) -> bool:
        between = self.plan.between
        if between.pause:
            return self._pause(number)
        if between.soak:
            return self._soak(number)
        return True

    def _pause(self, number: int) -> bool:
        run_id = self.record.state.run_id
        self.record.set("paused", f"waiting for an operator before wave {number}: invoke fleet.approve "
                                  f"--run={run_id}", wave=number)
        self.say(f"paused before wave {number}: go on with `invoke fleet.approve --run={run_id}`")
        while not approved(self.record, number):
            if self.waiting.stop.wait(self.waiting.poll):
                self._stopped(number)
                return False
        self.record.state.approved.append(number)
        self.say(f"wave {number} approved")
        return True

    def _soak(self, number: int) -> bool:
        seconds = self.plan.between.soak
        self.record.set("soaking", f"soaking {seconds:g} s before wave {number}, then re-verifying", wave=number)
        self.say(f"soaking {seconds:g} s before wave {number}")
        if self.waiting.stop.wait(seconds):
            self._stopped(number)
            return False
        finished = [h for w in self.plan.waves[:number - 1] for h in w
                    if self.record.state.hosts[h].outcome == "verified"]
        with ThreadPoolExecutor(max_workers=max(1, min(self.slots, len(finished)))) as pool:
            checks = dict(zip(finished, pool.map(lambda h: self.runner.verify(self.hosts[h]), finished), strict=True))
        unhealthy = sorted(h for h, done in checks.items() if not done.verified)
        if not unhealthy:
            self.say(f"soak: {len(finished)} hosts of the finished waves still verify")
            return True
        for host in unhealthy:
            entry = self.record.state.hosts[host]
            done = checks[host]
            entry.outcome, entry.exit_code, entry.failed_step = "failed", done.exit_code, done.failed_step
            entry.error, entry.records = f"after the soak: {done.error}", done.records
        self.why = f"after the soak before wave {number}, {len(unhealthy)} hosts no longer verify"
        self.say(f"STOPPING: {self.why}: {', '.join(unhealthy)}")
        self._stopped(number)
        return False
