#!/usr/bin/env bash
# Tear the local lab down: the product's own teardown (k3s, domains, overlays, seeds and, with
# --include-data, the data disks), then the lab's sshd and files. The guest build cache stays
# (rebuilding it downloads the kernel again); `LAB_KEEP_GUEST=0` removes it too.
set -uo pipefail

LAB=${LAB_DIR:-/var/lib/numa-k3s-lab}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."

if [ -f "$LAB/sshd/sshd.pid" ] && kill -0 "$(cat "$LAB/sshd/sshd.pid")" 2>/dev/null; then
    .venv/bin/invoke -f lab/invoke.yaml teardown --host=lab --yes --include-data || echo "lab: teardown reported a failure (above); removing the lab anyway"
fi
# Anything the runbook could not reach (a lab half set up): the domains by name, then the files.
for name in lab-slm-heavy lab-data lab-slm lab-server-tasks; do
    virsh -c qemu:///system destroy "$name" >/dev/null 2>&1
    virsh -c qemu:///system undefine "$name" >/dev/null 2>&1
done
if [ -f "$LAB/sshd/sshd.pid" ]; then kill "$(cat "$LAB/sshd/sshd.pid")" 2>/dev/null; fi
keep=${LAB_KEEP_GUEST:-1}
for entry in "$LAB"/*; do
    [ -e "$entry" ] || continue
    if [ "$keep" = 1 ] && { [ "$entry" = "$LAB/guest" ] || [ "$entry" = "$LAB/cloud-guest" ] ||
                            [ "$entry" = "$LAB/debs" ]; }; then continue; fi
    rm -rf "$entry"
done
echo "lab: down (kept: $( [ "$keep" = 1 ] && echo "the guest builds in $LAB/guest and $LAB/cloud-guest" || echo nothing))"
