"""Every inventory rule both ways: the real hv1 passes it, a broken copy fails it with id and path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lib.errors import InventoryError
from lib.inventory.load import load_inventory
from tests.inventory_helpers import Mutation, mutated, write_inventory


def _vm(d: dict[str, Any], i: int) -> dict[str, Any]:
    vm: dict[str, Any] = d["vms"][i]
    return vm


def _set(path: str, value: Any) -> Mutation:
    """Mutation that sets a dotted path like 'vms.1.tuning.vcpu_pins.3'."""

    def apply(d: dict[str, Any]) -> None:
        parts = path.split(".")
        node: Any = d
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


def _both(first: Mutation, second: Mutation) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        first(d)
        second(d)

    return apply


def _delete(path: str) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        parts = path.split(".")
        node: Any = d
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[parts[-1]]

    return apply


def _rename(path: str, new_key: str) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        parts = path.split(".")
        node: Any = d
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[new_key] = node.pop(parts[-1])

    return apply


def _swap_pin(vm: int, index: int, cpu: int) -> Mutation:
    return _set(f"vms.{vm}.tuning.vcpu_pins.{index}", str(cpu))


def _servers(*indexes: int) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        for i, vm in enumerate(d["vms"]):
            vm["k8s"]["role"] = "server" if i in indexes else "agent"

    return apply


def _drop_last_pin(d: dict[str, Any]) -> None:
    _vm(d, 2)["tuning"]["vcpu_pins"].pop()


def _normal_pages(d: dict[str, Any]) -> None:
    """hv1 without its hugepage reservation: every VM on normal pages (memory.fit alone)."""
    d.pop("hugepages", None)
    for vm in d["vms"]:
        vm["tuning"].pop("hugepages", None)


def _on_normal_pages(mutate: Mutation) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        _normal_pages(d)
        mutate(d)

    return apply


def _huge_data_vm(d: dict[str, Any]) -> None:
    _normal_pages(d)
    _vm(d, 1)["memory_mb"] = 61440 + 12000


def _disk_on_other_vm(d: dict[str, Any]) -> None:
    _vm(d, 2)["disk_path"] = _vm(d, 0)["disk_path"]


def _node_overlap(d: dict[str, Any]) -> None:
    d["topology"]["nodes"][1]["cpus"] = "17-35,54-71"


def _plan_20_on_node_1(d: dict[str, Any]) -> None:
    del _vm(d, 3)["tuning"]["vcpu_pins"]
    _vm(d, 3)["vcpu_count"] = 20


# (mutation, rule id, field path, fragment of the message)
BROKEN: list[tuple[str, Mutation, str, str, str]] = [
    ("missing field", _delete("vms.0.memory_mb"), "schema.missing", "vms[0].memory_mb", "required field"),
    ("typo'd key", _rename("vms.1.tuning.vcpu_pins", "vcpu_pin"), "schema.unknown-key",
     "vms[1].tuning.vcpu_pin", "did you mean 'vcpu_pins'"),
    ("wrong type", _set("vms.0.vcpu_count", "many"), "schema.type", "vms[0].vcpu_count", "integer"),
    ("bad mode", _set("vms.0.tuning.numa_memory.mode", "strikt"), "schema.type",
     "vms[0].tuning.numa_memory.mode", "'strict'"),
    ("bad domain name", _set("vms.2.name", "K3s_Worker"), "name.invalid", "vms[2].name", "RFC 1123"),
    ("relative path", _set("vms.0.disk_path", "images/slm-heavy.qcow2"), "path.not-absolute",
     "vms[0].disk_path", "not an absolute path"),
    ("dotdot path", _set("vms.0.disk_path", "/var/lib/../../etc/passwd"), "path.not-absolute",
     "vms[0].disk_path", "'..'"),
    ("shell metacharacters", _set("vms.0.cloud_init_iso_path", "/var/x.iso;rm -rf /"), "value.shell-unsafe",
     "vms[0].cloud_init_iso_path", "';'"),
    ("shell in bridge", _set("bridge", "br0$(reboot)"), "name.invalid", "bridge", "network interface"),
    ("bad cpulist", _set("vms.0.tuning.emulator_cpuset", "16-"), "cpulist.invalid",
     "vms[0].tuning.emulator_cpuset", "16-"),
    ("pin count", _drop_last_pin, "pins.count", "vms[2].tuning.vcpu_pins",
     "vcpu_count is 8 but 7 pins are given"),
    ("pin twice in one VM", _swap_pin(2, 1, 24), "pins.duplicate", "vms[2].tuning.vcpu_pins[1]",
     "CPU 24 is pinned to vCPU 0 and vCPU 1"),
    ("CPU that does not exist", _swap_pin(0, 5, 80), "pins.unknown-cpu", "vms[0].tuning.vcpu_pins[5]",
     "CPU 80 does not exist on this host (CPUs 0-71)"),
    ("emulator CPU that does not exist", _set("vms.0.tuning.emulator_cpuset", "16-17,52-53,99"),
     "pins.unknown-cpu", "vms[0].tuning.emulator_cpuset", "CPU 99 does not exist"),
    ("CPU shared by two VMs", _swap_pin(3, 0, 18), "pins.shared", "vms[3].tuning.vcpu_pins[0]",
     "CPU 18 is already a vCPU pin of vms[1] (k3s-worker-data)"),
    ("emulator on vCPU CPUs", _set("vms.1.tuning.emulator_cpuset", "32-35"), "pins.emulator-overlap",
     "vms[1].tuning.emulator_cpuset", "CPUs 32-33 are vCPU pins of vms[3] (k3s-server-tasks)"),
    ("vCPU on the other node", _swap_pin(1, 3, 40), "pins.numa", "vms[1].tuning.vcpu_pins[3]",
     "CPU 40 is on NUMA node 0, but numa_memory.nodeset is 1"),
    ("emulator on the other node", _set("vms.0.tuning.emulator_cpuset", "16-17,52-53,71"), "pins.numa",
     "vms[0].tuning.emulator_cpuset", "emulator CPU 71 is on NUMA node 1, but numa_memory.nodeset is 0"),
    ("unknown NUMA node", _set("vms.2.tuning.numa_memory.nodeset", "1-2"), "numa.unknown-node",
     "vms[2].tuning.numa_memory.nodeset", "NUMA node(s) 2 do not exist"),
    ("memory does not fit", _huge_data_vm, "memory.fit", "topology.nodes[1].memory_mb",
     "node 1: VMs need 130784 MB"),
    ("no server", _servers(), "k3s.server-count", "vms", "found none"),
    ("two servers", _servers(2, 3), "k3s.server-count", "vms",
     "found 2 (k3s-worker-slm, k3s-server-tasks)"),
    ("three servers: HA is not built", _servers(0, 2, 3), "k3s.server-count", "vms",
     "Several servers (HA, embedded etcd) are not built"),
    ("every node tainted, no addon_node", _delete("k3s.addon_node"), "k3s.addons-no-node", "vms",
     "k3s-worker-data has workload=data:NoSchedule; k3s-worker-slm has workload=slm:NoSchedule; "
     "k3s-server-tasks has workload=tasks:NoSchedule; they would stay Pending and cluster DNS would not answer. "
     "Resolve: set k3s.addon_node: k3s-server-tasks"),
    ("addon_node is no k3s VM", _set("k3s.addon_node", "elsewhere"), "k3s.addon-node", "k3s.addon_node",
     "'elsewhere' is not a k3s VM of this host"),
    ("bad taint effect", _set("vms.0.k8s.taints", ["workload=slm:NoScheduel"]), "k3s.taint-format",
     "vms[0].k8s.taints[0]", "key[=value]:Effect"),
    ("taint without effect", _set("vms.0.k8s.taints", ["workload=slm"]), "k3s.taint-format",
     "vms[0].k8s.taints[0]", "NoSchedule, PreferNoSchedule, NoExecute"),
    ("disk shared by two VMs", _disk_on_other_vm, "disk.duplicate", "vms[2].disk_path",
     "/var/lib/libvirt/images/slm-heavy.qcow2 is also vms[0].disk_path"),
    ("disk is the base image", _set("vms.1.disks.0.path", "/var/lib/libvirt/images/base.qcow2"),
     "disk.base-image", "vms[1].disks[0].path", "is the base image of vms[0]"),
    ("same disk target twice", _set("vms.1.disks.1.target", "vdb"), "disk.target", "vms[1].disks[1].target",
     "vdb is also the target of vms[1].disks[0]"),
    ("same VM name twice", _set("vms.2.name", "k3s-worker-data"), "name.duplicate", "vms[2].name",
     "also the name of vms[1]"),
    ("node cpus overlap", _node_overlap, "topology.cpus", "topology.nodes[1].cpus", "CPU 17 is in node 0 and node 1"),
    ("host reserve on vCPUs", _set("host_reserved_cpus", "0"), "pins.host-overlap", "host_reserved_cpus",
     "CPU 0 is reserved for the host but is a vCPU pin of vms[0]"),
    ("planner out of room", _plan_20_on_node_1, "pins.plan", "vms[3].vcpu_count",
     "could not fit 20 vCPUs of k3s-server-tasks on node 1: 12 free threads"),
]


@pytest.mark.parametrize(("mutate", "rule", "path", "fragment"),
                         [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_broken_inventory_names_rule_and_path(tmp_path: Path, mutate: Mutation, rule: str, path: str,
                                              fragment: str) -> None:
    hosts = write_inventory(tmp_path, mutated(mutate))
    with pytest.raises(InventoryError) as err:
        load_inventory(hosts)
    hits = [p for p in err.value.problems if p.rule == rule and p.path == path]
    assert hits, f"no {rule} at {path} in:\n{err.value}"
    assert fragment in hits[0].message, str(err.value)
    assert hits[0].file == str(hosts / "hv1.yaml")
    assert err.value.exit_code == 2
    line = str(hits[0])
    assert line.startswith(f"ERROR [{rule}] {hosts / 'hv1.yaml'}: {path}: ")


def test_real_hv1_passes_every_rule(tmp_path: Path) -> None:
    inv = load_inventory(write_inventory(tmp_path))
    # Its keys are the spec's placeholder (#26): a warning until a run applies, nothing else.
    assert [(w.rule, w.path) for w in inv.warnings] == [
        ("key.placeholder", f"vms[{i}].user_configs[0].ssh_authorized_keys[0]") for i in range(4)]
    assert [vm.name for vm in inv.hosts["hv1"].host.vms] == [
        "k3s-worker-slm-heavy", "k3s-worker-data", "k3s-worker-slm", "k3s-server-tasks"]


# Cases that sit right at a rule's edge and must pass.
EDGES: list[tuple[str, Mutation]] = [
    ("one node without custom taints takes the add-ons", _both(_delete("k3s.addon_node"),
                                                               _set("vms.1.k8s.taints", []))),
    ("add-ons disabled: no node needed", _both(_delete("k3s.addon_node"), _set(
        "k3s.disable", ["coredns", "local-storage", "metrics-server", "traefik"]))),
    ("a VM outside the cluster", _delete("vms.0.k8s")),
    ("taint without value", _set("vms.0.k8s.taints", ["dedicated:PreferNoSchedule"])),
    ("memory fills the node to the MB", _on_normal_pages(_set("vms.0.memory_mb", 131072 - 4096))),
    ("non-strict VM may span nodes with its emulator", _set("vms.0.tuning.numa_memory.mode", "preferred")),
    ("emulator set shared by three VMs", lambda d: None),
]


@pytest.mark.parametrize("mutate", [m for _, m in EDGES], ids=[n for n, _ in EDGES])
def test_edges_pass(tmp_path: Path, mutate: Mutation) -> None:
    load_inventory(write_inventory(tmp_path, mutated(mutate)))


def test_memory_one_mb_over_fails(tmp_path: Path) -> None:
    hosts = write_inventory(tmp_path, mutated(_on_normal_pages(_set("vms.0.memory_mb", 131072 - 4096 + 1))))
    with pytest.raises(InventoryError, match=r"\[memory.fit\].*need 126977 MB"):
        load_inventory(hosts)


def test_sibling_split_is_a_warning_not_an_error(tmp_path: Path) -> None:
    # slm gives up 63 (sibling of 27) and takes 64's sibling 28... instead: swap one thread each way.
    def split(d: dict[str, Any]) -> None:
        _vm(d, 2)["tuning"]["vcpu_pins"][7] = "64"   # slm takes CPU 64, sibling of tasks' 28
        _vm(d, 3)["tuning"]["vcpu_pins"][1] = "63"   # tasks takes CPU 63, sibling of slm's 27

    inv = load_inventory(write_inventory(tmp_path, mutated(split)))
    rules = {(w.rule, w.path, w.severity) for w in inv.warnings}
    assert ("pins.sibling-split", "vms[2].tuning.vcpu_pins[7]", "warning") in rules
    assert ("pins.sibling-split", "vms[3].tuning.vcpu_pins[1]", "warning") in rules
    message = next(w.message for w in inv.warnings if w.path == "vms[2].tuning.vcpu_pins[7]")
    assert message == "CPU 64 shares a core with CPU 28 of vms[3] (k3s-server-tasks): noisy neighbour"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def many(d: dict[str, Any]) -> None:
        _swap_pin(1, 3, 40)(d)          # pins.numa
        _swap_pin(3, 0, 19)(d)          # pins.shared
        _servers(2, 3)(d)               # k3s.server-count
        _disk_on_other_vm(d)            # disk.duplicate

    with pytest.raises(InventoryError) as err:
        load_inventory(write_inventory(tmp_path, mutated(many)))
    rules = {p.rule for p in err.value.problems}
    assert {"pins.numa", "pins.shared", "k3s.server-count", "disk.duplicate"} <= rules


def test_every_schema_problem_is_reported_at_once(tmp_path: Path) -> None:
    def many(d: dict[str, Any]) -> None:
        _rename("vms.1.tuning.vcpu_pins", "vcpu_pin")(d)
        _set("vms.3.disk_path", "relative.qcow2")(d)
        _delete("topology.sockets")(d)

    with pytest.raises(InventoryError) as err:
        load_inventory(write_inventory(tmp_path, mutated(many)))
    found = {(p.rule, p.path) for p in err.value.problems}
    assert found >= {("schema.unknown-key", "vms[1].tuning.vcpu_pin"), ("path.not-absolute", "vms[3].disk_path"),
                     ("schema.missing", "topology.sockets")}
