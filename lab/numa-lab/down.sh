#!/usr/bin/env bash
# Stop the NUMA lab's emulated hypervisor (the QEMU process in its pid file, nothing else).
#   lab/numa-lab/down.sh            stop it; its persistent disk is kept (the next up.sh boots it again)
#   lab/numa-lab/down.sh --clean    also delete the lab's state: disk, keys, logs (the kernel cache stays)
# A clean shutdown first (poweroff over SSH, so the guest's disk is consistent), then SIGTERM.
set -euo pipefail
LAB=${NUMALAB_DIR:-/var/lib/numa-k3s-numalab}
RUN=$LAB/run
here=$(cd "$(dirname "$0")" && pwd)
PORT=$("$here/../../.venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["ssh"]["port"])' \
       "$here/../../hosts/numalab.yaml")

pid=$(cat "$RUN/qemu.pid" 2>/dev/null || true)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    ssh -o BatchMode=yes -o ConnectTimeout=5 -o UserKnownHostsFile="$LAB/ssh/known_hosts" -i "$LAB/ssh/id_ed25519" \
        -p "$PORT" root@127.0.0.1 'systemctl poweroff' >/dev/null 2>&1 || true
    for _ in $(seq 1 180); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "numa-lab down: no clean poweroff within 180 s; stopping QEMU (pid $pid)" >&2
        kill "$pid"
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
    echo "numa-lab: stopped (pid $pid)"
fi
rm -f "$RUN/qemu.pid" "$RUN/qmp.sock"
if [ "${1:-}" = --clean ]; then
    rm -rf "$LAB/persist.qcow2" "$LAB/ssh" "$RUN"
    echo "numa-lab: state removed ($LAB/persist.qcow2, keys, logs); kernel cache $LAB/boot kept"
fi
