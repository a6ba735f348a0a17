"""The tiny guest, made to survive a restart as a real VM does (tests only, for the day-two lab tests).

lab/build-guest.sh's guest lives in RAM: every boot makes a new SSH host key and forgets k3s. A real
VM keeps both on its disk, and starts its enabled k3s unit at boot. Restarting a VM (memory change,
k3s upgrade) is only meaningful with that, so this builds, without touching the shared guest, a
second initramfs archive appended to its initrd.img (the kernel unpacks both; later files win):

- /init: the guest's own init, with three additions: its OS disk (vda) formatted on first boot and
  bind-mounted over the directories a real guest keeps (SSH host key, /etc/rancher, /var/lib/rancher,
  /var/lib/numa-k3s, /usr/local/bin, the unit files, /var/log); at the end, the k3s unit's ExecStart
  started as systemd starts an enabled unit; busybox acpid, so the ACPI power button (virsh shutdown)
  stops k3s, syncs and powers off;
- the kernel modules that needs (ext4 and its dependencies, the ACPI button, evdev), taken from the
  kernel package the guest was built from.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

MODULES = ("crc16", "mbcache", "jbd2", "crc32c_generic", "ext4", "button", "evdev")
KEPT = ("/etc/ssh", "/etc/rancher", "/var/lib/rancher", "/var/lib/numa-k3s", "/usr/local/bin", "/etc/systemd",
        "/var/log")

PERSIST = r"""
# -- numa-k3s tests: state on the OS disk, as a real guest keeps it (tests/harness/persistent_guest.py) --
for m in MODULES; do insmod "/lib/modules/$kver/$m.ko" 2>/dev/null || say "insmod $m failed"; done
mkdir -p /persist
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount /dev/vda /persist 2>/dev/null; then
    # A small filesystem (64 MiB, few inodes): formatting the whole disk takes minutes under TCG.
    mke2fs -q -i 65536 -m 0 /dev/vda 65536 >/dev/null && mount /dev/vda /persist || say "no persistent disk"
fi
for d in KEPT; do
    mkdir -p "$d" "/persist$d"
    mark=/persist/.seeded$(echo "$d" | tr / _)
    [ -e "$mark" ] || { cp -a "$d/." "/persist$d/" 2>/dev/null; touch "$mark"; }
    mount --bind "/persist$d" "$d"
done
mkdir -p /etc/acpi/PWRF
cat > /etc/acpi/PWRF/00000080 <<'ACPI'
#!/bin/sh
# The power button: stop k3s as systemd would on shutdown, flush the disk, power off.
echo "tinyguest: ACPI power button: shutting down" > /dev/console
[ -x /usr/local/bin/k3s-killall.sh ] && /usr/local/bin/k3s-killall.sh >/dev/null 2>&1
sync
poweroff -f
ACPI
chmod 755 /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /var/log/acpid.log
"""

START_UNITS = r"""
# -- numa-k3s tests: start the enabled k3s unit, as systemd does at boot --
for unit in k3s k3s-agent; do
    f=/etc/systemd/system/$unit.service
    [ -f "$f" ] || continue
    cmd=$(sed -n 's/^ExecStart=//p' "$f")
    ( set -a; [ -f "$f.env" ] && . "$f.env"; set +a; exec setsid sh -c "exec $cmd" ) \
        </dev/null >>"/var/log/$unit.log" 2>&1 &
    say "started $unit"
done
"""


def _original_init(initrd: Path) -> str:
    done = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "init"], input=gzip.decompress(initrd.read_bytes()),
                          capture_output=True, check=True, timeout=120)
    return done.stdout.decode()


def patched_init(init: str) -> str:
    """Pure: the guest's init with the persistence block after its modules, the units before its last loop."""
    after_modules = "done < /lib/tinyguest/modules\n"
    last_loop = "# PID 1 must never exit"
    if after_modules not in init or last_loop not in init:
        raise RuntimeError("the tiny guest's init changed: tests/harness/persistent_guest.py must follow it")
    persist = PERSIST.replace("MODULES", " ".join(MODULES)).replace("KEPT", " ".join(KEPT))
    return init.replace(after_modules, after_modules + persist, 1).replace(last_loop, START_UNITS + last_loop, 1)


def _modules(guest: Path, kver: str) -> dict[str, bytes]:
    deb = next((guest / "debs").glob(f"linux-image-{kver}_*.deb"))
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True, timeout=300).stdout
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if name.endswith(".ko") and name[:-3] in MODULES and f"/modules/{kver}/" in member.name:
                handle = tar.extractfile(member)
                assert handle is not None
                found[name[:-3]] = handle.read()
    missing = set(MODULES) - set(found)
    if missing:
        raise RuntimeError(f"{deb}: no module(s) {', '.join(sorted(missing))}")
    return found


def persistent_initrd(guest: Path, dest: Path) -> Path:
    """dest/initrd-persistent.img: the guest's initrd.img with the overlay archive appended."""
    kver = (guest / "kernel-version").read_text().strip()
    base = (guest / "initrd.img").read_bytes()
    out = dest / f"initrd-persistent-{hashlib.sha256(base).hexdigest()[:12]}.img"
    if out.exists():
        return out
    tree = dest / "overlay"
    (tree / f"lib/modules/{kver}").mkdir(parents=True, exist_ok=True)
    (tree / "init").write_text(patched_init(_original_init(guest / "initrd.img")))
    (tree / "init").chmod(0o755)
    for name, blob in _modules(guest, kver).items():
        (tree / f"lib/modules/{kver}/{name}.ko").write_bytes(blob)
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--owner=0:0", "--quiet"], input="\n".join(files).encode(),
                             cwd=tree, capture_output=True, check=True, timeout=120).stdout
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(base + gzip.compress(archive))
    tmp.rename(out)
    return out
