#!/usr/bin/env bash
# Build the NUMA lab's boot files: a Debian kernel and a busybox initramfs whose /init mounts this
# machine's root read-only over 9p, lays the lab's persistent disk over it (overlayfs) and hands over
# to systemd as PID 1 (lab/numa-lab/init). See lab/numa-lab/README.md.
#
#   lab/numa-lab/build.sh OUTDIR      writes OUTDIR/vmlinuz and OUTDIR/initrd.img
#
# Everything comes from Debian packages (`apt-get download` into OUTDIR/debs, kept as a cache).
# Rebuilt only when an output is missing or OUTDIR/.stamp differs from the sha256 of this script and init.
set -Eeuo pipefail
trap 'echo "numa-lab build: ERROR: line $LINENO: \"$BASH_COMMAND\" failed (exit $?)" >&2' ERR

OUT=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
SUM=$(cat "$here/build.sh" "$here/init" | sha256sum | cut -d' ' -f1)
# In load order; each one's own dependencies are added before it (modinfo depends=).
WANT_MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
              netfs fscache 9pnet 9pnet_virtio 9p overlay failover net_failover virtio_net virtio_blk
              crc16 crc32c_generic libcrc32c mbcache jbd2 ext4)

log() { echo "numa-lab build: $*" >&2; }

if [[ -s $OUT/vmlinuz && -s $OUT/initrd.img && "$(cat "$OUT/.stamp" 2>/dev/null)" == "$SUM" ]]; then
    log "up to date: $OUT/vmlinuz $OUT/initrd.img"
    exit 0
fi
mkdir -p "$OUT/debs"
exec 9>"$OUT/.lock"
flock 9

cached() { find "$OUT/debs" -maxdepth 1 -name "${1}_*.deb" | sort -V | sed -n '$p'; }
fetch() {  # the package's .deb in the cache, downloaded when missing
    if [[ -z $(cached "$1") ]]; then
        (cd "$OUT/debs" && { apt-get download "$1" 2>/dev/null || { apt-get update -qq && apt-get download "$1"; }; }) >&2
    fi
    cached "$1"
}
meta=$(fetch linux-image-amd64)
kpkg=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | sed -n 1p)
[[ -n $kpkg ]] || { log "ERROR: no kernel package named in $meta"; exit 1; }
kdeb=$(fetch "$kpkg")
bdeb=$(fetch busybox-static)

WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
dpkg-deb -x "$kdeb" "$WORK/k"
dpkg-deb -x "$bdeb" "$WORK/b"
kver=$(basename "$(find "$WORK/k/lib/modules" -mindepth 1 -maxdepth 1 -type d)")
mods=$WORK/k/lib/modules/$kver

root=$WORK/root
mkdir -p "$root"/{bin,dev,proc,sys,lower,persist,newroot,lib/modules}
cp "$WORK/b/bin/busybox" "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod 755 "$root/init"

declare -A seen=()
order=()
add() {  # $1 module name: its file, after the files of what it depends on
    local name=${1//-/_} file dep deps
    [[ -n ${seen[$name]:-} ]] && return 0
    seen[$name]=1
    file=$(find "$mods/kernel" -name "${name}.ko*" -o -name "${name//_/-}.ko*" | sed -n 1p)
    if [[ -z $file ]]; then
        grep -q "/${name}.ko" "$mods/modules.builtin" || { log "ERROR: module $name not in $kpkg"; exit 1; }
        return 0  # built into the kernel
    fi
    # The .modinfo strings are NUL-separated in the .ko; no kmod needed on the build machine.
    deps=$(tr '\0' '\n' < "$file" | sed -n 's/^depends=//p' | tr ',' ' ')
    for dep in $deps; do add "$dep"; done
    order+=("$file")
}
for m in "${WANT_MODULES[@]}"; do add "$m"; done
for f in "${order[@]}"; do
    cp "$f" "$root/lib/modules/"
    basename "$f" >> "$root/lib/modules/load-order"
done

cp "$WORK/k/boot/vmlinuz-$kver" "$WORK/vmlinuz"
(cd "$root" && find . | sort | cpio -o -H newc --quiet | gzip -1) > "$WORK/initrd.img"
mv "$WORK/vmlinuz" "$OUT/vmlinuz"
mv "$WORK/initrd.img" "$OUT/initrd.img"
echo "$kver" > "$OUT/kernel-version"
echo "$SUM" > "$OUT/.stamp"
log "built $OUT/vmlinuz ($kver) and $OUT/initrd.img (${#order[@]} modules)"
