"""Many reads in one command: the script that runs them one after another on a host, and the
split of its output back into one answer per read (lib/recorded.py's first contact uses both).

Each read runs in its own subshell, under `timeout`, with its stdout, exit code, clock and stderr
framed by a token drawn for this batch (so no output can forge a frame). A read that failed, timed
out or is missing from the output has no answer here: whoever needs it runs it alone, with its own
retry policy, exactly as without a batch.
"""

from __future__ import annotations

import re
import secrets

from lib.shell import Command, quote, wired
from lib.transport import CmdResult

# A read in a batch gets at most this long: a slow one is left to its step, which waits for it
# under its own timeout and policies, instead of holding up every read after it.
READ_TIMEOUT_S = 20


def new_token() -> str:
    return secrets.token_hex(8)


def batch_command(reads: list[Command], user: str, token: str) -> Command:
    """One command that runs every read as `user` would alone (sudo where it needs root)."""
    parts = ['e=$(mktemp) || exit 1; trap \'rm -f "$e"\' EXIT; now() { date +%s.%N; }']
    for i, cmd in enumerate(reads):
        limit = min(cmd.timeout, READ_TIMEOUT_S)
        line = f"timeout {limit:g} sh -c {quote(wired(cmd, user, reveal=True))}"
        parts.append(f"t=$(now); printf '@@{token}:o:{i}@@'; {line} 2>\"$e\" </dev/null; rc=$?; "
                     f"printf '@@{token}:r:{i}:%s:%s:%s@@' \"$rc\" \"$t\" \"$(now)\"; cat \"$e\"; "
                     f"printf '@@{token}:x:{i}@@'")
    return Command(shown=f"(first contact: {len(reads)} reads of this run's steps at once; each is logged "
                         f"as a step takes its answer)",
                   real="; ".join(parts) + "; exit 0", timeout=READ_TIMEOUT_S * len(reads) + 30, sudo=False,
                   why="read everything the run's steps will read on this host, in one round trip")


def split_batch(stdout: str, reads: list[Command], user: str, token: str) -> dict[int, CmdResult]:
    """Read index -> its answer, for each read the batch ran to the end (any exit code)."""
    frame = re.compile(rf"@@{token}:o:(\d+)@@(.*?)@@{token}:r:\1:(-?\d+):([\d.]+):([\d.]+)@@(.*?)@@{token}:x:\1@@",
                       re.S)
    out: dict[int, CmdResult] = {}
    for m in frame.finditer(stdout):
        i = int(m[1])
        if i >= len(reads):
            continue
        took = max(0.0, float(m[5]) - float(m[4]))
        out[i] = CmdResult(wired(reads[i], user, reveal=False), int(m[3]), m[2], m[6], took)
    return out
