"""SSH sessions: the only module that opens SSH connections and runs commands on hosts.

A Session is lib/transport.py's Link over SSH. The libvirt client of an endpoint is
lib/virtclient.py; lib/pool.py pairs the two into the Shell a step gets. Processes on the
operator's machine (the seed ISO builder) are lib/local.py.

One Fabric Connection per endpoint per run, opened on first use and reused by every step; VMs can
be reached through their hypervisor's connection as a jump host. Host keys are checked strictly
against the inventory's known_hosts (never paramiko's AutoAddPolicy); `host_key: accept-new`
records an unknown key on first contact and still refuses a changed one. Every command attempt is
bounded by its timeout, also when the host stops answering altogether (a hung sshd).
Commands come in as lib.shell.Command values: what is run is
`Command.real`, what is logged or raised is `Command.shown`, and any output is masked for secrets.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import paramiko
from fabric import Config, Connection
from fabric.runners import Remote
from invoke.exceptions import CommandTimedOut

from lib.errors import ToolError
from lib.retry import Policies, Sleep, retrying
from lib.shell import Command, mask, sh, wired
from lib.transport import CmdResult, CommandError, ConnectError, Endpoint, Log

# Re-exported: code written before lib/transport.py imports these from here.
__all__ = ["CmdResult", "CommandError", "ConnectError", "Endpoint", "Log", "Session", "fingerprint"]

# paramiko logs a traceback for every banner timeout while a VM boots; the operator gets our one
# line per failure instead (ConnectError), so its records go nowhere rather than to stderr.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


class _FastRemote(Remote):  # type: ignore[misc]
    # invoke's runner polls the channel every input_sleep seconds (class attribute, 10 ms by
    # default); with one batched command per step that wait is most of a fast step's cost.
    input_sleep = 0.001

    def wait(self) -> None:
        """invoke's wait, woken by the exit status instead of polling it every input_sleep: 100 hosts
        in flight polled a thousand times a second each, for nothing. paramiko sets status_event when
        the exit status arrives and when the channel closes (a kill on timeout, the watchdog); an IO
        thread that died is still noticed within 50 ms."""
        while not self.process_is_finished and not self.has_dead_threads:
            self.channel.status_event.wait(0.05)


class _Transient(Exception):
    """Internal: a failure the transient policy may retry."""

    def __init__(self, result: CmdResult, reason: str) -> None:
        super().__init__(reason)
        self.result, self.reason = result, reason


# A command whose host stops answering altogether (a hung sshd, a frozen machine) gets no help from
# invoke's timeout: that timer starts only once the channel is open, and paramiko waits up to an hour
# for a channel and forever for an exec reply. A watchdog closes the connection this long after the
# command's own timeout instead; a live host's timeout has long been handled by then.
_WATCHDOG_GRACE_S = 2.0
# Opening a channel (a command, SFTP) and each SFTP read or write: a host silent this long is hung.
_CHANNEL_TIMEOUT_S = 30.0


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"Server {hostname!r} not found in known_hosts")
        self.key = key


class _RejectUnknown(paramiko.RejectPolicy):
    """RejectPolicy that keeps the offered key, so the refusal can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
        raise _UnknownHostKey(hostname, key)


def fingerprint(key: paramiko.PKey) -> str:
    """As `ssh-keygen -lf` and ssh print it: SHA256:<base64 without padding>."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _Watchdog:
    """Closes a connection whose command is still running `seconds` after it started."""

    def __init__(self, conn: Any, seconds: float) -> None:
        self.fired = False
        self._conn = conn
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        transport = self._conn.transport
        if transport is not None:
            transport.close()  # wakes every wait on it: channel open, exec reply, reads

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def nodelay_transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """paramiko's Transport over a socket with Nagle off from the first byte of the handshake.

    paramiko leaves Nagle on, and turning it off once connected was too late: the key exchange and
    the first channel's open still waited on delayed ACKs, 40-50 ms of most connections (a 1-host
    verify's connect and exec: 0.19 s -> 0.10 s). A jump host's channel is no socket: left as is.
    """
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return paramiko.Transport(sock, **kwargs)


def close_quietly(conn: Any) -> None:
    """Close a Fabric connection whose peer may be gone: a dead one cannot even say goodbye (its SFTP
    channel's close raises EOFError)."""
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        conn.close()


def _permanent_connect_error(exc: BaseException) -> bool:
    return isinstance(exc, paramiko.AuthenticationException | paramiko.BadHostKeyException) or (
        isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc))


