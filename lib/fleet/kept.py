"""SSH connections a fleet worker keeps open between one host's steps.

On the Temporal engine every step of a host is its own activity, so its own Engine run: each opened
a connection to the hypervisor and closed it, one SSH handshake per step where a local run has one
per host (about 20 ms of CPU on the two machines and 40 ms of waiting each, measured 2026-12-06).
A run made with kept(...)'s pools hands its open hypervisor connection back here at its end, and
the host's next step on this worker starts from it.

Each run still takes and releases the host lock itself, so a step is as safe alone as before: the
lock names the kept connection's sshd session while a step runs, and when the worker dies every
kept connection dies with it, so a lock left behind is stale. What is kept is bounded (the oldest
is closed past `limit`) and a connection idle past `idle_s` is closed instead of reused. Only
hypervisors are kept: a VM's connection rides on its hypervisor's and ends with the run.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lib.pool import HostShell, SessionPool
from lib.remote import close_quietly
from lib.retry import Policies, Sleep
from lib.transport import Endpoint, Log


class KeptConnections:
    def __init__(self, limit: int, idle_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.idle_s, self._clock = limit, idle_s, clock
        self._lock = threading.Lock()
        self._kept: OrderedDict[Endpoint, tuple[float, Any]] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def take(self, endpoint: Endpoint) -> Any | None:
        """The connection kept for endpoint, if it is fresh and alive; it is the caller's now."""
        with self._lock:
            got = self._kept.pop(endpoint, None)
        if got is None:
            return None
        since, conn = got
        if self._clock() - since > self.idle_s or not conn.is_connected:
            close_quietly(conn)
            return None
        return conn

    def give(self, endpoint: Endpoint, conn: Any) -> None:
        """Keep conn for endpoint's next run, closing what this pushes past the limit or its age."""
        now = self._clock()
        with self._lock:
            stale = [e for e, (since, _) in self._kept.items() if e == endpoint or now - since > self.idle_s]
            gone = [self._kept.pop(e)[1] for e in stale]
            self._kept[endpoint] = (now, conn)
            while len(self._kept) > self.limit:
                gone.append(self._kept.popitem(last=False)[1][1])
        for old in gone:
            close_quietly(old)

    def close_all(self) -> None:
        with self._lock:
            gone, self._kept = [c for _, c in self._kept.values()], OrderedDict()
        for conn in gone:
            close_quietly(conn)

    def pools(self, keep: bool) -> Callable[[Policies, Sleep, Log, bool], SessionPool]:
        """An Engine's pool factory that starts from what is kept; keep: hand the hypervisor's
        connection back at the end (False for a host's last step: nothing will take it)."""
        def make(policies: Policies, sleep: Sleep, log: Log, remember_failure: bool) -> SessionPool:
            return _KeptPool(policies, sleep, log, remember_failure=remember_failure, keeper=self, keep=keep)
        return make


@dataclass
class _KeptPool(SessionPool):
    keeper: KeptConnections = field(kw_only=True)
    keep: bool = field(kw_only=True)

    def _get(self, endpoint: Endpoint) -> HostShell:
        new = f"{endpoint.name}@{endpoint}" not in self.shells
        shell = super()._get(endpoint)
        if new and endpoint.via is None:
            conn = self.keeper.take(endpoint)
            if conn is not None:
                shell.session.adopt(conn)
        return shell

    def close_all(self) -> None:
        if self.keep:
            for shell in self.shells.values():
                if shell.endpoint.via is None:
                    conn = shell.session.handover()  # before the VMs close: theirs ride on it, it stays open
                    if conn is not None:
                        self.keeper.give(shell.endpoint, conn)
        super().close_all()
