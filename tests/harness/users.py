"""Real non-root login users on this machine, with or without passwordless sudo (Debian's sudo).

A user is created with useradd under a unique name, its password field '*' (no password, but not
locked: sshd without PAM refuses a locked account), and for `nopasswd` a sudoers drop-in checked by
`visudo -c` before it is put in place. Everything is removed again: the user, its home, the drop-in.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

SUDOERS_D = Path("/etc/sudoers.d")


def sudo_available() -> bool:
    return os.geteuid() == 0 and shutil.which("sudo") is not None and shutil.which("useradd") is not None


@contextlib.contextmanager
def login_user(prefix: str, *, nopasswd: bool) -> Iterator[str]:
    name = f"{prefix}{secrets.token_hex(3)}"
    dropin = SUDOERS_D / f"numa-k3s-test-{name}"
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", "-p", "*", name], check=True, capture_output=True)
    try:
        if nopasswd:
            tmp = SUDOERS_D / f".{dropin.name}.new"
            tmp.write_text(f"{name} ALL=(ALL) NOPASSWD:ALL\n")
            tmp.chmod(0o440)
            subprocess.run(["visudo", "-c", "-q", "-f", str(tmp)], check=True, capture_output=True)
            tmp.rename(dropin)
        yield name
    finally:
        dropin.unlink(missing_ok=True)
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)
