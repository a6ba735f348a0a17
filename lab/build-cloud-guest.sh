#!/usr/bin/env bash
# Build the lab's real-cloud-init guest: a VM whose root is this machine's own Debian userland
# (Debian's cloud-init, sudo, OpenSSH, e2fsprogs, gdisk, util-linux), shared read-only over 9p
# (QEMU -virtfs, mount tag hostroot) under an overlay whose upper layer lives on the VM's own OS
# disk (vda: ext4, made at the first boot of a blank disk, kept across reboots like an image's root).
# Its init runs cloud-init's four stages on the NoCloud seed exactly as a cloud image's systemd
# units would (init --local, init, modules --mode=config, modules --mode=final), starts sshd after
# cloud-init's final stage (see sshd-per-boot below), and stays PID 1.
#
#   lab/build-cloud-guest.sh [OUTDIR]     (default /var/lib/numa-k3s-lab/cloud-guest)
#
# Writes OUTDIR/vmlinuz and OUTDIR/initrd.img: lab/build-guest.sh's kernel, and its initramfs with a
# second cpio archive appended (the kernel unpacks both; later files win) holding the 9p, overlay and
# ext4 modules and this guest's /init. What differs from a cloud image, and why:
#   - no systemd: PID 1 is a shell script (this machine has no init system to boot); it mounts fstab
#     (`mount -a`, the nofail entries cloud-init writes) before cloud-init, as local-fs.target would.
#   - the NIC: cloud-init renames it by MAC (set-name) and renders the networkd file; with no
#     networkd running, init gives it QEMU user-mode's fixed lease (10.0.2.15/24 via 10.0.2.2).
#   - the locale module is switched off (locale: false in the guest's cloud.cfg.d): the shared root
#     has no `locales` package (update-locale); cloud images have it, so the seed does not say so.
# Nothing here is product code. Needs what build-guest.sh needs, plus this machine's cloud-init,
# sudo, sshd, mke2fs and sgdisk (the Makefile's system packages).
set -Eeuo pipefail
trap 'echo "build-cloud-guest: ERROR: line $LINENO: \"$BASH_COMMAND\" failed (exit $?)" >&2' ERR

OUT=${1:-/var/lib/numa-k3s-lab/cloud-guest}
TINY=${TINY_GUEST_DIR:-/var/lib/numa-k3s-lab/guest}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Beyond the tiny guest's modules (virtio, SATA CD-ROM, isofs): 9p for the shared root, overlay,
# ext4 for vda and the data disks. Dependencies are checked below against each module's .modinfo.
EXTRA_MODULES=(netfs fscache 9pnet 9pnet_virtio 9p overlay crc16 mbcache jbd2 crc32c_generic libcrc32c ext4)

log() { echo "build-cloud-guest: $*" >&2; }
die() { echo "build-cloud-guest: ERROR: $*" >&2; exit 1; }

bash "$here/build-guest.sh" "$TINY" >&2
for tool in cloud-init sudo /usr/sbin/sshd mke2fs sgdisk mountpoint; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing on this machine: the guest's root is this machine's (make system)"
done
SUM=$( (sha256sum "${BASH_SOURCE[0]}" "$TINY/initrd.img" "$TINY/vmlinuz") | sha256sum | cut -d' ' -f1)
up_to_date() {
    [[ -s $OUT/initrd.img && -s $OUT/vmlinuz && "$(cat "$OUT/.stamp" 2>/dev/null)" == "$SUM" ]] || return 1
    echo "build-cloud-guest: up to date: $OUT/vmlinuz $OUT/initrd.img"
}
up_to_date && exit 0
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
up_to_date && exit 0  # built meanwhile by whoever held the lock
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

KVER=$(cat "$TINY/kernel-version")
deb=$(find "$TINY/debs" -maxdepth 1 -name "linux-image-${KVER}_*.deb" | sort -V | sed -n '$p')
[[ -n $deb ]] || die "no linux-image-$KVER .deb in $TINY/debs (lab/build-guest.sh keeps it there)"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$WORK" --wildcards '*/modules/*' 2>/dev/null \
    || die "cannot unpack the modules of $deb"
MODDIR=$(find "$WORK" -maxdepth 4 -type d -path "*/modules/$KVER" | sed -n 1p)
[[ -n $MODDIR ]] || die "no modules/$KVER in $deb"

