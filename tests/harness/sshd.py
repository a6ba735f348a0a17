"""Real OpenSSH test hosts: one sshd per host on 127.0.0.1, each on its own random port.

Each sshd runs in the foreground (-D) as our child with its own config, host key and log, so a
host can be stopped, counted (authentications in its VERBOSE log) and inspected independently.
Every process is stopped by PID, children included, so nothing outlives the test session.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import paramiko

# A safety net, not a speed test: on a loaded machine sshd has taken over 5 s to start listening.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SshHost:
    name: str
    host: str
    port: int
    user: str
    key_file: Path  # the farm's client private key
    known_hosts: Path  # the farm's known_hosts: "[127.0.0.1]:PORT ssh-ed25519 ..." per running host
    log_file: Path
    pid: int
    sysroot: Path | None


def count_auths(host: SshHost) -> int:
    """Successful logins so far (LogLevel VERBOSE logs one "Accepted publickey" per authentication)."""
    try:
        return host.log_file.read_text(errors="replace").count("Accepted publickey")
    except FileNotFoundError:
        return 0


def paramiko_client(host: SshHost) -> paramiko.SSHClient:
    """A connected client that really checks the host key against the farm's known_hosts."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(host.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host.host, port=host.port, username=host.user, key_filename=str(host.key_file),
                   look_for_keys=False, allow_agent=False, timeout=10)
    return client


def fabric_connection(host: SshHost) -> Any:
    """A fabric.Connection with host keys checked.

    Fabric 3 never loads known_hosts itself and installs AutoAddPolicy, which trusts any key; we
    load the farm's file and switch to RejectPolicy so a wrong or unknown host key fails.
    run.in_stream=False: invoke otherwise reads our stdin, which pytest's capture makes raise OSError.
    """
    import fabric

    config = fabric.Config(overrides={"run": {"in_stream": False}})
    conn = fabric.Connection(host.host, port=host.port, user=host.user, config=config, connect_kwargs={
        "key_filename": str(host.key_file), "look_for_keys": False, "allow_agent": False})
    conn.client.load_host_keys(str(host.known_hosts))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


def _sshd_binary() -> str:
    # sshd refuses to re-exec unless started by absolute path; /usr/sbin may be off a non-root PATH.
    found = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise RuntimeError("sshd not found: install openssh-server")
    return os.path.abspath(found)


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])  # after "(comm)": state, ppid
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """PIDs below pid, deepest first (the order to kill them so each parent reaps its child)."""
    tree = _children_map()
    out: list[int] = []

    def walk(p: int) -> None:
        for child in tree.get(p, []):
            walk(child)
            out.append(child)

    walk(pid)
    return out


def _state(pid: int) -> str:
    """The process state letter from /proc/PID/stat ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return ""


def _reaped(pid: int) -> bool:
    """True once pid is gone, or is a zombie already orphaned to PID 1: only PID 1 can reap it now."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X") and fields[1] == "1"


