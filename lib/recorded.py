"""The Shell a step's target gets from its run: its commands' answers kept as evidence, the shared
reads of one step asked once, and the run's first contact with a host, which reads in one round
trip what every step will read there (Answers). lib/runner.py lends one per target and step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from lib.batch import batch_command, new_token, split_batch
from lib.shell import Command
from lib.transport import CmdResult, CommandError, Endpoint, Log, RawDomain, Shell

# The reads a run's steps will make on an endpoint from the current step on (lib/runner.py).
Upcoming = Callable[[Endpoint], list[Command]]


def _nothing(endpoint: Endpoint) -> list[Command]:
    return []


class Answers:
    """What one host's run already knows, valid until it next changes something.

    - Shared reads (Command.shared): asked once per step, by whichever of its targets asks first,
      while the others wait for that answer.
    - First contact: the first read on an endpoint, before the run has changed anything, runs with
      every read the run's steps will make there (`upcoming`), in one command (lib/batch.py). A
      step then takes its read's answer from that batch instead of another round trip: a no-op
      provision reads each host once, as a floor would.

    Anything the run changes, and every convergence attempt, starts afresh: no answer is ever older
    than the last change, and after the first change every read goes to the host when it is made.
    """

    def __init__(self, upcoming: Upcoming = _nothing, log: Log | None = None) -> None:
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, Endpoint, str], tuple[threading.Lock, list[CmdResult]]] = {}
        self._upcoming, self._log = upcoming, log
        self._changed = False
        self._contacts: dict[Endpoint, threading.Lock] = {}
        self._read: dict[tuple[Endpoint, str], CmdResult] = {}

    def forget(self) -> None:
        with self._lock:
            self._answers.clear()
            self._read.clear()
            self._changed = True

    def get(self, key: tuple[str, Endpoint, str], read: Callable[[], CmdResult]) -> CmdResult:
        with self._lock:
            slot = self._answers.setdefault(key, (threading.Lock(), []))
        with slot[0]:  # the first asker reads; the others wait and take its answer
            if not slot[1]:
                slot[1].append(read())  # a failed read raises and is not kept: the next asker reads again
            return slot[1][0]

    def already_read(self, endpoint: Endpoint, cmd: Command, shell: Shell) -> CmdResult | None:
        """cmd's answer from the first contact with endpoint (making that contact if this is it), or
        None when the read must go to the host now."""
        with self._lock:
            if self._changed:
                return None
            first = endpoint not in self._contacts
            contact = self._contacts.setdefault(endpoint, threading.Lock())
        with contact:  # every other target's reads wait until the first contact has answered
            if first:
                self._first_contact(endpoint, shell, cmd)
        with self._lock:
            found = None if self._changed else self._read.get((endpoint, cmd.real))
        if found is not None and self._log:
            self._log(f"{endpoint.name}: $ {found.command}  -> exit {found.exit_code} in {found.duration:.2f} s "
                      f"(read at first contact)")
        return found

    def _first_contact(self, endpoint: Endpoint, shell: Shell, asked: Command) -> None:
        # The read that makes the contact goes too: before any change, every command sent is a read
        # (the engine forgets before it applies anything), such as vms.start's probe of a guest.
        reads = list({c.real: c for c in (asked, *self._upcoming(endpoint))}.values())
        if len(reads) < 2:
            return
        token = new_token()
        try:
            done = shell.run(batch_command(reads, endpoint.user, token))
        except Exception as exc:  # the steps read one by one, as without a batch, and fail on their own
            if self._log:
                self._log(f"{endpoint.name}: first contact read nothing ahead: {exc}")
            return
        answers = split_batch(done.stdout, reads, endpoint.user, token)
        with self._lock:
            if self._changed:
                return
            for i, result in answers.items():
                if result.exit_code in reads[i].ok_codes:  # a failure is left to its step to read and report
                    self._read[(endpoint, reads[i].real)] = result


class Recorded:
    """A target's view of its shell (a Shell itself): every command's answer is kept as raw evidence
    for its step, and a shared read is asked once per step (Answers).

    Shells are shared (VM targets ride on the hypervisor's), so the recording is per target and
    step, not per shell; everything else is the shell's own.
    """

    def __init__(self, shell: Shell, keep: Callable[[CmdResult], None], endpoint: Endpoint, step: str,
                 answers: Answers) -> None:
        self._shell, self._keep = shell, keep
        self._endpoint, self._step, self._answers = endpoint, step, answers

    def peer(self, endpoint: Endpoint, *, once: bool = False) -> Shell:
        """Another target's shell, lent by the run: its answers are kept as this step's evidence."""
        return Recorded(self._shell.peer(endpoint, once=once), self._keep, endpoint, self._step, self._answers)

    def run(self, cmd: Command) -> CmdResult:
        try:
            early = self._answers.already_read(self._endpoint, cmd, self._shell)
            if early is not None:
                result = early
            elif cmd.shared:
                result = self._answers.get((self._step, self._endpoint, cmd.real), lambda: self._shell.run(cmd))
            else:
                result = self._shell.run(cmd)
        except CommandError as exc:
            self._keep(exc.result)
            raise
        self._keep(result)
        return result

    def put(self, data: bytes | Path, remote_path: str, mode: int = 0o600, *, owner: str = "root",
            group: str = "root") -> None:
        self._shell.put(data, remote_path, mode, owner=owner, group=group)

    def get(self, remote_path: str) -> bytes:
        return self._shell.get(remote_path)

    def live_domain(self, local_uri: str, name: str) -> RawDomain | None:
        return self._shell.live_domain(local_uri, name)
