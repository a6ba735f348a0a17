"""Processes on the operator's machine: what a step builds locally before it goes to a host.

The seed ISO is built here with xorriso, never on the hypervisor: lib/remote.py only talks to hosts.
"""

from __future__ import annotations

import os
from pathlib import Path

from lib.errors import ToolError


class LocalToolError(ToolError):
    exit_code = 4


# Fixed timestamps make the seed ISO reproducible: the same seed files give the same bytes, so
# verification can compare content hashes. 2000-01-01T00:00:00Z.
SEED_EPOCH = 946684800


def build_seed_iso(files: dict[str, str]) -> bytes:
    """A NoCloud seed ISO (volume label cidata, Joliet + Rock Ridge) built on this machine with xorriso."""
    import shutil
    import subprocess
    import tempfile

    xorriso = shutil.which("xorriso")
    if xorriso is None:
        raise LocalToolError("xorriso is not installed on this machine (apt-get install xorriso); it builds the "
                             "cloud-init seed ISOs reproducibly")
    with tempfile.TemporaryDirectory(prefix="seed-") as tmp:
        names = sorted(files)
        for name in names:
            path = Path(tmp) / name
            path.write_text(files[name])
            os.utime(path, (SEED_EPOCH, SEED_EPOCH))
        out = Path(tmp) / "seed.iso"
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(SEED_EPOCH), TZ="UTC")
        done = subprocess.run([xorriso, "-as", "mkisofs", "-quiet", "-o", str(out), "-V", "cidata", "-J", "-R",
                               *[str(Path(tmp) / n) for n in names]], capture_output=True, text=True, env=env,
                              check=False, timeout=60)
        if done.returncode != 0:
            raise LocalToolError(f"xorriso failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        return out.read_bytes()


def read_seed_iso(iso: bytes) -> dict[str, str] | None:
    """The files of a seed ISO (the hypervisor's copy, for a plan's diff), read back with xorriso;
    None when xorriso cannot read it (not an ISO, or no xorriso here): the plan then shows bodies."""
    import shutil
    import subprocess
    import tempfile

    xorriso = shutil.which("xorriso")
    if xorriso is None:
        return None
    with tempfile.TemporaryDirectory(prefix="seed-read-") as tmp:
        src, out = Path(tmp) / "seed.iso", Path(tmp) / "files"
        src.write_bytes(iso)
        done = subprocess.run([xorriso, "-osirrox", "on", "-indev", str(src), "-extract", "/", str(out)],
                              capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0 or not out.is_dir():
            return None
        try:
            return {p.name: p.read_text() for p in sorted(out.iterdir()) if p.is_file()}
        except (OSError, UnicodeDecodeError):
            return None
