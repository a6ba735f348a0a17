#!/usr/bin/env bash
# The local lab that hosts/lab.yaml describes, on this one machine (see docs/labs.md "The lab"):
#   - libvirtd + virtlogd (lab/services.sh)
#   - an SSH key, and a local sshd on 127.0.0.1:2200 that plays the hypervisor's SSH endpoint
#   - the cloud guest (lab/build-cloud-guest.sh: the Debian kernel, this machine's root over 9p,
#     Debian's cloud-init applying each VM's seed); it builds the tiny guest it starts from
#   - a small base qcow2 image and the directories the inventory's disk paths live in
# Idempotent: what exists is kept. Nothing here is product code; it stands in for a real host.
set -euo pipefail

LAB=${LAB_DIR:-/var/lib/numa-k3s-lab}
here=$(cd "$(dirname "$0")" && pwd)

bash "$here/services.sh"
TINY_GUEST_DIR="$LAB/guest" bash "$here/build-cloud-guest.sh" "$LAB/cloud-guest"

mkdir -p "$LAB/ssh" "$LAB/sshd" "$LAB/images" "$LAB/ssd" "$LAB/hdd"
chmod 700 "$LAB/ssh"
[ -f "$LAB/ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C numa-k3s-lab -f "$LAB/ssh/id_ed25519"
[ -f "$LAB/sshd/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C lab-hypervisor -f "$LAB/sshd/ssh_host_ed25519_key"
cp "$LAB/ssh/id_ed25519.pub" "$LAB/sshd/authorized_keys"

cat > "$LAB/sshd/sshd_config" <<CONF
ListenAddress 127.0.0.1:2200
HostKey $LAB/sshd/ssh_host_ed25519_key
PidFile $LAB/sshd/sshd.pid
AuthorizedKeysFile $LAB/sshd/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The lab's VMs are reached through this sshd as a jump host (direct-tcpip to 127.0.0.1).
AllowTcpForwarding yes
MaxSessions 50
MaxStartups 50:30:100
Subsystem sftp internal-sftp
CONF

mkdir -p /run/sshd
pid=$(cat "$LAB/sshd/sshd.pid" 2>/dev/null || true)
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    /usr/sbin/sshd -f "$LAB/sshd/sshd_config" -E "$LAB/sshd/sshd.log"
    for _ in $(seq 1 50); do [ -s "$LAB/sshd/sshd.pid" ] && break; sleep 0.1; done
fi
echo "[127.0.0.1]:2200 $(cut -d' ' -f1-2 "$LAB/sshd/ssh_host_ed25519_key.pub")" > "$LAB/ssh/known_hosts.hv"
# The VMs' keys were recorded on first use (accept-new); a VM made anew makes new ones at its first
# boot, so they are kept only while lab VMs run. The hypervisor's key is always the current one.
touch "$LAB/ssh/known_hosts"
if virsh -c qemu:///system list --name 2>/dev/null | grep -q '^lab-'; then
    grep -v '^\[127.0.0.1\]:2200 ' "$LAB/ssh/known_hosts" > "$LAB/ssh/known_hosts.vms" || true
else
    : > "$LAB/ssh/known_hosts.vms"
fi
cat "$LAB/ssh/known_hosts.hv" "$LAB/ssh/known_hosts.vms" > "$LAB/ssh/known_hosts"
rm -f "$LAB/ssh/known_hosts.hv" "$LAB/ssh/known_hosts.vms"

[ -f "$LAB/images/base.qcow2" ] || qemu-img create -q -f qcow2 "$LAB/images/base.qcow2" 1G

# No k3s binary can be downloaded here: the airgap artifacts folder gets the STAND-IN from
# tests/k3s_standin (a busybox sh script that honours the installer's contract), never real k3s.
version=$(awk '/^  version:/ {print $2}' "$here/../hosts/defaults.yaml")
"$here/../.venv/bin/python" - "$LAB/k3s-artifacts" "$version" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, ".")  # run from the repository root, as make demo does
from tests.harness.k3s_standin import standin_artifacts
standin_artifacts(Path(sys.argv[1]), sys.argv[2])
PY
echo "lab: k3s artifacts in $LAB/k3s-artifacts are the k3s STAND-IN $version (tests/k3s_standin), not real k3s"
echo "lab: up (hypervisor ssh root@127.0.0.1:2200, key $LAB/ssh/id_ed25519, guest $LAB/cloud-guest)"
