"""Busybox chroot test hosts: each fake "VM" is a real sshd whose sessions are confined to their own root.

The k3s tests need several machines whose /etc/rancher/k3s, /usr/local/bin and /var/lib/rancher do
not collide on this one host. Each gets a minimal busybox root and its own sshd from the SshdFarm with
`ChrootDirectory <root>` appended to its config. What that needs (OpenSSH 9.2, checked here):

- Every component of the root's path, the root included, must be root-owned and not group- or
  world-writable: sshd refuses the session otherwise ("bad ownership or modes for chroot directory
  component"). Pytest's tmp dirs live under /tmp (1777), so roots live under ROOTS_BASE instead.
- SFTP needs `Subsystem sftp internal-sftp` (no binary inside the root): SshdFarm already writes it.
- sshd takes the login shell from the HOST's passwd (root: /bin/bash here), then runs it inside the
  root, so the root gets /bin/sh plus a wrapper at that shell's path that execs /bin/sh: every
  remote command really runs under busybox ash, like the busybox+dropbear VM guests.
- No /proc is mounted (nothing to unmount, nothing to leak): pid checks inside use `kill -0`.
  `hostname` inside still reports the host's UTS name; /etc/hostname holds the fake host's name.

Processes started inside a root (daemons) outlive their SSH session and are not sshd's children any
more, so stopping the sshd does not stop them: `kill_root_processes(root)` finds every process whose
/proc/PID/root is that root and kills it; `remove_root(root)` does that, unmounts anything mounted
below the root, then deletes it.
"""

# ruff: noqa: S103 - a root filesystem needs the usual modes: 0755 dirs, 1777 /tmp, 0666 device nodes
from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.sshd import SshdFarm, SshHost

# Debian packages fetched for the roots are cached here (shared with the lab, never in the repo).
DEB_CACHE = Path(os.environ.get("NUMA_K3S_DEB_CACHE", "/var/lib/numa-k3s-lab/debs"))
GUEST_DEBS = Path("/var/lib/numa-k3s-lab/guest/debs")  # lab/build-guest.sh's cache: read when it has one
# Parent of the test roots: every component root-owned and 0755, as ChrootDirectory demands.
ROOTS_BASE = Path("/run/numa-k3s-test-roots")
KILL_TIMEOUT_S = 5.0

_PT_INTERP = 3
_DEVICES = {  # name: (major, minor); world read/write like on any Linux host
    "null": (1, 3), "zero": (1, 5), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (runs with no libc in the root)."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:  # ELFCLASS64 only
                return False
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != _PT_INTERP for i in range(phnum))


def busybox_binary() -> Path:
    """A static busybox: the host's /bin/busybox when it is static (busybox-static installed), else the
    busybox-static .deb fetched once with `apt-get download` into DEB_CACHE and unpacked there."""
    host = Path("/bin/busybox")
    if is_static_elf(host):
        return host
    unpacked = DEB_CACHE / "busybox-static" / "bin" / "busybox"
    if is_static_elf(unpacked):
        return unpacked
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    with (DEB_CACHE / ".lock").open("w") as lock:  # parallel test processes fetch it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_static_elf(unpacked):
            debs = sorted(DEB_CACHE.glob("busybox-static_*.deb")) or sorted(GUEST_DEBS.glob("busybox-static_*.deb"))
            if not debs:
                _apt_download("busybox-static")
                debs = sorted(DEB_CACHE.glob("busybox-static_*.deb"))
            tmp = Path(tempfile.mkdtemp(prefix=".busybox-static-", dir=DEB_CACHE))
            subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(tmp)], check=True, capture_output=True)
            shutil.rmtree(unpacked.parent.parent, ignore_errors=True)
            tmp.rename(unpacked.parent.parent)
    if not is_static_elf(unpacked):
        raise RuntimeError(f"{unpacked} is not a static busybox")
    return unpacked


def _apt_download(package: str) -> None:
    cmd = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package]
    done = subprocess.run(cmd, check=False, cwd=DEB_CACHE, capture_output=True, text=True)
    if done.returncode != 0:  # a fresh machine has no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        done = subprocess.run(cmd, check=False, cwd=DEB_CACHE, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"apt-get download {package} failed: {done.stderr.strip()}")


def new_roots_dir(prefix: str = "roots-") -> Path:
    """A fresh directory for test roots whose every path component passes sshd's chroot checks."""
    ROOTS_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(ROOTS_BASE, 0o755)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=ROOTS_BASE))
    os.chmod(base, 0o755)
    return base