class SshdFarm:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.user = pwd.getpwuid(os.geteuid()).pw_name  # sshd runs as us: log in as us
        self.client_key = workdir / "client_ed25519"
        if not self.client_key.exists():
            _keygen(self.client_key, "sshd-farm-client")
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text("")
        self.hosts: dict[str, SshHost] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._host_keys: dict[str, str] = {}
        self._configs: dict[str, Path] = {}  # each host's sshd_config: a restart reuses port and key
        self._wraps: dict[str, tuple[str, ...]] = {}  # a command sshd runs under (start(wrap=...))
        self._seq = 0
        if os.geteuid() == 0:  # privilege separation directory sshd insists on when run as root
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)

    def __enter__(self) -> SshdFarm:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()

    def start(self, name: str, *, sysroot: Path | None = None, extra_config: Sequence[str] = (),
              wrap: Sequence[str] = ()) -> SshHost:
        """Start one sshd; extra_config lines are appended to its sshd_config (e.g. "MaxStartups 1").

        wrap: a command line sshd is exec'd under, ending in one that runs its arguments (e.g. an
        `unshare -m ... sh -c '...; exec "$@"' sh` that changes what only this host sees).
        """
        if name in self.hosts:
            raise ValueError(f"host {name!r} is already running")
        self._seq += 1
        hostdir = self.workdir / f"{name}-{self._seq}"  # unique, so a name can be restarted
        hostdir.mkdir(parents=True)
        host_key = hostdir / "ssh_host_ed25519_key"
        _keygen(host_key, f"sshd-farm-{name}")
        last_error = ""
        for _attempt in range(3):  # the port can be taken between _free_port() and sshd's bind()
            port = _free_port()
            log = hostdir / f"sshd-{port}.log"
            config = hostdir / "sshd_config"
            config.write_text(self._config(port, host_key, hostdir, extra_config))
            proc = self._spawn(config, log, tuple(wrap))
            error = self._wait_listening(proc, port, log)
            if error is None:
                host = SshHost(name, "127.0.0.1", port, self.user, self.client_key, self.known_hosts, log,
                               proc.pid, sysroot)
                self.hosts[name] = host
                self._procs[name] = proc
                self._host_keys[name] = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])
                self._configs[name] = config
                self._wraps[name] = tuple(wrap)
                self._write_known_hosts()
                return host
            self._kill_tree(proc)
            last_error = error
            if "Address already in use" not in error:
                break
        raise RuntimeError(f"sshd for {name!r} did not start: {last_error}")

    def stop(self, name: str) -> None:
        self.unpause(name)  # a stopped process would not act on SIGTERM
        proc = self._procs.pop(name)
        del self.hosts[name], self._host_keys[name], self._configs[name]
        self._wraps.pop(name, None)
        self._write_known_hosts()
        self._kill_tree(proc)

    # -- faults: a host's sshd dies, comes back, or freezes ------------------------------------
    def kill(self, name: str) -> list[int]:
        """SIGKILL the host's whole sshd tree: the listener and every per-connection process (and
        the commands they run), so live connections really drop. The host stays known (its port,
        key and known_hosts line): restart() brings it back as it was. Returns the killed PIDs:
        orphans among them stay zombies until PID 1 reaps them (here: every ~2 s; a real init at once).

        The tree is frozen first, then killed at once: killed one by one, a shell whose `sleep` died
        first would go on to run the rest of its command line, which no crash does.
        """
        proc = self._procs[name]
        self.pause(name)
        pids = [proc.pid, *descendants(proc.pid)]  # frozen: nothing can fork any more
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while not all(_reaped(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        return pids

    def restart(self, name: str, *, new_host_key: bool = False) -> SshHost:
        """Start a killed host again on the same port with the same host key, so known_hosts still
        matches. new_host_key=True: a new key instead (the farm's known_hosts then has the new one;
        a test that keeps a copy of the old file sees a changed key, as after a rebuild or an
        impostor)."""
        old, proc = self.hosts[name], self._procs[name]
        if proc.poll() is None:
            raise ValueError(f"host {name!r} is still running: kill() it first")
        config = self._configs[name]
        if new_host_key:
            key = Path(next(line.split(None, 1)[1] for line in config.read_text().splitlines()
                            if line.startswith("HostKey ")))
            key.unlink()
            Path(f"{key}.pub").unlink()
            _keygen(key, f"sshd-farm-{name}-rekeyed")
            self._host_keys[name] = " ".join(Path(f"{key}.pub").read_text().split()[:2])
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the port was ours a moment ago; a connection's socket may still hold it briefly
            proc = self._spawn(config, old.log_file, self._wraps.get(name, ()))
            error = self._wait_listening(proc, old.port, old.log_file, since=old.log_file.stat().st_size)
            if error is None:
                break
            self._kill_tree(proc)
            if "Address already in use" not in error or time.monotonic() > deadline:
                raise RuntimeError(f"sshd for {name!r} did not restart: {error}")
            time.sleep(0.1)
        host = replace(old, pid=proc.pid)
        self.hosts[name], self._procs[name] = host, proc
        self._write_known_hosts()
        return host

    def pause(self, name: str) -> None:
        """SIGSTOP the host's whole sshd tree: TCP still connects (the kernel queues it) and open
        connections stay up, but nothing answers: a hung host."""
        pids = [self._procs[name].pid, *reversed(descendants(self._procs[name].pid))]  # parents first
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + STOP_TIMEOUT_S  # the signal is delivered asynchronously
        while not all(_state(pid) in ("T", "Z", "X", "") for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.005)

    def unpause(self, name: str) -> None:
        """SIGCONT the tree pause() stopped."""
        for pid in [*descendants(self._procs[name].pid), self._procs[name].pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop_all(self) -> None:
        for name in list(self._procs):
            self.stop(name)

    def _config(self, port: int, host_key: Path, hostdir: Path, extra: Sequence[str]) -> str:
        lines = [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {hostdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.client_key}.pub",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # keys live in pytest tmp dirs whose modes sshd would otherwise reject
            "MaxStartups 100:30:200",  # parallel connections from many workers must not be dropped
            "MaxSessions 100",
            "Subsystem sftp internal-sftp",
            # bash then skips root's ~/.bashrc (pyenv init, ~200 ms per command), like a real host.
            "SetEnv SHLVL=1",
            "LogLevel VERBOSE",  # logs "Accepted publickey" per login: count_auths() relies on it
            "UseDNS no",
            "PrintMotd no",
            *extra,
        ]
        return "\n".join(lines) + "\n"

    def _spawn(self, config: Path, log: Path, wrap: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        # setpriv (util-linux) execs sshd with PR_SET_PDEATHSIG: if pytest is SIGKILLed, the listener
        # gets SIGTERM instead of leaking. (preexec_fn could do it, but is unsafe with paramiko threads.)
        # The death signal follows the *thread* that forks: start hosts from the main thread.
        prefix = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
        # stdout/stderr also go to the log: errors printed before sshd opens -E land there too.
        with log.open("ab") as out:
            return subprocess.Popen([*prefix, *wrap, _sshd_binary(), "-D", "-e", "-f", str(config), "-E", str(log)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)

    def _wait_listening(self, proc: subprocess.Popen[bytes], port: int, log: Path, since: int = 0) -> str | None:
        """None once sshd logged that it listens on port and the port accepts TCP; else the error.

        since: where this sshd's lines start in the log (a restarted host appends to its old log).
        """
        deadline = time.monotonic() + START_TIMEOUT_S
        marker = f"Server listening on 127.0.0.1 port {port}"  # proves it is our sshd on that port
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"exited with {proc.returncode}; log tail:\n{_tail(log)}"
            if marker in log.read_bytes()[since:].decode(errors="replace"):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return None
            time.sleep(0.02)
        return f"not listening on port {port} after {START_TIMEOUT_S} s; log tail:\n{_tail(log)}"

    def _write_known_hosts(self) -> None:
        # Rewritten from running hosts only: a reused port with a new key must not meet a stale line.
        lines = [f"[127.0.0.1]:{self.hosts[n].port} {key}\n" for n, key in self._host_keys.items()]
        tmp = self.known_hosts.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        tmp.replace(self.known_hosts)

    @staticmethod
    def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
        # Per-connection sshd children call setsid(), so a process-group kill would miss them: walk
        # the PID tree, taken before anything dies. Kill deepest first and wait for each to be reaped
        # while its parent still lives: an orphan reparents to PID 1, which on these machines is not
        # an init and reaps only every ~2 s, so it would linger as a zombie (kill(pid, 0) succeeds).
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for pid in descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            while not _reaped(pid) and time.monotonic() < deadline:
                time.sleep(0.005)
            if not _reaped(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


def start_hosts(farm: SshdFarm, prefix: str, n: int) -> list[SshHost]:
    """n hosts named prefix0 .. prefix{n-1}, started one after another from the calling (main) thread."""
    return [farm.start(f"{prefix}{i}") for i in range(n)]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
