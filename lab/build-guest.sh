#!/usr/bin/env bash
# Build the lab's tiny guest: a Debian kernel and a busybox + OpenSSH sshd initramfs that boots under
# QEMU TCG with direct kernel boot, configures QEMU user-mode networking, reads a NoCloud seed ISO
# (label cidata) for its hostname and users' SSH keys, and answers SSH (with SFTP) on port 22.
#
# Why OpenSSH and not dropbear: Debian 12's dropbear (2022.83) closes a freshly opened session channel
# when a previous channel's process exits at that moment (upstream mkj/dropbear#321, fixed in
# 2024.86). paramiko closes an SFTP channel without waiting for sftp-server to exit, so an exec right
# after an upload failed ("Unable to open channel") in about 1 of 10 tries here. Automation uploads
# then runs, so the guest runs the same sshd a real VM does, with internal-sftp.
#
#   lab/build-guest.sh [OUTDIR]     (default /var/lib/numa-k3s-lab/guest)
#
# Writes OUTDIR/vmlinuz and OUTDIR/initrd.img. Everything comes from Debian packages fetched with
# `apt-get download` into OUTDIR/debs (kept as a cache; `apt-get update` only when a download fails).
# Rebuilt only when an output is missing or OUTDIR/.stamp does not hold this script's sha256.
# Needs on the build machine: apt-get, dpkg-deb, cpio, gzip, tar, xz, ldd, flock, sha256sum.
# Nothing here is product code: it stands in for a real VM image in the lab and the tests.
set -Eeuo pipefail
trap 'echo "build-guest: ERROR: line $LINENO: \"$BASH_COMMAND\" failed (exit $?)" >&2' ERR

OUT=${1:-/var/lib/numa-k3s-lab/guest}
SELF=$(readlink -f "${BASH_SOURCE[0]}")
SUM=$(sha256sum "$SELF" | cut -d' ' -f1)
ARCH_TRIPLET=x86_64-linux-gnu

# Guest modules, in the order they are wanted; the build adds each one's dependencies before it
# (from the module's own depends= / softdep pre: info) and drops those built into the kernel.
# virtio-net/blk for the NIC and data disks; AHCI (q35's SATA) and PIIX (i440fx's IDE) + sr_mod +
# isofs for the seed CD-ROM.
WANT_MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover
              virtio_net virtio_blk scsi_common scsi_mod libata libahci ahci ata_piix cdrom sr_mod isofs)
# Besides the kernel (linux-image-amd64's current linux-image-<abi>-amd64). sshd and ssh-keygen's
# shared libraries are copied from this Debian 12 machine as ldd finds them (openssh-server is
# installed here: the Makefile's system packages).
PACKAGES=(busybox-static openssh-server openssh-client)

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: ERROR: $*" >&2; exit 1; }

up_to_date() {
    [[ -s $OUT/vmlinuz && -s $OUT/initrd.img && "$(cat "$OUT/.stamp" 2>/dev/null)" == "$SUM" ]]
}

if up_to_date; then
    echo "build-guest: up to date: $OUT/vmlinuz $OUT/initrd.img"
    exit 0
fi

missing=()
for tool in apt-get dpkg-deb cpio gzip tar xz ldd flock sha256sum find sort; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    die "missing build tools: ${missing[*]} (cpio: apt-get install cpio; xz: xz-utils; flock: util-linux)"
fi

mkdir -p "$OUT/debs" || die "cannot create $OUT"
# One build at a time per OUTDIR (tests and lab/up.sh may race); the loser finds the result built.
exec 9>"$OUT/.lock"
flock 9
if up_to_date; then
    echo "build-guest: up to date: $OUT/vmlinuz $OUT/initrd.img"
    exit 0
fi

START=$(date +%s)
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# -- packages -----------------------------------------------------------------------------------

cached_deb() {  # newest cached .deb of a package, or nothing
    find "$OUT/debs" -maxdepth 1 -name "${1}_*.deb" | sort -V | sed -n '$p'
}

apt_errors() {  # apt's E: lines from a stderr file, or its last lines when there are none
    local lines
    lines=$(grep -E '^E:' "$1" | sed -n 1,3p)
    echo "${lines:-$(tail -n 3 "$1")}"
}