def busybox_root(path: Path, *, hostname: str) -> Path:
    """Build a minimal root at path: static busybox and its applet links, root user, /dev nodes.

    For chroot_host(), path must lie where sshd accepts a ChrootDirectory: under new_roots_dir().
    """
    path.mkdir(mode=0o755, parents=True, exist_ok=False)
    os.chmod(path, 0o755)  # mkdir's mode is cut by the umask; sshd wants exactly no g/o write
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "etc", "dev", "root", "root/.ssh",
              "run", "var/log", "var/lib", "var/run", "home"):
        (path / d).mkdir(parents=True, exist_ok=True)
    os.chmod(path / "root", 0o700)
    os.chmod(path / "root/.ssh", 0o700)
    (path / "tmp").mkdir()
    os.chmod(path / "tmp", 0o1777)
    busybox = path / "bin/busybox"
    shutil.copy2(busybox_binary(), busybox)
    os.chmod(busybox, 0o755)
    # The links busybox --install -s would make; made from here because --install resolves its own
    # path through /proc/self/exe, which the root does not have.
    listing = subprocess.run([str(busybox), "--list-full"], check=True, capture_output=True, text=True).stdout
    for rel in listing.split():
        link = path / rel
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    _login_shell_wrapper(path)
    etc = path / "etc"
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(etc / "shadow", 0o600)
    (etc / "hostname").write_text(f"{hostname}\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n")
    (etc / "os-release").write_text(
        'PRETTY_NAME="BusyBox chroot test host"\nNAME="BusyBox"\nID=busybox\n')
    for name, (major, minor) in _DEVICES.items():
        node = path / "dev" / name
        os.mknod(node, 0o666 | 0o020000, os.makedev(major, minor))  # S_IFCHR
        os.chmod(node, 0o666)
    return path


def _login_shell_wrapper(root: Path) -> None:
    """sshd runs the host passwd's shell for our user inside the root: make that path exec busybox sh."""
    shell = pwd.getpwuid(os.geteuid()).pw_shell or "/bin/sh"
    target = root / shell.lstrip("/")
    if target.exists() or target.is_symlink():
        return  # /bin/sh itself, or a shell busybox provides as an applet
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text('#!/bin/sh\n# sshd runs the host\'s login shell here: busybox sh stands in.\nexec /bin/sh "$@"\n')
    os.chmod(target, 0o755)


def check_chroot_path(root: Path) -> None:
    """Raise the error sshd would log, before starting it: every component root-owned, no g/o write."""
    resolved = root.resolve()
    for current in (*reversed(resolved.parents), resolved):
        st = current.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise RuntimeError(f"ChrootDirectory {root}: component {current} is uid {st.st_uid} mode "
                               f"{st.st_mode & 0o7777:o}; sshd needs root-owned, not group/world-writable")


def chroot_sshd_config(root: Path) -> list[str]:
    """The lines a farm host needs on top of SshdFarm's own config to confine sessions to root.

    SshdFarm already writes `Subsystem sftp internal-sftp` (an sftp-server binary would have to live
    inside the root) and `StrictModes no`; `ChrootDirectory` is the only line to add.
    """
    return [f"ChrootDirectory {root}"]


def chroot_host(farm: SshdFarm, name: str, root: Path) -> SshHost:
    """Start a farm sshd whose sessions (shell commands and SFTP) run inside root."""
    check_chroot_path(root)
    return farm.start(name, extra_config=chroot_sshd_config(root))


def _proc_root(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/root")
    except OSError:
        return None


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def root_pids(root: Path) -> list[int]:
    """Live (non-zombie) processes whose root directory is root: everything started inside it."""
    want = str(root.resolve())
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _proc_root(int(entry)) == want and not _is_zombie(int(entry)):
            pids.append(int(entry))
    return sorted(pids)


def kill_root_processes(root: Path, timeout: float = KILL_TIMEOUT_S) -> list[int]:
    """SIGTERM every process inside root, SIGKILL what is left after timeout; returns the pids found.

    Orphans there are reaped by PID 1, which here is no init and does so every ~2 s, so a killed
    process may linger as a zombie: root_pids() does not count zombies.
    """
    found = root_pids(root)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in root_pids(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while root_pids(root) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not root_pids(root):
            break
    return found


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below root, deepest first."""
    prefix = str(root.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_root(root: Path) -> None:
    """Kill what runs inside root, unmount what is mounted below it, then delete it."""
    if not root.exists():
        return
    kill_root_processes(root)
    for point in mounts_under(root):
        if subprocess.run(["umount", point], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], check=True, capture_output=True)
    if mounts_under(root):
        raise RuntimeError(f"still mounted under {root}: {mounts_under(root)}")
    shutil.rmtree(root)