def _refused(exc: BaseException) -> bool:
    """Every address of the host refused the TCP connection: it resolves, but nothing listens there."""
    errors: dict[Any, BaseException] = getattr(exc, "errors", None) or {}
    return isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) and bool(errors) and all(
        isinstance(e, ConnectionRefusedError) for e in errors.values())


def _retry_connect(exc: BaseException, *, first: bool = False) -> bool:
    """A name that does not resolve never will within a run; a refused first connection means a wrong
    address or port (no sshd there), not a host that is coming back: neither is retried. A refused
    reconnect (sshd restarting) still is."""
    if isinstance(exc, socket.gaierror) or (first and _refused(exc)):
        return False
    transient = isinstance(exc, OSError | EOFError | paramiko.SSHException | socket.timeout)
    return transient and not _permanent_connect_error(exc)


class Session:
    """An SSH session to one endpoint for one run: connect once, run many commands."""

    def __init__(self, endpoint: Endpoint, policies: Policies, *, sleep: Sleep = time.sleep, log: Log | None = None,
                 gateway: Session | None = None, connect_timeout: float = 10.0) -> None:
        self.endpoint, self.policies, self.sleep = endpoint, policies, sleep
        self.gateway = gateway
        self.log = log or (lambda line: None)
        self.connect_timeout = connect_timeout
        self._gave_up: ConnectError | None = None
        self.commands_run = 0
        self.connects = 0
        self._conn: Any = None
        # A read-only run sets this: once the host did not answer after every ssh_connect attempt,
        # later steps get the same error at once instead of waiting again.
        self.remember_failure = False
        # Called after a lost connection is re-established (the runner re-points its host lock).
        self.on_reconnect: Callable[[Session], None] | None = None
        self._lock = threading.Lock()  # a session may be shared as a gateway by parallel VM targets
        # Fabric caches one SFTP client per connection and paramiko's SFTP client is not thread-safe:
        # parallel VM targets uploading through the same hypervisor session hung without this lock.
        self.sftp_lock = threading.Lock()
        self._files = _Files(self)

    # -- connection -------------------------------------------------------------------------
    def _new_connection(self) -> Any:
        ep = self.endpoint
        # lazy=True: settings come from the inventory only, never from ~/.ssh/config or /etc files.
        config = Config(lazy=True, overrides={
            "run": {"hide": True, "warn": True, "in_stream": False},
            "runners": {"remote": _FastRemote},
            "load_ssh_configs": False,
        })
        kwargs: dict[str, Any] = {"banner_timeout": self.connect_timeout, "auth_timeout": self.connect_timeout,
                                  "transport_factory": nodelay_transport}
        if ep.key_file:
            kwargs.update(key_filename=str(Path(ep.key_file).expanduser()), look_for_keys=False, allow_agent=False)
        gateway = self.gateway.connection() if self.gateway else None
        conn = Connection(ep.host, user=ep.user, port=ep.port, config=config, connect_kwargs=kwargs,
                          connect_timeout=int(self.connect_timeout), gateway=gateway)
        # Fabric installs AutoAddPolicy (any key trusted); never keep it.
        conn.client.set_missing_host_key_policy(_RejectUnknown())
        known = Path(ep.known_hosts or "~/.ssh/known_hosts").expanduser()
        if ep.known_hosts:
            if known.exists():
                _load_known_hosts(conn.client, known)
        else:
            conn.client.load_system_host_keys()
        if ep.accept_new:
            conn.client.set_missing_host_key_policy(_AcceptNew(known))
        return conn

    def connection(self, *, once: bool = False) -> Any:
        """The open Fabric Connection, connecting with the ssh_connect policy on first use.

        once: a single connect attempt, no waits and nothing remembered (a probe inside a
        convergence wait, which does its own waiting).
        """
        conn, fresh = self._connect(once)
        if fresh and self.connects > 1 and self.on_reconnect is not None:
            self.on_reconnect(self)  # outside self._lock: the hook runs a command on this session
        return conn

    def _connect(self, once: bool = False) -> tuple[Any, bool]:
        """The connection, and whether it was opened just now."""
        with self._lock:
            if self._conn is not None and self._conn.is_connected:
                return self._conn, False
            if self._gave_up is not None:
                raise self._gave_up
            policy = replace(self.policies.ssh_connect, attempts=1) if once else self.policies.ssh_connect
            attempts = 0

            def attempt() -> Any:
                nonlocal attempts
                attempts += 1
                conn = self._new_connection()
                conn.open()
                self.connects += 1
                if conn.transport is not None:
                    conn.transport.channel_timeout = _CHANNEL_TIMEOUT_S  # paramiko's default: an hour
                return conn

            def note(state: Any) -> None:
                self.log(f"{self.endpoint.name}: connect attempt {state.attempt_number} failed "
                         f"({state.outcome.exception()}); retrying")

            try:
                first = self.connects == 0
                self._conn = retrying(policy, lambda e: _retry_connect(e, first=first), self.sleep, note)(attempt)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                error = ConnectError(self.endpoint, _connect_reason(exc, self.endpoint, self.connect_timeout), attempts)
                if self.remember_failure and not once:
                    self._gave_up = error
                raise error from None
            return self._conn, True

    def adopt(self, conn: Any) -> None:
        """Start from a connection an earlier run in this process left open to this endpoint (a fleet
        worker between one host's steps): no handshake. One that died meanwhile is reopened as any
        lost connection is, and the run's reconnect hook (the lock's) runs then."""
        with self._lock:
            self._conn, self.connects = conn, max(1, self.connects)

    def handover(self) -> Any | None:
        """The open connection, given up without closing it; None (and closed) if it is not alive."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None and not conn.is_connected:
            close_quietly(conn)
            return None
        return conn

    @property
    def connected(self) -> bool:
        """An SSH connection is open now (the exporter reports it per target)."""
        conn = self._conn
        return conn is not None and bool(conn.is_connected)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                close_quietly(self._conn)
                self._conn = None

    # -- commands ---------------------------------------------------------------------------
    def _wire(self, cmd: Command, reveal: bool) -> str:
        return wired(cmd, self.endpoint.user, reveal=reveal)

    def run(self, cmd: Command) -> CmdResult:
        """Run one command; retry what is transient; raise CommandError on anything else."""
        shown = self._wire(cmd, reveal=False)
        transient_codes = self.policies.transient.exit_codes
        transient_marks = self.policies.transient.stderr_marks
        attempts = 0

        def attempt() -> CmdResult:
            nonlocal attempts
            attempts += 1
            start = time.monotonic()
            timed_out = f"timed out after {cmd.timeout:g} s"
            dog: _Watchdog | None = None
            try:
                conn = self.connection()
                self.commands_run += 1
                with _Watchdog(conn, cmd.timeout + _WATCHDOG_GRACE_S) as dog:
                    raw = conn.run(self._wire(cmd, reveal=True), timeout=cmd.timeout)
            except CommandTimedOut as exc:
                result = CmdResult(shown, -1, mask(exc.result.stdout), mask(exc.result.stderr),
                                   time.monotonic() - start, attempts)
                raise _Transient(result, timed_out) from None
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self.close()  # reconnect on the next attempt
                result = CmdResult(shown, -1, "", mask(str(exc)), time.monotonic() - start, attempts)
                if dog is not None and dog.fired:
                    raise _Transient(result, f"{timed_out} (the host stopped answering; connection closed)") from None
                raise _Transient(result, f"connection lost: {mask(str(exc)) or type(exc).__name__}") from None
            result = CmdResult(shown, raw.exited, mask(raw.stdout), mask(raw.stderr), time.monotonic() - start,
                               attempts)
            if raw.exited == -1:
                # No exit status: the channel was closed under the command. invoke's timeout timer
                # may still be running its kill when the runner checks it, so a timeout can come
                # back as a plain result instead of CommandTimedOut: tell them apart by the clock.
                late = result.duration >= cmd.timeout or (dog is not None and dog.fired)
                raise _Transient(result, timed_out if late else "connection lost")
            self.log(f"{self.endpoint.name}: $ {shown}  -> exit {result.exit_code} in {result.duration:.2f} s")
            if result.exit_code in cmd.ok_codes:
                return result
            if result.exit_code in transient_codes:
                raise _Transient(result, f"exit code {result.exit_code} (transient)")
            mark = next((m for m in transient_marks if m in result.stderr), None)
            if mark:
                raise _Transient(result, f"exit code {result.exit_code}: {mark!r} (transient)")
            return result

        def note(state: Any) -> None:
            exc = state.outcome.exception()
            self.log(f"{self.endpoint.name}: attempt {state.attempt_number} of {shown!r} failed ({exc}); retrying")

        try:
            result = retrying(self.policies.transient, lambda e: isinstance(e, _Transient), self.sleep, note)(attempt)
        except _Transient as exc:
            raise CommandError(self.endpoint.name, exc.result, exc.reason) from None
        if result.exit_code not in cmd.ok_codes:
            raise CommandError(self.endpoint.name, result)
        return result

    def put(self, data: bytes | Path, remote_path: str, mode: int = 0o600, *, owner: str = "root",
            group: str = "root") -> None:
        """Write data to a remote file, its mode set before any content lands (see _Files.put)."""
        self._files.put(data, remote_path, mode, owner=owner, group=group)

    def get(self, remote_path: str) -> bytes:
        """Read a remote file over SFTP; a dropped connection is retried under the transient policy."""
        return self._files.get(remote_path)


class _Files:
    """A session's files over SFTP: uploads moved into place atomically, downloads; both retried
    when the connection drops, as a command is."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.endpoint, self.policies, self.sleep = session.endpoint, session.policies, session.sleep
        self.log = session.log

    def put(self, data: bytes | Path, remote_path: str, mode: int = 0o600, *, owner: str = "root",
            group: str = "root") -> None:
        """Write data to a remote file, its mode set before any content lands (secrets stay private).

        The bytes go to a private temp file over SFTP (as the SSH user), then one command (under sudo
        when the user is not root) moves it beside the destination and renames it into place: /tmp is
        often another filesystem, where `mv` copies, so only the rename in the destination's own
        directory is atomic. The destination never holds a partial file.

        A dropped connection is retried under the transient policy, like a command. Whatever fails,
        the pieces are removed: the temp file in /tmp (on the next connection, when this one died)
        and the `.NAME.uploading` copy beside the destination (by the move command itself).
        """
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        left: list[str] = []  # temp files an attempt may have left in /tmp
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            self._discard(left)  # an earlier attempt's temp file, now that the connection is back
            tmp = f"/tmp/.numa-k3s-upload-{os.getpid()}-{time.monotonic_ns()}"
            left.append(tmp)
            self._transfer(lambda sftp: _write(sftp, tmp, data, mode), f"upload to {remote_path}", attempts)
            self.session.run(_move_into_place(tmp, remote_path, mode, owner, group))
            left.remove(tmp)

        def note(state: Any) -> None:
            self.log(f"{self.endpoint.name}: upload attempt {state.attempt_number} to {remote_path} failed "
                     f"({state.outcome.exception()}); retrying")

        try:
            retrying(self.policies.transient, lambda e: isinstance(e, _Transient), self.sleep, note)(attempt)
        except _Transient as exc:
            raise CommandError(self.endpoint.name, exc.result, exc.reason) from None
        finally:
            self._discard(left)
        self.log(f"{self.endpoint.name}: put {size} bytes -> {remote_path} ({owner}:{group} mode {mode:o})")

    def get(self, remote_path: str) -> bytes:
        """Read a remote file over SFTP; a dropped connection is retried under the transient policy."""
        attempts = 0

        def attempt() -> bytes:
            nonlocal attempts
            attempts += 1
            buf = io.BytesIO()
            self._transfer(lambda sftp: sftp.getfo(remote_path, buf), f"download of {remote_path}", attempts)
            return buf.getvalue()

        try:
            return retrying(self.policies.transient, lambda e: isinstance(e, _Transient), self.sleep)(attempt)
        except _Transient as exc:
            raise CommandError(self.endpoint.name, exc.result, exc.reason) from None

    def _transfer(self, work: Callable[[Any], object], what: str, attempts: int) -> None:
        """One SFTP exchange: a lost connection is _Transient (retried); any other failure is final."""
        start = time.monotonic()
        conn = self.session.connection()
        self.session.commands_run += 1
        try:
            with self.session.sftp_lock:
                work(self._sftp(conn))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            dead = conn.transport is None or not conn.transport.is_active()
            lost = dead or isinstance(exc, EOFError | socket.timeout)
            reason = mask(str(exc)) or type(exc).__name__
            result = CmdResult(f"sftp {what}", -1, "", reason, time.monotonic() - start, attempts)
            if lost:
                self.session.close()  # the next attempt reconnects
                raise _Transient(result, f"connection lost during the {what}: {reason}") from None
            raise CommandError(self.endpoint.name, result, f"{what} failed: {reason}") from None

    def _discard(self, paths: list[str]) -> None:
        """Best effort: remove temp files an interrupted upload left in /tmp (the host may be gone)."""
        if not paths:
            return
        try:
            self.session.run(sh("rm -f {paths}", paths=list(paths), sudo=False, timeout=30,
                                why="remove upload temp files"))
            paths.clear()
        except ToolError as exc:
            self.log(f"{self.endpoint.name}: could not remove upload temp files {' '.join(paths)}: {exc}")

    @staticmethod
    def _sftp(conn: Any) -> Any:
        """Fabric's cached SFTP client, its reads and writes bounded: a hung host raises socket.timeout."""
        client = conn.sftp()
        client.get_channel().settimeout(_CHANNEL_TIMEOUT_S)
        return client


