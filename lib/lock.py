"""The host lock: one run at a time per hypervisor, its holder named, a stale holder detectable.

The lock is a file created with O_EXCL (`set -C`) on the hypervisor. It records who holds it and the
pid of the sshd session that created it: while the holder's run is alive its one SSH connection is
open and that sshd process exists; when the holder dies the connection closes and the lock is
stale. Builds commands and parses their output; take() runs the protocol through a Shell.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from lib.errors import ToolError
from lib.shell import Command, seq, sh

if TYPE_CHECKING:
    from lib.transport import CmdResult, Link

# Builtins (read, case, ${...}) instead of cat, cut, dirname, grep, subshells: each fork costs the
# hypervisor ~1.5 ms of CPU, twice per run per host (acquire, release). The scripts are POSIX sh
# (with sudo, and in a batch, `sh -c` runs them: dash on Debian), and the module's shell constants
# are composed with shell.seq, never str.format-ed, so their braces are the shell's own.

# Walk up from this shell to the sshd process serving the connection (sudo and sh may sit between).
# OpenSSH 9.8 and later serve connections from a separate `sshd-session` binary. The parent's pid is
# the second field after the comm in /proc/<pid>/stat; the comm is in parentheses and may itself hold
# spaces or ") ", so the fields are taken after the last ") ". A /proc entry that cannot be read, or
# a parent that is not a number, ends the walk with an empty session (which never reads as live).
_SSHD = "sshd|sshd-session"
_SESSION = ('s=$$; while [ "$s" -gt 1 ]; do { IFS= read -r c < /proc/$s/comm; } 2>/dev/null || { s=; break; }; '
            'case "$c" in ' + _SSHD + ') break;; esac; '
            '{ IFS= read -r t < /proc/$s/stat; } 2>/dev/null || { s=; break; }; '
            't=${t##*") "}; t=${t#* }; s=${t%% *}; case "$s" in ""|*[!0-9]*) s=; break;; esac; done')


class LockHeld(ToolError):
    exit_code = 6


class LockRefused(ToolError):
    """Something at the lock path that this tool did not write: never written over, never removed."""

    exit_code = 3


@dataclass(frozen=True)
class LockState:
    state: Literal["acquired", "live", "stale", "foreign"]
    holder: str = ""  # the lock file's content: user=... client=... pid=... started=... run=... session=...

    def field(self, key: str) -> str:
        for word in self.holder.split():
            if word.startswith(f"{key}="):
                return word.split("=", 1)[1]
        return "?"

    def describe(self) -> str:
        return (f"user {self.field('user')} on {self.field('client')} (pid {self.field('pid')}), "
                f"since {self.field('started')}, run {self.field('run')}")


def holder_info(run_id: str) -> str:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"user={getpass.getuser()} client={socket.gethostname()} pid={os.getpid()} started={started} run={run_id}"


# What this tool writes into a lock file, and nothing else: one line of these six fields. A file
# at the lock path without this shape (empty, or one line like /etc/machine-id) is not a lock.
_SHAPE = "user=[^ ]+ client=[^ ]+ pid=[0-9]+ started=[^ ]+ run=[^ ]+ session=[0-9]*"
# Anything but a regular file (a device: `set -C` does not stop a write to /dev/sda; a FIFO, a
# directory, a symlink) is refused before anything is written to it.
_FOREIGN = ('if [ -L "$lock" ] || { [ -e "$lock" ] && [ ! -f "$lock" ]; }; then '
            'echo "foreign $(stat -c %F -- "$lock" 2>/dev/null)"; exit 0; fi')
_SHAPED = ('[ "$(wc -l < "$lock")" = 1 ] && grep -qxE \'' + _SHAPE + '\' "$lock"')

# The lock's directory, as dirname(1) names it ("/x.lock" -> "/", "x.lock" -> "."), without a
# process: dirname itself only for a path ending in "/", which dirname reads differently.
_DIR = 'case "$lock" in */) d=$(dirname "$lock");; */*) d=${lock%/*}; d=${d:-/};; *) d=.;; esac'
# Shell code after `lock=...; info=...` and _SESSION. The create is O_EXCL (`set -C`), set in this
# shell and unset right after instead of in a subshell (a fork).
_ACQUIRE = (
    _DIR + '; { [ -d "$d" ] || mkdir -p "$d"; } && ' + _FOREIGN + '; '
    'set -C; if { printf "%s session=%s\\n" "$info" "$s" > "$lock"; } 2>/dev/null; then '
    'set +C; echo acquired; exit 0; fi; set +C; '
    + _FOREIGN + '; if ! { ' + _SHAPED + '; }; then echo "foreign regular file"; exit 0; fi; '
    'holder=$(cat "$lock" 2>/dev/null); '
    'hs=$(printf "%s\\n" "$holder" | sed -n "s/.*session=\\([0-9]*\\).*/\\1/p"); '
    # A killed session not yet reaped is a zombie (state Z) whose comm still reads sshd: dead too.
    'st=$(sed -n "s/.*) \\([A-Z]\\).*/\\1/p" /proc/${hs:-0}/stat 2>/dev/null); '
    'hc=; { IFS= read -r hc < /proc/${hs:-0}/comm; } 2>/dev/null; '
    'case "$st:$hc" in Z:*|X:*|:*) echo "stale $holder";; '
    '*:sshd|*:sshd-session) echo "live $holder";; *) echo "stale $holder";; esac')


# After `lock=...; mark=...` (mark: `run=<id> `, quoted by sh()): $line is the lock's first line (the
# tool writes one line), and the lock is ours when that line holds the mark, as a literal string.
_READ = 'line=; { IFS= read -r line < "$lock"; } 2>/dev/null'
_OURS = 'case "$line" in *"$mark"*)'
# Removes only a regular file (no symlink, nothing else) that holds this run's mark.
_RELEASE = 'if [ -f "$lock" ] && [ ! -L "$lock" ]; then ' + _READ + '; ' + _OURS + ' rm -f "$lock";; esac; fi; true'
# After _SESSION: the lock, if still ours, now names this connection's sshd.
_REFRESH = (_READ + '; ' + _OURS + ' sed "s/ session=[0-9]*$/ session=$s/" "$lock" > "$lock.new.$$" && '
            'mv -f "$lock.new.$$" "$lock" && echo refreshed;; *) echo "lost $(cat "$lock" 2>/dev/null)";; esac')


def acquire(path: str, info: str) -> Command:
    return seq(sh("lock={path}; info={info}", path=path, info=info), _SESSION, _ACQUIRE, timeout=30,
               why="take the host lock")


def parse(stdout: str) -> LockState:
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    state, _, holder = line.partition(" ")
    if state not in ("acquired", "live", "stale", "foreign"):
        raise ToolError(f"unexpected answer from the lock command: {line!r}")
    return LockState(state, holder)  # type: ignore[arg-type]


def break_stale(path: str, holder: str) -> Command:
    """Remove the lock only if it still holds exactly the stale holder we saw (no race with a new run)."""
    return sh('lock={path}; [ -f "$lock" ] && [ ! -L "$lock" ] && [ "$(cat "$lock" 2>/dev/null)" = {holder} ] && '
              'rm -f "$lock"; true',
              path=path, holder=holder, timeout=30, why="break a stale host lock")


def refresh(path: str, run_id: str) -> Command:
    """After a reconnect: point our lock at the new sshd session, so it does not look stale.

    Answers `refreshed`, or `lost <holder>` when the lock is no longer ours (someone broke it while
    our connection was down): the run must then stop.
    """
    return seq(sh("lock={path}; mark={mark}", path=path, mark=f"run={run_id} "), _SESSION, _REFRESH, timeout=30,
               why="re-take the host lock after a reconnect")


def refreshed(stdout: str) -> LockState | None:
    """None when refresh() kept the lock; else the lock's current holder (empty: no lock at all)."""
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    if line == "refreshed":
        return None
    if not line.startswith("lost"):
        raise ToolError(f"unexpected answer from the lock command: {line!r}")
    return LockState("live", line.removeprefix("lost").strip())


