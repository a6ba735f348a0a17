"""The lab's tiny guest for tests: built once per machine by lab/build-guest.sh, and free host ports."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUEST = Path("/var/lib/numa-k3s-lab/guest")  # shared with the lab (make demo): built once per machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_guest() -> Path:
    """vmlinuz and initrd.img in GUEST; a no-op when the build is up to date."""
    done = subprocess.run(["bash", str(REPO / "lab/build-guest.sh"), str(GUEST)], capture_output=True, text=True,
                          check=False, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return GUEST


CLOUD_GUEST = Path("/var/lib/numa-k3s-lab/cloud-guest")  # lab/build-cloud-guest.sh's output, shared too


def build_cloud_guest() -> Path:
    """The real-cloud-init guest (this machine's root over 9p): vmlinuz and initrd.img in CLOUD_GUEST."""
    done = subprocess.run(["bash", str(REPO / "lab/build-cloud-guest.sh"), str(CLOUD_GUEST)], capture_output=True,
                          text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return CLOUD_GUEST
