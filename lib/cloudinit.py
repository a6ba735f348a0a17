"""NoCloud seed content for a VM (pure): user-data, meta-data, network-config.

user-data carries the spec's user_configs (users, their SSH keys, passwordless sudo), the hostname
and packages; for a VM with extra disks (the data VM) it partitions, formats and mounts them by
label and creates the spec's directory layout. Every document is YAML that parses back.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from lib.inventory.model import VM
from lib.k3s import service


def mounts_dropin_path(vm: VM) -> str:
    return f"/etc/systemd/system/{service(vm)}.service.d/10-data-mounts.conf"


def mounts_dropin(vm: VM) -> str:
    """k3s starts only once the data disks are mounted: pods writing to /data/lake before the mount
    would fill the root filesystem and be hidden under the mount afterwards."""
    return "[Unit]\nRequiresMountsFor=" + " ".join(d.mount for d in vm.disks) + "\n"


def user_data(vm: VM) -> str:
    doc: dict[str, Any] = {
        "hostname": vm.name,
        "preserve_hostname": False,
        "users": [
            {"name": u.username, "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": True,
             "ssh_authorized_keys": list(u.ssh_authorized_keys)}
            for u in vm.user_configs
        ],
        "ssh_pwauth": False,
        # A changed seed is a new instance, and cloud-init's ssh module would then replace the host
        # keys: clients that recorded them (host_key: accept-new) would refuse the VM from then on.
        "ssh_deletekeys": False,
    }
    if vm.packages:
        doc["packages"] = list(vm.packages)
    if vm.disks:
        devices = {d.name: f"/dev/{d.target}" for d in vm.disks}
        # overwrite: false: a disk that already holds a partition table (a rebuilt VM reusing its
        # data disks) is never wiped.
        doc["disk_setup"] = {devices[d.name]: {"table_type": "gpt", "layout": True, "overwrite": False}
                             for d in vm.disks}
        doc["fs_setup"] = [{"label": d.name, "filesystem": d.filesystem, "device": devices[d.name],
                            "partition": "auto", "overwrite": False} for d in vm.disks]
        doc["mounts"] = [[f"LABEL={d.name}", d.mount, d.filesystem, "defaults,nofail", "0", "2"] for d in vm.disks]
        # Only on the mounted filesystem: with nofail a missing disk leaves the mount point empty, and
        # directories made there would land on the root filesystem and hide the failure.
        doc["runcmd"] = [["sh", "-c", 'mountpoint -q "$1" && mkdir -p "$@"', "sh", d.mount,
                          *[f"{d.mount}/{sub}" for sub in d.directories]] for d in vm.disks]
        if vm.k8s:
            doc["write_files"] = [{"path": mounts_dropin_path(vm), "owner": "root:root", "permissions": "0644",
                                   "content": mounts_dropin(vm)}]
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def instance_id(vm: VM, user_data_text: str, network_text: str) -> str:
    """The VM's name and a digest of what the seed asks for: cloud-init runs its per-instance modules
    (users, keys, disks, mounts, runcmd, network) only when instance-id changes, so a seed with
    new content must carry a new id or the VM silently keeps the old configuration."""
    digest = hashlib.sha256(f"{vm.name}\0{user_data_text}\0{network_text}".encode()).hexdigest()
    return f"{vm.name}-{digest[:12]}"


def meta_data(vm: VM, iid: str) -> str:
    return yaml.safe_dump({"instance-id": iid, "local-hostname": vm.name}, sort_keys=False)


def network_config(vm: VM) -> str:
    """One NIC matched by the MAC the domain gives it and renamed to `primary` (set-name), so every
    renderer (netplan, networkd, eni, sysconfig) writes config for an interface that exists: a name
    glob (`en*`) is netplan-only, and the eni/sysconfig renderers only rename on set-name. The default
    route is spelled 0.0.0.0/0: cloud-init 22.4's networkd and eni renderers reject `to: default`."""
    nic: dict[str, Any] = {"match": {"macaddress": vm.mac_address}, "set-name": "primary"}
    net = vm.network
    if net is None:
        nic["dhcp4"] = True
    else:
        nic["addresses"] = [str(net.address)]
        if net.gateway:
            nic["routes"] = [{"to": "0.0.0.0/0", "via": str(net.gateway)}]
        if net.dns:
            nic["nameservers"] = {"addresses": [str(a) for a in net.dns]}
    return yaml.safe_dump({"version": 2, "ethernets": {"primary": nic}}, sort_keys=False)


def seed_files(vm: VM) -> dict[str, str]:
    user, net = user_data(vm), network_config(vm)
    return {"user-data": user, "meta-data": meta_data(vm, instance_id(vm, user, net)), "network-config": net}
