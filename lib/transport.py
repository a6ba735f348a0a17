"""The transport's vocabulary, with no SSH in it: where a target answers, what a command answered,
the two ways that fails, and the Shell a step reads and changes a target through.

Steps, the engine and the records import from here, never from lib/remote.py (paramiko, Fabric):
a step's parse, plan and verify can be loaded and tested without the SSH stack, and the engine can
be driven by any Shell (tests/harness/fakeshell.py answers from a script, in-process).

    Link   commands and files on one endpoint            lib/remote.py Session (SSH)
    Shell  a Link, plus libvirt's live domain state,     lib/pool.py HostShell (a Session, a libvirt
           plus the same run's shell for another target  client, the run's pool); lib/runner.py's
                                                          recording wrapper
    Pool   the shells of one host's run                  lib/pool.py SessionPool
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lib.errors import ToolError
from lib.shell import Command

Log = Callable[[str], None]


@dataclass(frozen=True)
class Endpoint:
    """Where a target answers SSH: a hypervisor, or a VM (optionally through its hypervisor)."""

    name: str
    host: str
    port: int = 22
    user: str = "root"
    key_file: str | None = None
    known_hosts: str | None = None
    via: Endpoint | None = None
    accept_new: bool = False  # record an unknown host key on first use; a changed key is still refused
    # How the operator opts in to accept-new for this endpoint, named in the refusal of an unknown key.
    host_key_opt_in: str = "ssh.host_key: accept-new in hosts/<name>.yaml"

    def __str__(self) -> str:
        hop = f" via {self.via.name}" if self.via else ""
        return f"{self.user}@{self.host}:{self.port}{hop}"


@dataclass(frozen=True)
class CmdResult:
    command: str  # as shown: secrets masked
    exit_code: int
    stdout: str
    stderr: str
    duration: float
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class ConnectError(ToolError):
    exit_code = 4

    def __init__(self, endpoint: Endpoint, reason: str, attempts: int) -> None:
        self.endpoint, self.reason, self.attempts = endpoint, reason, attempts
        super().__init__(f"cannot connect to {endpoint} ({endpoint.name}) after {attempts} attempt(s): {reason}")


class CommandError(ToolError):
    """A command failed for good (after the transient policy gave up, or at once if permanent)."""

    exit_code = 4

    def __init__(self, target: str, result: CmdResult, reason: str = "") -> None:
        self.target, self.result = target, result
        tail = "\n".join(result.stderr.strip().splitlines()[-10:]) or "(empty)"
        why = reason or f"exit code {result.exit_code}"
        super().__init__(f"{target}: command failed ({why}) after {result.attempts} attempt(s): {result.command}\n"
                         f"stderr: {tail}")


# libvirt's raw answers for one domain (state, autostart, and when running its vCPU pins, emulator
# pin and NUMA parameters); lib/domain.py's pure live_domain() reads them.
RawDomain = dict[str, Any]


class Link(Protocol):
    """Commands and files on one endpoint. Transient failures are retried inside; what is left
    raises CommandError (or ConnectError). Secrets never leave as anything but `***`."""

    def run(self, cmd: Command) -> CmdResult: ...

    def put(self, data: bytes | Path, remote_path: str, mode: int = 0o600, *, owner: str = "root",
            group: str = "root") -> None: ...

    def get(self, remote_path: str) -> bytes: ...


class Shell(Link, Protocol):
    """What a step's target is read and changed through, lent by the run (one per target and step)."""

    def live_domain(self, local_uri: str, name: str) -> RawDomain | None:
        """Live state of one domain as libvirt's API reports it (None: not defined)."""
        ...

    def peer(self, endpoint: Endpoint, *, once: bool = False) -> Shell:
        """Another target's shell in the same run (an agent asks the server, vms.start probes its
        guest). once: if not connected yet, try to connect now, once (a probe inside a wait)."""
        ...


class Pool(Protocol):
    """The shells of one hypervisor's run: one per endpoint, each connecting on first use."""

    def shell(self, endpoint: Endpoint) -> Shell: ...

    def on_reconnect(self, endpoint: Endpoint, hook: Callable[[], None]) -> None:
        """Call hook after the endpoint's lost connection is back (the host lock re-points itself)."""
        ...

    def close_all(self) -> None: ...
