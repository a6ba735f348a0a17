#!/usr/bin/env bash
# Start the NUMA lab's emulated hypervisor (hosts/numalab.yaml): a two-socket, two-node x86 machine
# under QEMU TCG, booting this machine's own root read-only over 9p with a persistent overlay, and
# systemd as PID 1 (lab/numa-lab/init). See lab/numa-lab/README.md.
#
#   lab/numa-lab/up.sh          idempotent: a running lab is left alone (its CPUs are checked)
#
# Environment: NUMALAB_DIR (state, default /var/lib/numa-k3s-numalab), NUMALAB_CORES (cores per
# socket, default 18: 72 CPUs; 2 gives an 8-CPU machine for quick trials of this script),
# NUMALAB_MEM_MB (per node, default 2048). The SSH port is hosts/numalab.yaml's ssh.port.
# Nothing leaves this machine: one user-mode NIC, restrict=on, its only way in a forward on 127.0.0.1.
set -Eeuo pipefail
trap 'echo "numa-lab up: ERROR: line $LINENO: \"$BASH_COMMAND\" failed (exit $?)" >&2' ERR

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
LAB=${NUMALAB_DIR:-/var/lib/numa-k3s-numalab}
CORES=${NUMALAB_CORES:-18}
MEM=${NUMALAB_MEM_MB:-2048}
SOCKETS=2
PORT=$("$repo/.venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["ssh"]["port"])' \
       "$repo/hosts/numalab.yaml")
RUN=$LAB/run
log() { echo "numa-lab: $(date -u +%T) $*" >&2; }
t0=$(date +%s.%N)
since() { printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)"; }

bash "$here/build.sh" "$LAB/boot"
mkdir -p "$LAB/ssh" "$RUN"
chmod 700 "$LAB/ssh"
[ -f "$LAB/ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C numa-lab-operator -f "$LAB/ssh/id_ed25519"
[ -f "$LAB/ssh/host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C numalab -f "$LAB/ssh/host_ed25519_key"
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1-2 "$LAB/ssh/host_ed25519_key.pub")" > "$LAB/ssh/known_hosts"

ssh_lab() {
    ssh -o BatchMode=yes -o ConnectTimeout=5 -o UserKnownHostsFile="$LAB/ssh/known_hosts" \
        -o StrictHostKeyChecking=yes -i "$LAB/ssh/id_ed25519" -p "$PORT" root@127.0.0.1 "$@"
}

# -- the persistent disk: the overlay's upper layer, seeded once -----------------------------------
if [ ! -f "$LAB/persist.qcow2" ]; then
    seed=$(mktemp -d "$LAB/.seed.XXXXXX")
    up=$seed/upper
    mkdir -p "$up/etc/ssh/sshd_config.d" "$up/etc/systemd/system" "$seed/private/var/lib/libvirt/images/numalab"
    echo numalab > "$up/etc/hostname"
    install -m 600 "$LAB/ssh/host_ed25519_key" "$up/etc/ssh/numalab_host_ed25519_key"
    install -m 644 "$LAB/ssh/host_ed25519_key.pub" "$up/etc/ssh/numalab_host_ed25519_key.pub"
    install -m 644 "$LAB/ssh/id_ed25519.pub" "$up/etc/ssh/numalab_authorized_keys"
    cp "$here/sshd.conf" "$up/etc/ssh/sshd_config.d/00-numalab.conf"
    cp "$here"/units/*.service "$up/etc/systemd/system/"
    # This machine enables units that need their own state or the network; inside the lab they are
    # masked (cloud-init would look for a datasource; timesyncd for NTP servers).
    while read -r unit; do ln -s /dev/null "$up/etc/systemd/system/$unit"; done < "$here/masked-units"
    # Whiteouts (overlayfs: a 0/0 character device) hide the tuning files a run of host.tune against
    # this machine may have left in its /etc: the lab's tuning must come from its own provision.
    mkdir -p "$up/etc/sysctl.d" "$up/etc/tmpfiles.d"
    mknod "$up/etc/sysctl.d/90-numa-k3s.conf" c 0 0
    mknod "$up/etc/tmpfiles.d/numa-k3s.conf" c 0 0
    # This machine is a container (/.dockerenv); the emulated host is a VM, and systemd should see one.
    [ ! -e /.dockerenv ] || mknod "$up/.dockerenv" c 0 0
    mkdir -p "$up/etc/systemd/system/multi-user.target.wants"
    ln -s /etc/systemd/system/numalab-virtlogd.service "$up/etc/systemd/system/multi-user.target.wants/"
    truncate -s 16G "$LAB/.seed.raw"
    mkfs.ext4 -q -F -L numalab -d "$seed" "$LAB/.seed.raw"
    qemu-img convert -q -f raw -O qcow2 "$LAB/.seed.raw" "$LAB/persist.qcow2.tmp"
    mv "$LAB/persist.qcow2.tmp" "$LAB/persist.qcow2"
    rm -rf "$seed" "$LAB/.seed.raw"
    log "persistent disk $LAB/persist.qcow2 created"
fi

# -- QEMU ---------------------------------------------------------------------------------------
total=$((SOCKETS * CORES * 2))
half=$((SOCKETS * CORES))
running() { local pid; pid=$(cat "$RUN/qemu.pid" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
still_running() {  # while waiting on the emulated host: stop at once if QEMU is gone
    running || { echo "numa-lab up: ERROR: QEMU exited; see $RUN/console.log" >&2; tail -n 20 "$RUN/console.log" >&2; exit 1; }
}
console_wait() {  # until the lab's init prints this line on the serial console
    for _ in $(seq 1 2400); do
        tr -d '\r' < "$RUN/console.log" 2>/dev/null | grep -qE "numa-lab init: $1\$" && return 0
        still_running
        sleep 0.5
    done
    echo "numa-lab up: ERROR: no \"numa-lab init: $1\" on the console after 20 min; see $RUN/console.log" >&2
    exit 1
}
started=
if ! running; then
    if ss -Hltn "sport = :$PORT" | grep -q .; then
        echo "numa-lab up: ERROR: 127.0.0.1:$PORT is taken (hosts/numalab.yaml ssh.port); free it or change the port" >&2
        exit 1
    fi
    rm -f "$RUN/qmp.sock" "$RUN/console.log"
    # QEMU outlives this script and keeps what it inherits: closefds.py keeps the caller's flock (the
    # lab's lock) out of it, else the lock stays taken while the lab runs.
    python3 "$here/closefds.py" nice -n 10 \
        qemu-system-x86_64 -name numalab -machine q35 -accel tcg -cpu max,vendor=GenuineIntel \
        -m $((MEM * SOCKETS)) -smp 1,sockets=$SOCKETS,cores="$CORES",threads=2,maxcpus=$total \
        -object memory-backend-ram,id=m0,size="${MEM}M" -object memory-backend-ram,id=m1,size="${MEM}M" \
        -numa node,nodeid=0,memdev=m0 -numa node,nodeid=1,memdev=m1 \
        -numa cpu,node-id=0,socket-id=0 -numa cpu,node-id=1,socket-id=1 \
        -kernel "$LAB/boot/vmlinuz" -initrd "$LAB/boot/initrd.img" \
        -append "console=ttyS0 quiet net.ifnames=0 cloud-init=disabled nowatchdog rcupdate.rcu_cpu_stall_suppress=1 tsc=reliable systemd.show_status=false numalab.cpus=$total" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -drive file="$LAB/persist.qcow2",if=virtio,format=qcow2,cache=writeback \
        -netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:"$PORT"-10.0.2.15:22 -device virtio-net-pci,netdev=n0 \
        -qmp unix:"$RUN/qmp.sock",server=on,wait=off -display none -serial file:"$RUN/console.log" \
        -pidfile "$RUN/qemu.pid" -daemonize
    log "QEMU started (pid $(cat "$RUN/qemu.pid"), 1 CPU; $((total - 1)) to hot-add while its init waits)"
    started=1
fi

# -- the other CPUs, hot-added in the order that gives the spread layout (qmp.py), before PID 1 ---
# The lab's init waits for them (numalab.cpus=), so systemd starts with every CPU online, as on a
# real host: what host.tune persisted (the IRQ default affinity among it) applies to all of them.
if [ -n "$started" ]; then
    console_wait "waiting for CPUs 0-$((total - 1))"
    python3 "$here/qmp.py" "$RUN/qmp.sock" "$SOCKETS" "$CORES" 0
    console_wait "present 0-$((half - 1))"
    python3 "$here/qmp.py" "$RUN/qmp.sock" "$SOCKETS" "$CORES" 1
    console_wait "online 0-$((total - 1))"
    log "$total CPUs online before systemd ($(since) s)"
fi

for _ in $(seq 1 600); do
    ssh_lab true 2>/dev/null && break
    still_running
    sleep 1
done
ssh_lab true || { echo "numa-lab up: ERROR: no SSH on 127.0.0.1:$PORT after 600 s; see $RUN/console.log" >&2; exit 1; }
log "sshd answers (${t0:+$(since) s})"
# A lab that was already running (or started by an older up.sh) is checked, not trusted.
ssh_lab "test \"\$(cat /sys/devices/system/cpu/online)\" = 0-$((total - 1))" || {
    echo "numa-lab up: ERROR: the running lab has CPUs $(ssh_lab cat /sys/devices/system/cpu/online) online," \
         "wanted 0-$((total - 1)): restart it (bash lab/numa-lab/down.sh; bash lab/numa-lab/up.sh)" >&2
    exit 1
}
log "$total CPUs online: node0 $(ssh_lab cat /sys/devices/system/node/node0/cpulist)," \
    "node1 $(ssh_lab cat /sys/devices/system/node/node1/cpulist)"

# -- libvirtd, once every CPU exists (as on a real host, where they are there at boot) ------------
ssh_lab 'systemctl start numalab-libvirtd.service && for _ in $(seq 1 120); do
             virsh -c qemu:///system version >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1'
log "libvirtd answers ($(since) s): $(ssh_lab "virsh -c qemu:///system capabilities | grep -c '<cell id'") NUMA cells"
base=/var/lib/libvirt/images/numalab/base.qcow2
ssh_lab "[ -f $base ] || qemu-img create -q -f qcow2 $base 1G"
log "up: ssh root@127.0.0.1:$PORT -i $LAB/ssh/id_ed25519 (console $RUN/console.log)"