def _write(sftp: Any, tmp: str, data: bytes | Path, mode: int) -> None:
    with sftp.open(tmp, "wb") as handle:
        handle.chmod(mode)
        if isinstance(data, Path):
            handle.set_pipelined(True)
            with data.open("rb") as src:
                shutil.copyfileobj(src, handle, 1 << 20)
        else:
            handle.write(data)


def _move_into_place(tmp: str, dest: str, mode: int, owner: str, group: str) -> Command:
    """mv beside the destination (a copy across filesystems), chown, chmod, rename; on any failure (a
    full disk) remove both the temp file and the partial copy, and keep the exit code.

    Owner and mode are set on the file beside the destination, before the rename: the file is never
    visible at its path owned by the SSH user (who could rewrite a root-run binary)."""
    directory = dest.rsplit("/", 1)[0] or "/"
    beside = f"{directory.rstrip('/')}/.{dest.rsplit('/', 1)[-1]}.uploading"
    return sh("mkdir -p {dir} && mv -f {tmp} {beside} && chown {owner}:{group} {beside} && chmod {mode} {beside} "
              "&& mv -f {beside} {dest} || (rc=$?; rm -f {tmp} {beside}; exit $rc)",
              dir=directory, tmp=tmp, beside=beside, dest=dest, mode=f"{mode:o}", owner=owner, group=group,
              why="move the upload into place")


