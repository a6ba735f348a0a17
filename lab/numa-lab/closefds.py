"""Run a command with only stdin, stdout and stderr: every other inherited descriptor closed.

    python3 closefds.py COMMAND [ARG...]

up.sh starts QEMU through this. QEMU daemonizes and outlives up.sh, keeping every descriptor it
inherited open. The operator runs `flock /tmp/numa-k3s-numalab.lock make numa-lab` (README), and
flock(1) hands its locked descriptor down to the command: held by the lab's QEMU, the lock stayed
taken for as long as the lab ran, so the next `make numa-lab`, `make numa-lab-clean` or the slow
test waited on it for ever (2026-12-06: the second run of the day never started).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: closefds.py COMMAND [ARG...]")
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.execvp(sys.argv[1], sys.argv[1:])  # noqa: S606 (the command is the caller's, as for exec)
