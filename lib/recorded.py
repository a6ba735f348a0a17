"""The Shell a step's target gets from its run: its commands' answers kept as evidence, the shared
reads of one step asked once, and what the run already read (SharedReads, lib/readahead.py).
lib/runner.py lends one per target and step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from lib.readahead import ReadAhead
from lib.shell import Command
from lib.transport import CmdResult, CommandError, Endpoint, RawDomain, Shell


class SharedReads:
    """What one host's run already knows.

    - Shared reads (Command.shared): asked once per step, by whichever of its targets asks first,
      while the others wait for that answer.
    - Reads already made (lib/readahead.py): before the run changes anything, a read asked again is
      answered from its first answer, and the first contact with an endpoint reads ahead.

    Anything the run changes, and every convergence attempt, starts afresh (forget): no answer is
    ever older than the last change.
    """

    def __init__(self, ahead: ReadAhead | None = None) -> None:
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, Endpoint, str], tuple[threading.Lock, list[CmdResult]]] = {}
        self.ahead = ahead or ReadAhead()

    def forget(self) -> None:
        self.ahead.forget()
        with self._lock:
            self._answers.clear()

    def get(self, key: tuple[str, Endpoint, str], read: Callable[[], CmdResult]) -> CmdResult:
        with self._lock:
            slot = self._answers.setdefault(key, (threading.Lock(), []))
        with slot[0]:  # the first asker reads; the others wait and take its answer
            if not slot[1]:
                slot[1].append(read())  # a failed read raises and is not kept: the next asker reads again
            return slot[1][0]


class Recorded:
    """A target's view of its shell (a Shell itself): every command's answer is kept as raw evidence
    for its step, and a shared read is asked once per step (SharedReads).

    Shells are shared (VM targets ride on the hypervisor's), so the recording is per target and
    step, not per shell; everything else is the shell's own.
    """

    def __init__(self, shell: Shell, keep: Callable[[CmdResult], None], endpoint: Endpoint, step: str,
                 answers: SharedReads) -> None:
        self._shell, self._keep = shell, keep
        self._endpoint, self._step, self._answers = endpoint, step, answers

    def peer(self, endpoint: Endpoint, *, once: bool = False) -> Shell:
        """Another target's shell, lent by the run: its answers are kept as this step's evidence."""
        return Recorded(self._shell.peer(endpoint, once=once), self._keep, endpoint, self._step, self._answers)

    def run(self, cmd: Command) -> CmdResult:
        ahead = self._answers.ahead
        try:
            early = ahead.answer(self._endpoint, cmd, self._shell)
            if early is not None:
                result = early
            else:
                result = (self._answers.get((self._step, self._endpoint, cmd.real), lambda: self._shell.run(cmd))
                          if cmd.shared else self._shell.run(cmd))
                ahead.remember(self._endpoint, cmd, result)
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