def release(path: str, run_id: str) -> Command:
    return seq(sh("lock={path}; mark={mark}", path=path, mark=f"run={run_id} "), _RELEASE, timeout=30,
               why="release the host lock")


def refuse_foreign(host: str, path: str, state: LockState) -> None:
    """Stop the run when the lock path holds something this tool did not write (nothing was done)."""
    if state.state == "foreign":
        raise LockRefused(f"{host}: the lock path {path} holds a {state.holder or 'file'} that numa-k3s did not "
                          "write; it was not changed and nothing was done: point lock_path at a free name under "
                          "/run/lock (the default is /run/lock/numa-k3s.lock)")


def take(shell: Link, path: str, run_id: str, host: str, say: Callable[[str], None],
         first: Callable[[Command], CmdResult] | None = None) -> Callable[[], None]:
    """Take the host lock through the hypervisor's shell, breaking a stale one (and saying so);
    raises LockHeld when a live run holds it. Returns what re-points the lock at a new SSH session
    after a reconnect (give it to the pool's on_reconnect), which raises LockHeld if it was lost.
    first sends the first attempt (the runner's: at the head of the first contact's reads)."""
    state = parse((first or shell.run)(acquire(path, holder_info(run_id))).stdout)
    if state.state == "live" and state.field("run") == run_id:
        state = LockState("acquired", state.holder)  # ours already: an earlier attempt's answer was lost
    refuse_foreign(host, path, state)
    if state.state == "stale":
        # Its holder's SSH session is gone, so that run is gone too (a run that reconnects points
        # the lock at its new session at once: refresh()). Breaking it is what resume after a
        # crash needs; the break only removes exactly the content seen, so it cannot race a new run.
        shell.run(break_stale(path, state.holder))
        say(f"{host}: broke a stale host lock of {state.describe()} (its SSH session is gone)")
        state = parse(shell.run(acquire(path, holder_info(run_id))).stdout)
    if state.state != "acquired":
        raise LockHeld(f"{host}: another run holds the host lock {path}: {state.describe()}; "
                       "nothing was done: wait for it to finish")

    def keep() -> None:
        lost = refreshed(shell.run(refresh(path, run_id)).stdout)
        if lost is not None:
            raise LockHeld(f"{host}: lost the host lock {path} while reconnecting; it is now held "
                           f"by {lost.describe() if lost.holder else 'nobody'}; stopped")

    return keep
