"""What one host's run has read since it last changed anything, and its first contact with each
endpoint, which reads ahead everything the run's steps will read there (lib/batch.py).

Before the run changes anything, a read's answer is its answer for the rest of that time: a read
asked again (the node list by three steps, a domain's XML by vms.restart and vms.define) is not
sent again. The run's first read anywhere also opens every other endpoint the steps will read on
(the guests, through the hypervisor), each in a thread of its own with a single connect attempt,
and reads ahead there: the hosts answer side by side, as a floor's one command per host would.
A guest that does not answer yet is left to the step that needs it, which waits with its policy.

Every change and every convergence attempt forgets it all, and after the first change nothing is
read ahead again: no answer is ever older than the run's last change.

A run that changes hosts takes the host lock before its first read: the lock's command leads the
hypervisor's first contact (lead()), so taking it costs no round trip of its own. The reads after it
in that batch are answers under the lock; when the lock is refused they are dropped with the run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from lib.batch import batch_command, new_token, split_batch
from lib.shell import Command
from lib.transport import CmdResult, Endpoint, Log, Shell

# Per endpoint, the reads the run's steps will make there from the current step on (lib/runner.py).
Upcoming = Callable[[], dict[Endpoint, list[Command]]]


def _nothing() -> dict[Endpoint, list[Command]]:
    return {}


class ReadAhead:
    def __init__(self, upcoming: Upcoming = _nothing, log: Log | None = None) -> None:
        self._lock = threading.Lock()
        self._upcoming, self._log = upcoming, log
        self._changed = False
        self._contacts: dict[Endpoint, threading.Lock] = {}
        self._known: dict[tuple[Endpoint, str], CmdResult] = {}

    def forget(self) -> None:
        with self._lock:
            self._known.clear()
            self._changed = True

    def remember(self, endpoint: Endpoint, cmd: Command, result: CmdResult) -> None:
        """A read's answer, asked alone, for whoever asks it again before the next change."""
        with self._lock:
            if not self._changed:
                self._known[(endpoint, cmd.real)] = result

    def answer(self, endpoint: Endpoint, cmd: Command, shell: Shell) -> CmdResult | None:
        """cmd's answer if the run already has it (making the first contact with endpoint if this is
        it); None when the read must go to the host now."""
        with self._lock:
            if self._changed:
                return None
            known = self._known.get((endpoint, cmd.real))
            upcoming = self._first_contact(endpoint, shell)
            contact = self._contacts[endpoint]
        if known is not None:
            return self._taken(endpoint, known)
        with contact:  # every other target's reads there wait until the first contact has answered
            if upcoming is not None:
                # The read that makes the contact goes too: before any change every command sent is
                # a read (the engine forgets before it applies anything), such as vms.start's probe.
                self._read_ahead(endpoint, shell, [cmd, *upcoming.get(endpoint, [])])
        with self._lock:
            known = None if self._changed else self._known.get((endpoint, cmd.real))
        return None if known is None else self._taken(endpoint, known)

    def lead(self, endpoint: Endpoint, shell: Shell, cmd: Command) -> CmdResult:
        """cmd, which the run sends before its first read (the host lock), at the head of its first
        contact with endpoint: one round trip for both. Its answer is never kept for a later asker.
        Sent alone, as shell.run would, once the contact was made or when the batch did not carry it."""
        with self._lock:
            upcoming = None if self._changed else self._first_contact(endpoint, shell)
        if upcoming is None:
            return shell.run(cmd)
        with self._contacts[endpoint]:  # the steps' reads there wait for this contact's answers, as in answer()
            led = self._read_ahead(endpoint, shell, [cmd, *upcoming.get(endpoint, [])], keep_from=1).get(0)
        if led is None or led.exit_code not in cmd.ok_codes:  # run alone: its own retries and errors
            return shell.run(cmd)
        if self._log:
            self._log(f"{endpoint.name}: $ {led.command}  -> exit {led.exit_code} in {led.duration:.2f} s "
                      "(at the head of the first contact's reads)")
        return led

    def _first_contact(self, endpoint: Endpoint, shell: Shell) -> dict[Endpoint, list[Command]] | None:
        """Called under self._lock. None when endpoint was contacted already; else this call makes the
        contact (its lock registered; at the run's very first contact every other endpoint is opened)
        and gets the reads the run's steps will make, per endpoint."""
        if endpoint in self._contacts:
            return None
        self._contacts[endpoint] = threading.Lock()
        upcoming = self._upcoming()
        if len(self._contacts) == 1:
            self._open_the_others(endpoint, shell, upcoming)
        return upcoming

    def _taken(self, endpoint: Endpoint, known: CmdResult) -> CmdResult:
        if self._log:
            self._log(f"{endpoint.name}: $ {known.command}  -> exit {known.exit_code} in {known.duration:.2f} s "
                      f"(read earlier in this run, nothing changed since)")
        return known

    def _open_the_others(self, first: Endpoint, shell: Shell, upcoming: dict[Endpoint, list[Command]]) -> None:
        """Called under self._lock at the run's first contact: every other endpoint's contact starts
        now, in its own thread, holding that endpoint's contact until it has answered."""
        for endpoint, reads in upcoming.items():
            if endpoint == first or endpoint in self._contacts or not reads:
                continue
            contact = self._contacts[endpoint] = threading.Lock()
            contact.acquire()
            threading.Thread(target=self._open, args=(endpoint, reads, shell, contact), daemon=True,
                             name=f"read-ahead {endpoint.name}").start()

    def _open(self, endpoint: Endpoint, reads: list[Command], shell: Shell, contact: threading.Lock) -> None:
        try:
            peer = shell.peer(endpoint, once=True)
            if len(reads) == 1:  # one read needs no batch, only to be made now, beside the others
                self.remember(endpoint, reads[0], peer.run(reads[0]))
            else:
                self._read_ahead(endpoint, peer, reads)
        except Exception as exc:  # not up yet, say: the step that needs it connects with its policy
            if self._log:
                self._log(f"{endpoint.name}: not read ahead: {exc}")
        finally:
            contact.release()

    def _read_ahead(self, endpoint: Endpoint, shell: Shell, asked: list[Command],
                    keep_from: int = 0) -> dict[int, CmdResult]:
        """Every answer of one batch, by index among asked without its repeats (asked[0] keeps 0);
        those from keep_from on are kept for the steps that will ask them."""
        reads = list({c.real: c for c in asked}.values())
        if len(reads) < 2:
            return {}
        token = new_token()
        try:
            done = shell.run(batch_command(reads, endpoint.user, token))
        except Exception as exc:  # the steps read one by one, as without a batch, and fail on their own
            if self._log:
                self._log(f"{endpoint.name}: first contact read nothing ahead: {exc}")
            return {}
        answers = split_batch(done.stdout, reads, endpoint.user, token)
        with self._lock:
            if self._changed:
                return answers
            for i, result in answers.items():
                if i >= keep_from and result.exit_code in reads[i].ok_codes:  # a failure is its step's to report
                    self._known[(endpoint, reads[i].real)] = result
        return answers
