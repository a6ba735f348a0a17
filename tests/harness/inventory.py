"""Write hosts/<name>.yaml files that point at real sshd test hosts (and their generated sysroots)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from tests.harness.sshd import SshHost

SPEC_TOPOLOGY: dict[str, Any] = {
    "sockets": 2, "cores_per_socket": 18, "threads_per_core": 2, "l3_cache_mb": 45,
    "nodes": [{"id": 0, "cpus": "0-17,36-53", "memory_mb": 131072},
              {"id": 1, "cpus": "18-35,54-71", "memory_mb": 131072}],
}


def ssh_of(host: SshHost) -> dict[str, Any]:
    return {"host": host.host, "port": host.port, "user": host.user, "key_file": str(host.key_file),
            "known_hosts": str(host.known_hosts)}


def small_vm(name: str, index: int, guest: SshHost | None = None, *, role: str = "agent",
             jump: bool = True) -> dict[str, Any]:
    """A 2-vCPU VM on node 0 of the spec topology (cores index+1), optionally reachable over SSH."""
    vm: dict[str, Any] = {
        "name": name, "vcpu_count": 2, "memory_mb": 2048,
        "disk_path": f"/var/lib/libvirt/images/{name}.qcow2", "disk_size_gb": 10,
        "base_image_path": "/var/lib/libvirt/images/base.qcow2", "bridge_network_interface": "br0",
        "cloud_init_iso_path": f"/var/lib/libvirt/images/{name}-seed.iso",
        "tuning": {"vcpu_pins": [str(index + 1), str(index + 37)], "emulator_cpuset": "16-17,52-53",
                   "numa_memory": {"nodeset": "0", "mode": "strict"}},
        "k8s": {"role": role, "taints": [f"workload={name}:NoSchedule"]},
    }
    if guest is not None:
        vm["ssh"] = ssh_of(guest) | {"jump": jump}
    return vm


LOCKS_HANDED_OUT: set[Path] = set()  # removed at the session's end (tests/conftest.py)


def lock_path_for(hosts_dir: Path, name: str) -> Path:
    """The test's own lock file, in /run/lock as the inventory requires (rule lock.path), named after
    the test's directory so parallel tests and sessions never share one."""
    digest = hashlib.sha256(str(hosts_dir.resolve()).encode()).hexdigest()[:16]
    path = Path("/run/lock") / f"numa-k3s-test-{digest}-{name}.lock"
    LOCKS_HANDED_OUT.add(path)
    return path


DEFAULT_ROOTS = ("/var/lib/libvirt/images", "/srv")


def storage_roots_of(vms: list[dict[str, Any]]) -> list[str]:
    """The default roots plus the directory of every VM file outside them (a test's tmp_path/images)."""
    files = [p for vm in vms for p in (vm.get("disk_path"), vm.get("cloud_init_iso_path"), vm.get("base_image_path"))]
    files += [d.get("path") for vm in vms for d in vm.get("disks", [])]
    extra = {str(Path(f).parent) for f in files if isinstance(f, str)
             and not any(f.startswith(root + "/") for root in DEFAULT_ROOTS)}
    return [*DEFAULT_ROOTS, *sorted(extra)]


def write_host(hosts_dir: Path, name: str, ssh: SshHost, *, sysroot: Path | None = None,
               vms: list[dict[str, Any]] | None = None, **extra: Any) -> Path:
    """A host file whose hypervisor is the given sshd host; the lock file is the test's own
    (lock_path_for) and the test's directory is a storage root beside the default ones."""
    hosts_dir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "ssh": ssh_of(ssh),
        "sysroot": str(sysroot) if sysroot else "/",
        "lock_path": str(lock_path_for(hosts_dir, name)),
        "bridge": "br0",
        "topology": SPEC_TOPOLOGY,
        "k3s": {"version": "v1.31.4+k3s1"},
        "vms": vms or [],
    } | extra
    if "storage_roots" not in extra:  # the test's own image directories are where its files may live (#26)
        # and the test's directory, where safety tests put their decoys and ownership registries.
        # (not when it is on /dev/shm, the fast fleets' place: /dev is a system tree, refused as a root).
        mine = [] if hosts_dir.resolve().is_relative_to("/dev") else [str(hosts_dir.parent)]
        data["storage_roots"] = list(dict.fromkeys([*mine, *storage_roots_of(data["vms"])]))
    # Every VM small_vm() writes is tainted: the packaged add-ons need a node (rule k3s.addons-no-node).
    servers = [vm["name"] for vm in data["vms"] if vm.get("k8s", {}).get("role") == "server"]
    if servers and "addon_node" not in data["k3s"]:
        data["k3s"] = {**data["k3s"], "addon_node": servers[0]}
    path = hosts_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
