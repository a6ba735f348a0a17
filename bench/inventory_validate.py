"""Benchmark: validate a generated inventory of 100 hypervisors with 1000 VMs (target: under 1 s).

Writes the files to a temporary hosts/ dir, then times load_inventory (YAML parse, schema, every
rule, pin planning) over all of them, median of 5 runs. Two variants: pins given in the files,
and pins left to the planner.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.inventory.load import load_inventory

HOSTS, VMS_PER_HOST, RUNS = 100, 10, 5

# A real public key (its private half was thrown away): keys are checked with ssh-keygen -l (#26).
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJW5J3lsIsf6/qRrVkq+NRu+PENpGXQp/hcDxmzgyjIe bench@numa-k3s"


def _host(index: int, planned: bool) -> dict[str, object]:
    vms = []
    for v in range(VMS_PER_HOST):
        node = v % 2
        slot = v // 2  # 5 VMs per node, 3 cores (6 threads) each, cores 0-14 of the socket
        first = node * 18 + slot * 3
        pins = [cpu for core in range(first, first + 3) for cpu in (core, core + 36)]
        tuning: dict[str, object] = {
            "emulator_cpuset": "16-17,52-53" if node == 0 else "34-35,70-71",
            "numa_memory": {"nodeset": str(node), "mode": "strict"},
        }
        if not planned:
            tuning["vcpu_pins"] = [str(p) for p in pins]
        vms.append({
            "name": f"hv{index}-vm{v}", "vcpu_count": 6, "memory_mb": 16384,
            "disk_path": f"/var/lib/libvirt/images/vm{v}.qcow2", "disk_size_gb": 40,
            "base_image_path": "/var/lib/libvirt/images/base.qcow2", "bridge_network_interface": "br0",
            "cloud_init_iso_path": f"/var/lib/libvirt/images/vm{v}-seed.iso", "tuning": tuning,
            "user_configs": [{"username": "admin", "ssh_authorized_keys": [KEY]}],
            "k8s": {"role": "server" if v == 0 else "agent", "taints": ["workload=x:NoSchedule"]},
        })
    return {
        "ssh": {"host": f"hv{index}.example"}, "bridge": "br0",
        "topology": {"sockets": 2, "cores_per_socket": 18, "threads_per_core": 2, "l3_cache_mb": 45,
                     "nodes": [{"id": 0, "cpus": "0-17,36-53", "memory_mb": 131072},
                               {"id": 1, "cpus": "18-35,54-71", "memory_mb": 131072}]},
        # Every VM is tainted, so the add-ons need a node (rule k3s.addons-no-node): the server, as hv1.
        "k3s": {"version": "v1.31.4+k3s1", "addon_node": vms[0]["name"]}, "vms": vms,
    }


def measure(planned: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        hosts = Path(tmp)
        for i in range(HOSTS):
            (hosts / f"hv{i}.yaml").write_text(yaml.safe_dump(_host(i, planned)))
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            inv = load_inventory(hosts)
            times.append(time.perf_counter() - start)
        assert sum(len(h.host.vms) for h in inv.hosts.values()) == HOSTS * VMS_PER_HOST
        return statistics.median(times)


def main() -> None:
    print(f"inventory validation: {HOSTS} hypervisors, {HOSTS * VMS_PER_HOST} VMs, median of {RUNS} runs")
    for planned in (False, True):
        secs = measure(planned)
        label = "pins planned" if planned else "pins given  "
        verdict = "ok" if secs < 1.0 else "OVER the 1 s target"
        print(f"  {label}: {secs:.3f} s  ({verdict})")


if __name__ == "__main__":
    main()
