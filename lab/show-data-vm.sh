#!/usr/bin/env bash
# What real cloud-init did on the lab's data VM, in the guest's own words: `cloud-init status` and
# the data tiers' mounts. Logs in as the seed's non-root user admin through the lab hypervisor
# (a jump host, as the product does), with the host keys provision recorded: checked, not trusted anew.
#
#   lab/show-data-vm.sh [VM]    (default lab-data; the VM's SSH port is read from hosts/lab.yaml)
set -euo pipefail

LAB=${LAB_DIR:-/var/lib/numa-k3s-lab}
here=$(cd "$(dirname "$0")" && pwd)
vm=${1:-lab-data}
port=$("$here/../.venv/bin/python" - "$here/../hosts/lab.yaml" "$vm" <<'PY'
import sys
import yaml
vms = {v["name"]: v for v in yaml.safe_load(open(sys.argv[1]))["vms"]}
print(vms[sys.argv[2]]["ssh"]["port"] if sys.argv[2] in vms else "")
PY
)
[ -n "$port" ] || { echo "lab: no VM $vm in hosts/lab.yaml" >&2; exit 2; }
opts=(-o BatchMode=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$LAB/ssh/known_hosts"
      -i "$LAB/ssh/id_ed25519")
jump="ssh ${opts[*]} -p 2200 -W %h:%p root@127.0.0.1"
echo "lab: on $vm as admin: cloud-init status --long; findmnt of /data/hot and /data/lake"
# findmnt takes two arguments as SOURCE and TARGET of one mount: each mount point is asked apart.
# Any non-zero exit (cloud-init degraded or in error, a tier not mounted) fails the demo.
ssh "${opts[@]}" -o "ProxyCommand=$jump" -p "$port" admin@127.0.0.1 \
    'set -e; echo "logged in as $(id -un)"; cloud-init status --long
     cols=TARGET,SOURCE,FSTYPE,OPTIONS
     findmnt -o $cols --mountpoint /data/hot; findmnt -n -o $cols --mountpoint /data/lake'
