"""A scripted Shell and Pool (lib/transport.py) for driving the Engine in-process, without sshd.

pyinfra's FakeHost idea, strict: every command a run sends is answered from the test's script,
keyed by the command's `why` (and the endpoint it is sent to); a command nobody scripted raises
Unscripted, which the engine records as that target's failure and the test sees in the results.
So a test cannot pass on an answer it did not write down, and each command the engine really
sent is in `FakeNet.sent`, in order.

An answer is the stdout of a success, a CmdResult (any exit code; one outside the command's
ok_codes raises CommandError as a real session does), or a function of the command giving either.
A libvirt read of a domain is answered by `domain()`'s raw values, sent as `live domain <name>`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from lib.retry import Policies, Sleep
from lib.shell import Command
from lib.transport import CmdResult, CommandError, Endpoint, Log, RawDomain

Answer = str | CmdResult | Callable[[Command], "str | CmdResult"]


class Unscripted(AssertionError):
    """The run sent a command (or read) that the test did not script."""


class FakeNet:
    """The scripted answers of every endpoint, and what the runs sent."""

    def __init__(self) -> None:
        self._answers: dict[tuple[str, str], Answer] = {}
        self._domains: dict[tuple[str, str], RawDomain | None] = {}
        self.sent: list[tuple[str, str]] = []  # (endpoint name, why), in the order sent
        self._lock = threading.Lock()
        self.pools: list[FakePool] = []

    def on(self, endpoint: str, why: str, answer: Answer) -> None:
        """Answer every command with this `why` sent to this endpoint (by name: hv1, or a VM's name)."""
        self._answers[(endpoint, why)] = answer

    def domain(self, endpoint: str, name: str, raw: RawDomain | None) -> None:
        """Answer libvirt's live read of this domain on this endpoint (None: not defined)."""
        self._domains[(endpoint, name)] = raw

    def live(self, endpoint: Endpoint, name: str) -> RawDomain | None:
        with self._lock:
            self.sent.append((endpoint.name, f"live domain {name}"))
            if (endpoint.name, name) not in self._domains:
                raise Unscripted(f"{endpoint.name}: libvirt read of domain {name}")
            return self._domains[(endpoint.name, name)]

    def lock_answers(self, endpoint: str = "hv1") -> None:
        """The host lock taken and released, as a free lock answers (lib/lock.py)."""
        self.on(endpoint, "take the host lock", "acquired")
        self.on(endpoint, "release the host lock", "")

    def sent_whys(self, endpoint: str) -> list[str]:
        with self._lock:
            return [why for name, why in self.sent if name == endpoint]

    def answer(self, endpoint: Endpoint, cmd: Command) -> CmdResult:
        with self._lock:
            self.sent.append((endpoint.name, cmd.why))
            answer = self._answers.get((endpoint.name, cmd.why))
        if answer is None:
            raise Unscripted(f"{endpoint.name}: no scripted answer for {cmd.why!r}: {cmd.shown}")
        got = answer(cmd) if callable(answer) else answer
        result = got if isinstance(got, CmdResult) else CmdResult(cmd.shown, 0, got, "", 0.0)
        if result.exit_code not in cmd.ok_codes:
            raise CommandError(endpoint.name, result)
        return result

    def factory(self, policies: Policies, sleep: Sleep, log: Log, remember_failure: bool) -> FakePool:
        """lib/runner.py's PoolFactory: the Engine(pools=net.factory) makes one pool per host run."""
        pool = FakePool(self)
        with self._lock:
            self.pools.append(pool)
        return pool


class FakeShell:
    """One endpoint's Shell: commands and live domains answered by the script; files unscripted."""

    def __init__(self, endpoint: Endpoint, pool: FakePool) -> None:
        self.endpoint, self._pool = endpoint, pool

    def run(self, cmd: Command) -> CmdResult:
        return self._pool.net.answer(self.endpoint, cmd)

    def put(self, data: bytes | Path, remote_path: str, mode: int = 0o600, *, owner: str = "root",
            group: str = "root") -> None:
        raise Unscripted(f"{self.endpoint.name}: upload to {remote_path} (the fake keeps no files)")

    def get(self, remote_path: str) -> bytes:
        raise Unscripted(f"{self.endpoint.name}: download of {remote_path} (the fake keeps no files)")

    def live_domain(self, local_uri: str, name: str) -> RawDomain | None:
        return self._pool.net.live(self.endpoint, name)

    def peer(self, endpoint: Endpoint, *, once: bool = False) -> FakeShell:
        return self._pool.shell(endpoint)


class FakePool:
    def __init__(self, net: FakeNet) -> None:
        self.net = net
        self.closed = False
        self.hooks: dict[str, Callable[[], None]] = {}

    def shell(self, endpoint: Endpoint) -> FakeShell:
        return FakeShell(endpoint, self)

    def on_reconnect(self, endpoint: Endpoint, hook: Callable[[], None]) -> None:
        self.hooks[endpoint.name] = hook

    def close_all(self) -> None:
        self.closed = True
