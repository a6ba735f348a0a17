"""The shells of one hypervisor's run: per endpoint one SSH session and one libvirt client,
opened on first use and reused by every step; VM sessions ride on their hypervisor's session.

The pool owns both clients, so neither lib/remote.py nor lib/virtclient.py knows the other.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from lib.remote import Session
from lib.retry import Policies, Sleep
from lib.shell import Command
from lib.transport import CmdResult, Endpoint, Log, RawDomain
from lib.virtclient import LibvirtClient


class HostShell:
    """lib/transport.py's Shell over SSH: one endpoint's session and libvirt client, and its run's
    pool for the shells of other targets."""

    def __init__(self, session: Session, virt: LibvirtClient, pool: SessionPool) -> None:
        self.session, self.virt, self._pool = session, virt, pool

    @property
    def endpoint(self) -> Endpoint:
        return self.session.endpoint

    def run(self, cmd: Command) -> CmdResult:
        return self.session.run(cmd)

    def put(self, data: bytes | Path, remote_path: str, mode: int = 0o600, *, owner: str = "root",
            group: str = "root") -> None:
        self.session.put(data, remote_path, mode, owner=owner, group=group)

    def get(self, remote_path: str) -> bytes:
        return self.session.get(remote_path)

    def live_domain(self, local_uri: str, name: str) -> RawDomain | None:
        self.session.commands_run += 1  # a read like any command, in the session's count
        return self.virt.live_domain(local_uri, name)

    def peer(self, endpoint: Endpoint, *, once: bool = False) -> HostShell:
        shell = self._pool.shell(endpoint)
        if once:
            shell.session.connection(once=True)
        return shell

    def close(self) -> None:
        self.session.close()
        self.virt.close()


@dataclass
class SessionPool:
    """One HostShell per endpoint per run (lib/transport.py's Pool)."""

    policies: Policies
    sleep: Sleep = time.sleep
    log: Log | None = None
    # A read-only run sets this: a host (or its libvirt) that did not answer after every
    # ssh_connect attempt fails every later step at once instead of being waited for again.
    remember_failure: bool = False
    shells: dict[str, HostShell] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def shell(self, endpoint: Endpoint) -> HostShell:
        with self._lock:
            return self._get(endpoint)

    def _get(self, endpoint: Endpoint) -> HostShell:
        key = f"{endpoint.name}@{endpoint}"
        if key not in self.shells:
            gateway = self._get(endpoint.via).session if endpoint.via else None
            session = Session(endpoint, self.policies, sleep=self.sleep, log=self.log, gateway=gateway)
            virt = LibvirtClient(endpoint, self.policies, self.sleep, session.log)
            session.remember_failure = virt.remember_failure = self.remember_failure
            self.shells[key] = HostShell(session, virt, self)
        return self.shells[key]

    def on_reconnect(self, endpoint: Endpoint, hook: Callable[[], None]) -> None:
        self.shell(endpoint).session.on_reconnect = lambda _session: hook()

    def close_all(self) -> None:
        # VMs first: their connections ride on the hypervisor's, which must outlive them.
        for shell in reversed(list(self.shells.values())):
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):  # the peer is already gone
                shell.close()


def ssh_pool(policies: Policies, sleep: Sleep, log: Log, remember_failure: bool) -> SessionPool:
    """The engine's default pool factory (lib/runner.py Engine(pools=...))."""
    return SessionPool(policies, sleep, log, remember_failure=remember_failure)