_KNOWN_HOSTS_LOCK = threading.Lock()


# known_hosts parsed once per file version, not once per connection: paramiko's load checks each
# line against every line before it, so a fleet's shared file of N hosts cost N^2 per connection and
# N^3 per rollout (100 hosts: 2.7 s of CPU in a 10 s rollout). Keyed by the file's identity, size and
# mtime: a key that accept-new appends, or an edit, is read again.
_PARSED_KNOWN_HOSTS: dict[str, tuple[tuple[int, int, int], list[Any]]] = {}


def _load_known_hosts(client: paramiko.SSHClient, path: Path) -> None:
    """client.load_host_keys(path), with the parsed entries shared by every connection of the process."""
    st = path.stat()
    version = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _KNOWN_HOSTS_LOCK:
        cached = _PARSED_KNOWN_HOSTS.get(str(path))
        if cached is None or cached[0] != version:
            # HostKeys has no public bulk setter (add() checks each key against all: the N^2 again).
            cached = (version, list(paramiko.HostKeys(str(path))._entries))  # type: ignore[attr-defined]
            _PARSED_KNOWN_HOSTS[str(path)] = cached
    # The entries are only read (our policies never add to a client's keys); each client gets its own list.
    client.get_host_keys()._entries = list(cached[1])  # type: ignore[attr-defined]
    client._host_keys_filename = str(path)  # type: ignore[attr-defined]  # as load_host_keys leaves it


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """OpenSSH's StrictHostKeyChecking=accept-new: only reached for a host with no key on record.

    A host whose recorded key differs never gets here: paramiko raises BadHostKeyException first.
    """

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        with _KNOWN_HOSTS_LOCK:  # parallel VM targets may meet their keys at the same moment
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            with self.known_hosts.open("a") as handle:
                handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def _connect_reason(exc: BaseException, ep: Endpoint, timeout: float) -> str:
    known = ep.known_hosts or "~/.ssh/known_hosts"
    where = f"[{ep.host}]:{ep.port}" if ep.port != 22 else ep.host
    if isinstance(exc, paramiko.BadHostKeyException):
        # A VM rebuilt by teardown + provision has a new key; anything else may be an impostor.
        return (f"HOST KEY CHANGED: {where} offered {exc.key.get_name()} {fingerprint(exc.key)}, not the key "
                f"recorded in {known} ({fingerprint(exc.expected_key)}); this may be an impostor (a man in the "
                "middle), so nothing was sent. If the machine was rebuilt or re-keyed on purpose, check the new "
                f"fingerprint on its console (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then forget the old key "
                f"with: ssh-keygen -R '{where}' -f {known}")
    if "not found in known_hosts" in str(exc):
        offered = f" offered {exc.key.get_name()} {fingerprint(exc.key)};" if isinstance(exc, _UnknownHostKey) else ""
        port = f"-p {ep.port} " if ep.port != 22 else ""
        return (f"unknown host key: {where} is not in {known};{offered} refused before logging in. Check the "
                "fingerprint on the host's console (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then either "
                f"set `{ep.host_key_opt_in}` for first contact (records the key; a changed key is still "
                "refused), or add it yourself: "
                f"ssh-keyscan {port}{ep.host} >> {known}")
    if isinstance(exc, socket.gaierror):
        return f"{ep.host}: name does not resolve ({exc.strerror or exc}); check ssh.host in the inventory"
    if _refused(exc):
        return f"{where}: connection refused (the name resolves, nothing listens on port {ep.port}); is sshd running?"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"authentication as {ep.user} failed with key {ep.key_file or '(agent/default keys)'}"
    # The banner wait, or the handshake that paramiko gives up on silently and then reports as "No
    # existing session" at authentication: TCP connected, sshd said nothing.
    if "SSH protocol banner" in str(exc) or "No existing session" in str(exc):
        return (f"no SSH handshake from {ep.host}:{ep.port} within {timeout:g} s: the port accepts connections "
                "but sshd does not answer (hung or overloaded)")
    return str(exc) or type(exc).__name__
