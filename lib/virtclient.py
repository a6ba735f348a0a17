"""The libvirt client of one endpoint: its daemon reached over SSH with the inventory's key and
known_hosts, opened once per run, and the one API read the steps need (a domain's live state).

Separate from the SSH command session (lib/remote.py); lib/pool.py pairs the two per endpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib.retry import Policies, Sleep, retrying
from lib.transport import CmdResult, CommandError, ConnectError, Endpoint, RawDomain


class LibvirtClient:
    def __init__(self, endpoint: Endpoint, policies: Policies, sleep: Sleep, log: Callable[[str], None]) -> None:
        self.endpoint, self.policies, self.sleep, self.log = endpoint, policies, sleep, log
        self.remember_failure = False  # as Session.remember_failure: a daemon that did not answer stays failed
        self._conn: Any = None
        self._gave_up: ConnectError | None = None
        self._lock = threading.Lock()

    def connect(self, local_uri: str) -> Any:
        import libvirt

        with self._lock:
            if self._conn is not None and self._conn.isAlive():
                return self._conn
            # A connection whose SSH transport died (the host restarted) stays dead: open a new one,
            # as the SSH session does, rather than fail every later call (the exporter lives for days).
            self._conn = None
            if self._gave_up is not None:
                raise self._gave_up
            uri = libvirt_uri(self.endpoint, local_uri)
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions
            try:
                self._conn = retrying(self.policies.ssh_connect, _retry_libvirt, self.sleep)(lambda: libvirt.open(uri))
            except libvirt.libvirtError as exc:
                error = ConnectError(self.endpoint, f"libvirt at {uri} did not answer: {exc}", 1)
                if self.remember_failure:
                    self._gave_up = error
                raise error from None
            self.log(f"{self.endpoint.name}: libvirt connected ({uri})")
            return self._conn

    def live_domain(self, local_uri: str, name: str) -> RawDomain | None:
        """Live state of one domain as libvirt's API reports it (None: not defined).

        The raw values go to lib/domain.py's pure live_domain() for checking.
        """
        import libvirt

        conn = self.connect(local_uri)
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise CommandError(self.endpoint.name,
                               CmdResult(f"virDomainLookupByName({name})", 1, "", str(exc), 0.0)) from None
        state, _reason = dom.state()
        raw: RawDomain = {"state": state, "autostart": bool(dom.autostart())}
        if state == libvirt.VIR_DOMAIN_RUNNING:
            live = libvirt.VIR_DOMAIN_AFFECT_LIVE
            raw.update(vcpu_pins=dom.vcpuPinInfo(live), emulator_pin=dom.emulatorPinInfo(live),
                       numa=dom.numaParameters(live))
        return raw

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def libvirt_uri(ep: Endpoint, local_uri: str) -> str:
    """qemu:///system on the hypervisor -> qemu+libssh://user@host:port/system?keyfile=..&known_hosts=..

    The libssh transport takes the key and known_hosts from the URI, so the inventory's SSH settings
    are the only ones used; the plain qemu+ssh transport runs the ssh binary, which reads
    ~/.ssh/config and the user's own known_hosts instead.

    Host keys as for our own SSH connections: known_hosts_verify=normal would ask the user about an
    unknown key, and with no_tty and no auth callback it refuses instead (strict); `auto` adds an
    unknown key and refuses a changed one (accept-new). Never `ignore`.
    """
    driver, _, rest = local_uri.partition(":///")
    path, _, query = rest.partition("?")  # the local URI's own parameters (socket=...) are kept
    params = ["no_tty=1", f"known_hosts_verify={'auto' if ep.accept_new else 'normal'}"]
    if ep.key_file:
        params.insert(0, f"keyfile={Path(ep.key_file).expanduser()}")
    if ep.known_hosts:
        params.insert(1, f"known_hosts={Path(ep.known_hosts).expanduser()}")
    params += [q for q in query.split("&") if q]
    return f"{driver}+libssh://{ep.user}@{ep.host}:{ep.port}/{path}?{'&'.join(params)}"


def _retry_libvirt(exc: BaseException) -> bool:
    # Refused or reset while the daemon or sshd starts: retry. Auth and host key errors: never.
    text = str(exc).lower()
    return "connection refused" in text or "connection reset" in text or "timed out" in text
