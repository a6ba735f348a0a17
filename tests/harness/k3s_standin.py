"""Operator-style k3s airgap artifacts built from the test stand-in (tests/k3s_standin/, never shipped).

An airgap install needs three files from a k3s release: the installer, the binary and the images
tarball. standin_artifacts() writes the same three names into a folder, with the stand-in's
install.sh and k3s script in their place, so product code that copies an artifacts folder to a VM
and runs the installer exercises its real paths.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import struct
import tarfile
from pathlib import Path

STANDIN_DIR = Path(__file__).resolve().parent.parent / "k3s_standin"
DEFAULT_VERSION = "v1.31.4+k3s1"
IMAGES_NAME = "k3s-airgap-images-amd64.tar.zst"
_VERSION = re.compile(r"v\d+\.\d+\.\d+\+k3s\d+")
_VERSION_LINE = re.compile(r"^K3S_STANDIN_VERSION=.*$", re.MULTILINE)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_MAX_BLOCK = 128 * 1024
# Images an airgap tarball of that release carries (names only: nothing here is a real image).
_IMAGES = ("docker.io/rancher/klipper-helm:v0.9.3-build20241008", "docker.io/rancher/local-path-provisioner:v0.0.30",
           "docker.io/rancher/mirrored-coredns-coredns:1.12.0", "docker.io/rancher/mirrored-pause:3.6",
           "docker.io/rancher/mirrored-metrics-server:v0.7.2")


def standin_binary(version: str = DEFAULT_VERSION) -> str:
    """The stand-in k3s script with its version baked in (what `k3s --version` reports)."""
    if not _VERSION.fullmatch(version):
        raise ValueError(f"not a k3s version like v1.31.4+k3s1: {version!r}")
    text = (STANDIN_DIR / "k3s").read_text()
    baked, count = _VERSION_LINE.subn(f"K3S_STANDIN_VERSION={version}", text, count=1)
    if count != 1:
        raise RuntimeError(f"{STANDIN_DIR / 'k3s'} has no K3S_STANDIN_VERSION= line")
    return baked


def zstd_stored(data: bytes) -> bytes:
    """A valid Zstandard frame (RFC 8878) holding data in raw blocks: `zstd -d` restores it."""
    out = bytearray(_ZSTD_MAGIC)
    out.append(0xA0)  # frame header: 4-byte content size, single segment, no checksum, no dictionary
    out += struct.pack("<I", len(data))
    chunks = [data[i:i + _ZSTD_MAX_BLOCK] for i in range(0, len(data), _ZSTD_MAX_BLOCK)] or [b""]
    for i, chunk in enumerate(chunks):
        last = int(i == len(chunks) - 1)
        out += (last | len(chunk) << 3).to_bytes(3, "little")  # block type 0 = raw
        out += chunk
    return bytes(out)


def placeholder_images(version: str = DEFAULT_VERSION) -> bytes:
    """A small, deterministic .tar.zst in the shape of the airgap images tarball (a manifest only)."""
    files = {
        "manifest.json": json.dumps([{"Config": "", "Layers": [], "RepoTags": list(_IMAGES)}], indent=2) + "\n",
        "STANDIN": f"k3s stand-in placeholder for the {version} airgap images: tests only, no image inside.\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return zstd_stored(buf.getvalue())


def standin_artifacts(dest: Path, version: str = DEFAULT_VERSION) -> Path:
    """Write install.sh, k3s (version baked in, 0755) and the images placeholder into dest; return dest."""
    binary = standin_binary(version)
    dest.mkdir(parents=True, exist_ok=True)
    for name, text in (("install.sh", (STANDIN_DIR / "install.sh").read_text()), ("k3s", binary)):
        (dest / name).write_text(text)
        (dest / name).chmod(0o755)
    images = dest / IMAGES_NAME
    images.write_bytes(placeholder_images(version))
    images.chmod(0o644)
    return dest



def stop_standin(root: Path) -> list[int]:
    """SIGTERM a chroot host's stand-in daemon and API listener by their pid files; returns those pids.

    Teardown helper: the daemons outlive their SSH session, so stopping a host's sshd leaves them
    running. A pid is signalled only if that process really runs inside root (pids get reused);
    chroot.remove_root() then kills whatever else still runs there.
    """
    pids = []
    for name in ("k3s-standin.pid", "k3s-standin-httpd.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int((root / "run" / name).read_text().split()[0]))
    for pid in pids:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/root") == str(root.resolve()):
                os.kill(pid, signal.SIGTERM)
    return pids