ROOT=$WORK/root
mkdir -p "$ROOT/lib/modules/$KVER" "$ROOT/lib/cloudguest"
loaded=" $(tr '\n' ' ' < "$TINY/modules")"
: > "$ROOT/lib/cloudguest/modules"
for m in "${EXTRA_MODULES[@]}"; do
    if grep -qE "/${m//_/[-_]}\.ko" "$MODDIR/modules.builtin"; then
        log "module $m is built into $KVER"; loaded+="$m "; continue
    fi
    f=$(find "$MODDIR/kernel" -name "${m}.ko*" -o -name "${m//_/-}.ko*" | sed -n 1p)
    [[ -n $f ]] || die "module $m: not in $deb"
    case $f in *.xz) xz -dc "$f" ;; *.zst) zstd -dcq "$f" ;; *) cat "$f" ;; esac > "$ROOT/lib/modules/$KVER/$m.ko"
    deps=$(tr '\0' '\n' < "$ROOT/lib/modules/$KVER/$m.ko" | sed -n 's/^depends=//p' | head -n1)
    for dep in ${deps//,/ }; do
        [[ $loaded == *" ${dep//-/_} "* ]] || die "module $m needs $dep before it: fix EXTRA_MODULES' order"
    done
    echo "$m" >> "$ROOT/lib/cloudguest/modules"
    loaded+="$m "
done

# The guest's cloud.cfg.d: the seed comes from the NoCloud CD-ROM; /etc/hosts names the guest (as
# Debian's cloud images configure it); the locale module is left out of this machine's module list:
# the shared root has no `locales` package (update-locale), and `locale: false` fails the schema.
/usr/bin/python3 - > "$ROOT/lib/cloudguest/99-numa-k3s-lab.cfg" <<'PY' || die "cannot read /etc/cloud/cloud.cfg"
import yaml
with open("/etc/cloud/cloud.cfg") as f:
    modules = yaml.safe_load(f)["cloud_config_modules"]
print("# The lab's cloud guest (lab/build-cloud-guest.sh)")
# ed25519 host keys only: an RSA key costs tens of seconds of emulated CPU at first boot.
print(yaml.safe_dump({"datasource_list": ["NoCloud", "None"], "manage_etc_hosts": True,
                      "ssh_genkeytypes": ["ed25519"],
                      "cloud_config_modules": [m for m in modules if m != "locale" and m != ["locale"]]}))
PY

# sshd starts inside cloud-init's final stage (scripts-per-boot): an SSH answer then always comes with
# a real `cloud-init status` (running until the final stage ends, then done), never from the gap
# between two stages, where `cloud-init status` says done before the next one starts.
cat > "$ROOT/lib/cloudguest/sshd-per-boot" <<'EOF'
#!/bin/sh
mkdir -p /run/sshd
/usr/sbin/sshd -f /etc/ssh/numa-k3s-lab.conf -E /var/log/sshd.log < /dev/null
echo "cloudguest: sshd started ($(cut -d' ' -f1-2 /etc/ssh/ssh_host_ed25519_key.pub))" > /dev/console
EOF

# PID 1 inside the overlay root (this machine's userland). busybox sh: it reaps orphans.
cat > "$ROOT/lib/cloudguest/guest-init" <<'EOF'
#!/bin/busybox sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "cloudguest: $*" > /dev/console; }
up() { cut -d' ' -f1 /proc/uptime; }
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
for d in /run /tmp /var/tmp; do mount -t tmpfs -o mode=1777 tmpfs "$d"; done
chmod 755 /run
mkdir -p /run/sshd /run/lock /var/log
[ -s /etc/hostname ] && hostname "$(cat /etc/hostname)"
ip link set lo up
# local-fs: the fstab entries cloud-init wrote at an earlier boot (nofail: a missing disk is skipped)
mount -a 2>/var/log/numa-k3s-mount.log || say "mount -a: $(cat /var/log/numa-k3s-mount.log)"
times=/run/numa-k3s-cloud-init.times
echo "start $(up)" > $times
cloud-init init --local > /var/log/numa-k3s-cloud-init.out 2>&1
echo "init-local $(up) rc=$?" >> $times
nic=
for n in /sys/class/net/*; do n=${n##*/}; [ "$n" = lo ] || { nic=$n; break; }; done
if [ -n "$nic" ]; then
    ip link set "$nic" up
    ip addr add 10.0.2.15/24 dev "$nic"
    ip route add default via 10.0.2.2
    echo "nameserver 10.0.2.3" > /etc/resolv.conf
fi
say "network on $nic ($(cat /sys/class/net/$nic/address 2>/dev/null))"
cloud-init init >> /var/log/numa-k3s-cloud-init.out 2>&1
echo "init $(up) rc=$?" >> $times
cloud-init modules --mode=config >> /var/log/numa-k3s-cloud-init.out 2>&1
echo "config $(up) rc=$?" >> $times
cloud-init modules --mode=final >> /var/log/numa-k3s-cloud-init.out 2>&1
echo "final $(up) rc=$?" >> $times
say "cloud-init finished at $(up) s after boot: $(cloud-init status 2>&1 | tr '\n' ' ')"
while true; do sleep 3600; done
EOF

