"""virsh against this machine's libvirtd (shared by every helper: give anything you create a unique name)."""

from __future__ import annotations

import subprocess

URI = "qemu:///system"


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, check=check, timeout=120)