download() {  # apt-get download into the cache; one `apt-get update` and a retry when it fails
    local err=$WORK/apt.err
    # Sandbox user root: the cache dir is not readable by _apt, which only costs a warning otherwise.
    if (cd "$OUT/debs" && apt-get download -q -o APT::Sandbox::User=root "$@") >/dev/null 2>"$err"; then
        return 0
    fi
    log "apt-get download $* failed ($(apt_errors "$err")); running apt-get update and retrying"
    apt-get update -qq >/dev/null 2>"$err" || die "apt-get update failed: $(apt_errors "$err")"
    if ! (cd "$OUT/debs" && apt-get download -q -o APT::Sandbox::User=root "$@") >/dev/null 2>"$err"; then
        die "apt-get download $* failed after apt-get update: $(apt_errors "$err")"
    fi
}

need=()
for p in "${PACKAGES[@]}"; do
    [[ -n $(cached_deb "$p") ]] || need+=("$p")
done
((${#need[@]} == 0)) || { log "downloading ${need[*]}"; download "${need[@]}"; }

kernel_pkg() {  # linux-image-amd64 is a metapackage: the kernel is the linux-image-<abi>-amd64 it depends on
    local meta
    meta=$(cached_deb linux-image-amd64)
    [[ -n $meta ]] || return 0
    dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | sed -n 1p
}
kpkg=$(kernel_pkg)
if [[ -z $kpkg || -z $(cached_deb "$kpkg") ]]; then
    # No kernel cached yet: take the current metapackage and the kernel it names, together.
    rm -f "$OUT"/debs/linux-image-amd64_*.deb
    log "downloading linux-image-amd64"
    download linux-image-amd64
    kpkg=$(kernel_pkg)
    [[ -n $kpkg ]] || die "cannot find the kernel package in $(cached_deb linux-image-amd64)'s Depends"
    log "downloading $kpkg"
    download "$kpkg"
fi

ROOT=$WORK/root
X=$WORK/x
mkdir -p "$ROOT" "$X/kernel"
for p in "${PACKAGES[@]}"; do
    dpkg-deb -x "$(cached_deb "$p")" "$X" || die "dpkg-deb -x failed on $(cached_deb "$p")"
done
dpkg-deb --fsys-tarfile "$(cached_deb "$kpkg")" | tar -x -C "$X/kernel" --exclude='./usr/share/*' \
    || die "cannot unpack $(cached_deb "$kpkg")"

vmlinuz=$(find "$X/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' | sed -n 1p)
[[ -n $vmlinuz ]] || die "no boot/vmlinuz-* in $kpkg"
KVER=${vmlinuz##*/vmlinuz-}
MODDIR=$(find "$X/kernel" -maxdepth 4 -type d -path "*/modules/$KVER" | sed -n 1p)
[[ -n $MODDIR ]] || die "no modules directory for $KVER in $kpkg"

# -- kernel modules: dependency order from each module's .modinfo ----------------------------------

declare -A MODFILE=() BUILTIN=() SEEN=()
while IFS= read -r f; do
    n=${f##*/}; n=${n%%.ko*}; MODFILE[${n//-/_}]=$f
done < <(find "$MODDIR/kernel" -name '*.ko*')
if [[ -f $MODDIR/modules.builtin ]]; then
    while IFS= read -r f; do n=${f##*/}; n=${n%.ko}; BUILTIN[${n//-/_}]=1; done < "$MODDIR/modules.builtin"
fi

mod_cat() {
    case $1 in
        *.ko.xz) xz -dc "$1" ;;
        *.ko.zst) zstd -dcq "$1" ;;
        *.ko.gz) gzip -dc "$1" ;;
        *) cat "$1" ;;
    esac
}

mod_field() {  # the .modinfo strings are NUL-separated key=value pairs: no kmod/modinfo needed
    # GNU sed's 0,/re/ prints the first match only and still reads to the end (no SIGPIPE upstream).
    mod_cat "$1" | tr '\0' '\n' | sed -n "0,/^$2=/s/^$2=//p"
}

ORDER=()
resolve() {  # NAME [soft]: NAME's dependencies (depends=, then softdep pre:) first, then NAME
    local m=${1//-/_} dep f deps soft
    [[ -z ${SEEN[$m]:-} ]] || return 0
    SEEN[$m]=1
    if [[ -n ${BUILTIN[$m]:-} ]]; then
        log "module $m is built into $KVER"
        return 0
    fi
    f=${MODFILE[$m]:-}
    if [[ -z $f ]]; then
        # A softdep may name an alias (crc32c) rather than a file: best effort only.
        [[ -z ${2:-} ]] || { log "soft dependency $m: no such module file, skipped"; return 0; }
        die "module $m: no $m.ko* under $MODDIR and not in modules.builtin"
    fi
    [[ "$(mod_field "$f" vermagic)" == "$KVER "* ]] || die "module $m: vermagic does not match $KVER"
    deps=$(mod_field "$f" depends)
    soft=$(mod_field "$f" softdep | sed -n 's/.*pre:\([^:]*\)\( post:.*\)\{0,1\}$/\1/p')
    for dep in ${deps//,/ }; do resolve "$dep"; done
    for dep in $soft; do resolve "$dep" soft; done
    ORDER+=("$m")
}
for m in "${WANT_MODULES[@]}"; do resolve "$m"; done

mkdir -p "$ROOT/lib/modules/$KVER" "$ROOT/lib/tinyguest"
: > "$ROOT/lib/tinyguest/modules"
for m in "${ORDER[@]}"; do
    mod_cat "${MODFILE[$m]}" > "$ROOT/lib/modules/$KVER/$m.ko"  # .ko.xz/.zst unpacked: busybox insmod takes plain .ko
    echo "$m" >> "$ROOT/lib/tinyguest/modules"
done
cp "$MODDIR/modules.builtin" "$ROOT/lib/modules/$KVER/" 2>/dev/null || true
log "kernel $KVER; modules in load order: ${ORDER[*]}"

# -- root filesystem ------------------------------------------------------------------------------

cd "$ROOT"
mkdir -p bin sbin usr/bin usr/sbin usr/local/bin usr/local/sbin etc/ssh etc/rancher \
    "lib/$ARCH_TRIPLET" lib64 dev proc sys run tmp mnt/seed root home var/lib/cloud/seed/nocloud var/log var/tmp
chmod 700 root
chmod 1777 tmp var/tmp
ln -s /run var/run
touch var/log/lastlog var/log/wtmp  # sshd records pty logins there

install -m 755 "$X/bin/busybox" bin/busybox
# Every applet as a symlink where busybox says it belongs (bin/sh, sbin/ip, usr/bin/awk, ...).
while IFS= read -r applet; do
    [[ -e $applet || -L $applet ]] || ln -s /bin/busybox "$applet"
done < <("$X/bin/busybox" --list-full)
[[ -L bin/sh ]] || die "busybox has no sh applet"

install -m 755 "$X/usr/sbin/sshd" usr/sbin/sshd
install -m 755 "$X/usr/bin/ssh-keygen" usr/bin/ssh-keygen
install -m 644 "$X/etc/ssh/moduli" etc/ssh/moduli
cat > etc/ssh/sshd_config <<'EOF'
# The tiny guest's sshd (lab/build-guest.sh): keys only, root by key, SFTP in-process.
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 100:30:200
MaxSessions 100
AllowTcpForwarding yes
Subsystem sftp internal-sftp
EOF

# Shared libraries: the packages' own first, then this machine's (libc, libz, libcrypt).
for bin in usr/sbin/sshd usr/bin/ssh-keygen; do
    libs=$(LD_LIBRARY_PATH="$X/usr/lib/$ARCH_TRIPLET:$X/lib/$ARCH_TRIPLET" ldd "$bin") \
        || die "ldd $bin failed: is this machine x86_64 with glibc?"
    if grep -q 'not found' <<<"$libs"; then
        die "ldd $bin: $(grep 'not found' <<<"$libs" | tr -s ' \t' ' ' | tr '\n' ';') (apt-get install openssh-server)"
    fi
    while read -r name arrow path _; do
        if [[ $arrow == "=>" && $path == /* ]]; then
            cp -L "$path" "lib/$ARCH_TRIPLET/$name"
        elif [[ $name == /*ld-linux* ]]; then
            [[ -e .$name ]] || { mkdir -p ".${name%/*}"; cp -L "$name" ".$name"; }
        fi
    done <<<"$libs"
done

cat > etc/passwd <<'EOF'
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534::/run/sshd:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > etc/group <<'EOF'
root:x:0:
tty:x:5:
nogroup:x:65534:
EOF
cat > etc/shadow <<'EOF'
root:*:19000:0:99999:7:::
sshd:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
EOF
chmod 600 etc/shadow
printf '/bin/sh\n/bin/ash\n' > etc/shells
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' > etc/nsswitch.conf
echo tinyguest > etc/hostname
cat > etc/profile <<'EOF'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PS1='\u@\h:\w\$ '
EOF

# user-data users -> "U name" then "K key" lines per user, and "H hostname". The shape is what
# lib/cloudinit.py emits through PyYAML: block lists, long scalars folded onto indented
# continuation lines, strings with ': ' or ' #' single-quoted.
cat > lib/tinyguest/users.awk <<'AWK'
function indent(s) { match(s, /^ */); return RLENGTH }
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
function unquote(s) {
    s = trim(s)
    if (s ~ /^'.*'$/) { s = substr(s, 2, length(s) - 2); gsub(/''/, "'", s) }
    else if (s ~ /^".*"$/) { s = substr(s, 2, length(s) - 2); gsub(/\\"/, "\"", s); gsub(/\\\\/, "\\", s) }
    return s
}
function flush_key() { if (key != "") { keys[nkeys++] = unquote(key) }; key = "" }
function flush_user(  i) {
    flush_key()
    if (uname != "") { print "U " uname; for (i = 0; i < nkeys; i++) print "K " keys[i] }
    uname = ""; nkeys = 0; inkeys = 0; kind = -1; find = -1
}
function user_field(s,  k, v) {      # "name: x" / "ssh_authorized_keys:" inside a user mapping
    k = s; sub(/:.*/, "", k); v = s; sub(/^[^:]*:/, "", v)
    if (k == "name") uname = unquote(v)
    else if (k == "ssh_authorized_keys") { inkeys = 1; kind = -1 }
}
BEGIN { section = ""; uind = -1; kind = -1; find = -1; key = ""; nkeys = 0 }
/^[ \t]*(#.*)?$/ { next }
{
    line = $0; sub(/\r$/, "", line); ind = indent(line); body = substr(line, ind + 1)
    if (ind == 0 && body !~ /^- /) {                      # a top-level key
        if (section == "users") flush_user()
        section = body; sub(/:.*/, "", section)
        if (section == "hostname") { v = body; sub(/^[^:]*:/, "", v); print "H " unquote(v) }
        next
    }
    if (section != "users") next
    if (inkeys) {
        if (body ~ /^- / && ind > uind && (kind < 0 || ind == kind)) {  # a key item
            flush_key(); kind = ind; key = substr(body, 3); next
        }
        if (key != "" && ind > kind) { key = key " " trim(body); next }  # folded continuation
        flush_key(); inkeys = 0
    }
    if (body ~ /^- / && (uind < 0 || ind == uind)) {       # a new user; its fields line up after "- "
        flush_user(); uind = ind; body = substr(body, 2); find = ind + 1 + indent(body)
        user_field(substr(body, indent(body) + 1)); next
    }
    if (ind == find) user_field(body)
}
END { if (section == "users") flush_user() }
AWK

cat > init <<'INIT'
#!/bin/sh
# The tiny guest's init (lab/build-guest.sh): mounts, virtio/SATA modules, user-mode network,
# NoCloud seed (hostname, users' SSH keys), then OpenSSH sshd on port 22. Stays PID 1 forever.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "tinyguest: $*" > /dev/console; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/tinyguest
hostname tinyguest

kver=$(uname -r)
: > /run/tinyguest/modules-loaded
while read -r m; do
    if insmod "/lib/modules/$kver/$m.ko" 2>/run/tinyguest/insmod.err; then
        echo "$m" >> /run/tinyguest/modules-loaded
    else
        say "insmod $m failed: $(cat /run/tinyguest/insmod.err)"
    fi
done < /lib/tinyguest/modules

# -- network: QEMU user-mode defaults ---------------------------------------------------------
ip link set lo up
nic=
i=0
while [ $i -lt 50 ]; do
    if [ -e /sys/class/net/eth0 ]; then nic=eth0; break; fi
    for n in /sys/class/net/*; do
        n=${n##*/}
        [ "$n" = lo ] || [ ! -e "/sys/class/net/$n" ] || { nic=$n; break 2; }
    done
    sleep 0.1; i=$((i + 1))
done
if [ -n "$nic" ]; then
    ip link set "$nic" up
    ip addr add 10.0.2.15/24 dev "$nic"
    ip route add default via 10.0.2.2
else
    say "no network interface found"
fi
echo "nameserver 10.0.2.3" > /etc/resolv.conf

# -- NoCloud seed: the block device whose iso9660 volume label is cidata ------------------------
label_of() {  # the ISO 9660 primary volume descriptor's volume id: 32 bytes at 32808
    dd if="$1" bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=40 count=32 2>/dev/null | tr -d ' \000'
}
seed=
i=0
while [ $i -lt 100 ]; do  # SCSI scanning is asynchronous: the CD-ROM shows up a moment after ahci
    for dev in /dev/sr0 /dev/sr1 /dev/sd? /dev/vd?; do
        [ -b "$dev" ] || continue
        case $(label_of "$dev") in
            cidata|CIDATA) ;;
            *) continue ;;
        esac
        if mount -t iso9660 -o ro "$dev" /mnt/seed 2>/dev/null; then seed=$dev; break 2; fi
    done
    sleep 0.1; i=$((i + 1))
done

name=tinyguest
if [ -n "$seed" ]; then
    nocloud=/var/lib/cloud/seed/nocloud
    cp -r /mnt/seed/. $nocloud/ 2>/dev/null
    umount /mnt/seed
    h=$(sed -n 's/^local-hostname:[[:space:]]*//p' $nocloud/meta-data 2>/dev/null | head -n1 | tr -d "\"'\r")
    [ -z "$h" ] || name=$h
    uid=1000
    user=
    home=
    if [ -f $nocloud/user-data ]; then
        awk -f /lib/tinyguest/users.awk $nocloud/user-data > /run/tinyguest/users
    else
        : > /run/tinyguest/users
    fi
    while IFS= read -r line; do
        case $line in
        "H "*) name=${line#H } ;;
        "U "*)
            user=${line#U }
            case $user in ""|-*|*[!A-Za-z0-9._-]*) say "skipping user name '$user'"; user=; continue ;; esac
            if [ "$user" = root ]; then
                home=/root
            else
                home=/home/$user
                if ! grep -q "^$user:" /etc/passwd; then
                    while grep -q "^[^:]*:x:$uid:" /etc/passwd; do uid=$((uid + 1)); done
                    echo "$user:x:$uid:$uid::$home:/bin/sh" >> /etc/passwd
                    echo "$user:x:$uid:" >> /etc/group
                    echo "$user:*:19000:0:99999:7:::" >> /etc/shadow
                fi
                mkdir -p "$home"
                chown "$user:$user" "$home"
                chmod 755 "$home"
            fi
            mkdir -p "$home/.ssh"
            touch "$home/.ssh/authorized_keys"
            chmod 700 "$home/.ssh"
            chmod 600 "$home/.ssh/authorized_keys"
            chown -R "$user:$user" "$home/.ssh"
            ;;
        "K "*)
            [ -n "$user" ] && echo "${line#K }" >> "$home/.ssh/authorized_keys"
            ;;
        esac
    done < /run/tinyguest/users
    say "seed from $seed: users $(sed -n 's/^U //p' /run/tinyguest/users | tr '\n' ' ')"
else
    say "no NoCloud seed (iso9660 label cidata) found; no SSH keys authorized"
fi
hostname "$name"
echo "$name" > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$name" > /etc/hosts

# -- sshd -------------------------------------------------------------------------------------
key=/etc/ssh/ssh_host_ed25519_key
[ -f $key ] || ssh-keygen -q -t ed25519 -N '' -C "root@$name" -f $key
mkdir -p /run/sshd && chmod 755 /run/sshd  # privilege separation directory
/usr/sbin/sshd -D -e < /dev/null >> /var/log/sshd.log 2>&1 &
i=0
while [ $i -lt 50 ] && ! netstat -ltn 2>/dev/null | grep -q ':22 '; do sleep 0.1; i=$((i + 1)); done
if netstat -ltn 2>/dev/null | grep -q ':22 '; then
    # The host key on the console lets a client check it instead of trusting the first key it sees.
    say "host key $(cut -d' ' -f1-2 $key.pub)"
    say "sshd up on ${nic:-no-nic} (hostname $name)"
else
    say "sshd did not start: $(tail -n 5 /var/log/sshd.log)"
fi

# PID 1 must never exit; the shell reaps orphans while it waits on sleep.
while true; do sleep 3600; done
INIT
chmod 755 init

# -- pack ---------------------------------------------------------------------------------------

find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet | gzip -6 > "$WORK/initrd.img" \
    || die "cpio/gzip of the initramfs failed"
cd "$OUT"
rm -f "$OUT/.stamp"
install -m 644 "$vmlinuz" "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
printf '%s\n' "$KVER" > "$OUT/kernel-version"
printf '%s\n' "${ORDER[@]}" > "$OUT/modules"
echo "$SUM" > "$OUT/.stamp"
echo "build-guest: built $OUT/vmlinuz ($KVER) and $OUT/initrd.img ($(du -k "$OUT/initrd.img" | cut -f1) KiB) in $(($(date +%s) - START)) s"