cat > "$ROOT/init" <<'EOF'
#!/bin/sh
# The cloud guest's initramfs stage (lab/build-cloud-guest.sh): modules, the 9p root, the overlay
# on vda, then switch_root into it.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "cloudguest: $*" > /dev/console; }
fail() { say "ERROR: $*"; while true; do sleep 3600; done; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
kver=$(uname -r)
for m in $(cat /lib/tinyguest/modules /lib/cloudguest/modules); do
    insmod "/lib/modules/$kver/$m.ko" 2>/dev/null || say "insmod $m failed"
done
mkdir -p /lower /disk /newroot
# cache=loose: the share is read-only, so the guest may cache its metadata and pages (far fewer
# 9p round trips, each a trip through emulated virtio under TCG).
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower || fail "no 9p share hostroot"
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 /dev/vda /disk 2>/dev/null; then
    # Only a blank disk is formatted: anything else on vda is somebody's data.
    [ -z "$(dd if=/dev/vda bs=65536 count=16 2>/dev/null | tr -d '\000' | head -c 1)" ] \
        || fail "vda holds data that is not ext4: not formatting it"
    say "first boot: making ext4 on the blank OS disk vda"
    /lower/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 \
        --library-path /lower/lib/x86_64-linux-gnu:/lower/usr/lib/x86_64-linux-gnu \
        /lower/usr/sbin/mke2fs -q -F -t ext4 -L cloudroot /dev/vda || fail "mke2fs on vda failed"
    mount -t ext4 /dev/vda /disk || fail "cannot mount vda"
fi
fresh=
[ -d /disk/upper ] || fresh=1
mkdir -p /disk/upper /disk/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/disk/upper,workdir=/disk/work /newroot \
    || fail "overlay mount failed"
if [ -n "$fresh" ]; then
    # An image's first boot: none of this machine's own identity or state.
    rm -f /newroot/etc/ssh/ssh_host_* /newroot/etc/machine-id /newroot/etc/sudoers.d/numa-k3s-test-*
    rm -rf /newroot/var/lib/cloud /newroot/var/log/cloud-init.log /newroot/var/log/cloud-init-output.log
    echo "# /etc/fstab of the lab's cloud guest: cloud-init's mounts module adds the data disks" > /newroot/etc/fstab
    echo cloudguest > /newroot/etc/hostname
fi
# The guest's own configuration, put back at every boot (a rebuilt guest brings its new version).
cp /lib/cloudguest/99-numa-k3s-lab.cfg /newroot/etc/cloud/cloud.cfg.d/99-numa-k3s-lab.cfg
# The tiny guest's sshd_config, with PAM: cloud-init locks the users' passwords (lock_passwd), and
# sshd without PAM refuses a locked account even with a key; Debian's images use PAM too.
sed 's/^UsePAM no$/UsePAM yes/' /etc/ssh/sshd_config > /newroot/etc/ssh/numa-k3s-lab.conf
mkdir -p /newroot/usr/local/lib/numa-k3s
cp /lib/cloudguest/guest-init /newroot/usr/local/lib/numa-k3s/guest-init
chmod 755 /newroot/usr/local/lib/numa-k3s/guest-init
mkdir -p /newroot/var/lib/cloud/scripts/per-boot
cp /lib/cloudguest/sshd-per-boot /newroot/var/lib/cloud/scripts/per-boot/00-numa-k3s-sshd
chmod 755 /newroot/var/lib/cloud/scripts/per-boot/00-numa-k3s-sshd
for d in dev proc sys; do mount --move /$d /newroot/$d; done
exec switch_root /newroot /usr/local/lib/numa-k3s/guest-init
EOF
chmod 755 "$ROOT/init" "$ROOT/lib/cloudguest/guest-init" "$ROOT/lib/cloudguest/sshd-per-boot"

(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet | gzip -6) \
    > "$WORK/extra.cpio.gz"
cat "$TINY/initrd.img" "$WORK/extra.cpio.gz" > "$WORK/initrd.img"
install -m 644 "$TINY/vmlinuz" "$WORK/vmlinuz"
rm -f "$OUT/.stamp"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
echo "$SUM" > "$OUT/.stamp"
log "built $OUT/initrd.img (kernel $KVER, extra modules: $(tr '\n' ' ' < "$ROOT/lib/cloudguest/modules"))"
