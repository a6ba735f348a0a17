#!/usr/bin/env bash
# Start the services the tests and the lab use, on a machine without systemd (see ENVIRONMENT.md):
# libvirtd with the qemu driver (and virtlogd), set up as libvirt-daemon-system would.
# Idempotent: a running daemon is left alone.
set -euo pipefail

mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/lib/libvirt/images /var/cache/libvirt/qemu /run/libvirt /run/sshd
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || useradd -r -g kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

conf=/etc/libvirt/qemu.conf
# QEMU runs as root with no security driver: no systemd-logind, no AppArmor profiles here.
for setting in 'user = "root"' 'group = "root"' 'dynamic_ownership = 0' 'security_driver = "none"'; do
    key=${setting%% =*}
    if ! grep -qx "$setting" "$conf" 2>/dev/null; then
        sed -i "/^#*\s*${key} =/d" "$conf" 2>/dev/null || true
        echo "$setting" >> "$conf"
    fi
done

# hugetlbfs for the default page size, as systemd's dev-hugepages.mount gives every real host: libvirt
# looks for it when it starts, and a hugepage VM does not start without one.
if ! grep -qs ' hugetlbfs ' /proc/mounts; then
    mkdir -p /dev/hugepages && mount -t hugetlbfs hugetlbfs /dev/hugepages
fi

pgrep -x virtlogd >/dev/null || virtlogd -d
if ! pgrep -x libvirtd >/dev/null; then
    libvirtd -d
fi
# The first call probes QEMU's capabilities (~8 s); wait until the daemon answers.
for _ in $(seq 1 60); do
    if virsh -c qemu:///system version >/dev/null 2>&1; then
        echo "libvirtd: up ($(virsh -c qemu:///system version --daemon 2>/dev/null | awk '/daemon/ {print $NF}'))"
        exit 0
    fi
    sleep 0.5
done
echo "libvirtd did not answer on qemu:///system within 30 s; see /var/log/libvirt" >&2
exit 1
