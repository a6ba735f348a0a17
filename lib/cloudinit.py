"""NoCloud seed content for a VM (pure): user-data, meta-data, network-config.

user-data carries the spec's user_configs (users, their SSH keys, passwordless sudo), the hostname
and packages; for a VM with extra disks (the data VM) it partitions, formats and mounts them by
label and creates the spec's directory layout. Every document is YAML that parses back.
"""

from __future__ import annotations

from typing import Any

import yaml

from lib.inventory.model import VM


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
        dirs = [f"{d.mount}/{sub}" for d in vm.disks for sub in d.directories] or [d.mount for d in vm.disks]
        doc["runcmd"] = [["mkdir", "-p", *dirs]]
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def meta_data(vm: VM) -> str:
    return yaml.safe_dump({"instance-id": vm.name, "local-hostname": vm.name}, sort_keys=False)


def network_config(vm: VM) -> str:
    nic: dict[str, Any] = {"match": {"name": "en*"}}
    net = vm.network
    if net is None:
        nic["dhcp4"] = True
    else:
        nic["addresses"] = [str(net.address)]
        if net.gateway:
            nic["routes"] = [{"to": "default", "via": str(net.gateway)}]
        if net.dns:
            nic["nameservers"] = {"addresses": [str(a) for a in net.dns]}
    return yaml.safe_dump({"version": 2, "ethernets": {"primary": nic}}, sort_keys=False)


def seed_files(vm: VM) -> dict[str, str]:
    return {"user-data": user_data(vm), "meta-data": meta_data(vm), "network-config": network_config(vm)}
