"""Loading: the spec's JSON verbatim, defaults inheritance, planned pins, file-level errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lib.errors import InventoryError
from lib.inventory.load import load_inventory
from lib.inventory.model import VM
from tests.inventory_helpers import REPO, hv1, mutated, write_inventory

SPEC_JSON = sorted((REPO / "tests" / "fixtures" / "spec").glob("*.json"))
SPEC_FIELDS = ("name", "vcpu_count", "memory_mb", "disk_path", "disk_size_gb", "base_image_path",
               "bridge_network_interface", "cloud_init_iso_path", "tuning", "user_configs")


@pytest.mark.parametrize("path", SPEC_JSON, ids=[p.stem for p in SPEC_JSON])
def test_spec_json_block_loads_unchanged_and_matches_hv1(path: Path) -> None:
    block = json.loads(path.read_text())
    vm = VM.model_validate(block)  # the spec's JSON, not a key changed
    ours = next(v for v in load_inventory(REPO / "hosts", ["hv1"]).hosts["hv1"].host.vms if v.name == vm.name)
    # Only the spec's own tuning keys: hugepages and exclusive_l3_mb are this inventory's additions.
    fields: dict[str, Any] = dict.fromkeys(SPEC_FIELDS, True) | {"tuning": set(block["tuning"])}
    assert ours.model_dump(include=fields) == vm.model_dump(include=fields)
    assert ours.pins == tuple(int(p) for p in block["tuning"]["vcpu_pins"])


def test_four_spec_blocks_are_fixtures() -> None:
    assert len(SPEC_JSON) == 4


def test_hv1_holds_the_prose_of_the_spec() -> None:
    host = load_inventory(REPO / "hosts", ["hv1"]).hosts["hv1"].host
    topo = host.topology
    assert (topo.sockets, topo.cores_per_socket, topo.threads_per_core, topo.l3_cache_mb) == (2, 18, 2, 45)
    assert [(n.id, n.cpus) for n in topo.nodes] == [(0, "0-17,36-53"), (1, "18-35,54-71")]
    assert host.bridge == "br0"
    assert (host.tuning.cpu_governor, host.tuning.numa_balancing) == ("performance", 0)
    assert (host.tuning.thp_enabled, host.tuning.thp_defrag) == ("always", "always")
    vms = {vm.name: vm for vm in host.vms}
    data = vms["k3s-worker-data"]
    hot, cold = data.disks
    assert (hot.target, hot.size_gb, hot.tier, hot.mount, hot.directories) == (
        "vdb", 80, "ssd", "/data/hot", ("clean", "staging"))
    assert (cold.target, cold.size_gb, cold.tier, cold.mount, cold.directories) == (
        "vdc", 8192, "hdd", "/data/lake", ("clean/bronze", "clean/silver", "clean/gold", "archive", "raw"))
    taints = {name: (vm.k8s.role, vm.k8s.taints) for name, vm in vms.items() if vm.k8s}
    assert taints == {
        "k3s-worker-slm-heavy": ("agent", ("workload=slm:NoSchedule",)),
        "k3s-worker-data": ("agent", ("workload=data:NoSchedule",)),
        "k3s-worker-slm": ("agent", ("workload=slm:NoSchedule",)),
        "k3s-server-tasks": ("server", ("node-role.kubernetes.io/control-plane:NoSchedule",
                                        "workload=tasks:NoSchedule")),
    }


def test_planner_reproduces_the_spec_pins_from_counts_and_nodes(tmp_path: Path) -> None:
    def strip(d: dict[str, Any]) -> None:
        for vm in d["vms"]:
            del vm["tuning"]["vcpu_pins"]

    loaded = load_inventory(write_inventory(tmp_path, mutated(strip))).hosts["hv1"]
    assert loaded.planned == {"k3s-worker-slm-heavy", "k3s-worker-data", "k3s-worker-slm", "k3s-server-tasks"}
    spec = {vm["name"]: tuple(int(p) for p in vm["tuning"]["vcpu_pins"]) for vm in hv1()["vms"]}
    assert {vm.name: vm.pins for vm in loaded.host.vms} == spec


def test_host_file_overrides_defaults_key_by_key(tmp_path: Path) -> None:
    data = hv1()
    data["ssh"] = {"host": "10.0.0.5", "port": 2222}
    data["k3s"] = {"version": "v1.30.9+k3s1", "addon_node": "k3s-server-tasks"}
    defaults = {"ssh": {"user": "ops", "port": 22, "key_file": "~/.ssh/hv"},
                "k3s": {"version": "v1.31.4+k3s1", "install": "airgap"}}
    host = load_inventory(write_inventory(tmp_path, data, defaults=defaults)).hosts["hv1"].host
    assert (host.ssh.host, host.ssh.port, host.ssh.user, host.ssh.key_file) == ("10.0.0.5", 2222, "ops", "~/.ssh/hv")
    assert (host.k3s.version, host.k3s.install) == ("v1.30.9+k3s1", "airgap")


def test_error_in_defaults_names_the_defaults_file(tmp_path: Path) -> None:
    defaults = {"ssh": {"user": "ops"}, "k3s": {"version": "1.31"}}
    hosts = write_inventory(tmp_path, hv1() | {"ssh": {"host": "h"}}, defaults=defaults)
    with pytest.raises(InventoryError) as err:
        load_inventory(hosts)
    (problem,) = err.value.problems
    assert (problem.rule, problem.file, problem.path) == ("k3s.version", str(hosts / "defaults.yaml"), "k3s.version")


def test_malformed_yaml_is_one_line_with_position(tmp_path: Path) -> None:
    hosts = write_inventory(tmp_path)
    (hosts / "hv1.yaml").write_text("topology:\n  sockets: 2\n  nodes: [1, 2\nvms: []\n")
    with pytest.raises(InventoryError) as err:
        load_inventory(hosts)
    (problem,) = err.value.problems
    assert problem.rule == "yaml.syntax"
    assert problem.path.startswith("line 4, column")
    assert "\n" not in str(problem)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    hosts = write_inventory(tmp_path)
    (hosts / "hv1.yaml").write_text("- just\n- a list\n")
    with pytest.raises(InventoryError, match=r"\[yaml.not-mapping\].*not a list"):
        load_inventory(hosts)


def test_unknown_host_lists_the_known_ones(tmp_path: Path) -> None:
    hosts = write_inventory(tmp_path)
    with pytest.raises(InventoryError) as err:
        load_inventory(hosts, ["hv9"])
    assert str(err.value) == f"ERROR [host.unknown] {hosts}: unknown host 'hv9'; {hosts} has hv1"


def test_missing_inventory_directory(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"\[file.missing\].*inventory directory not found"):
        load_inventory(tmp_path / "nope")


def test_defaults_are_optional(tmp_path: Path) -> None:
    hosts = write_inventory(tmp_path, hv1() | {"ssh": {"host": "h"}, "k3s": {"version": "v1.31.4+k3s1",
                                                                          "addon_node": "k3s-server-tasks"}})
    (hosts / "defaults.yaml").unlink()
    host = load_inventory(hosts).hosts["hv1"].host
    assert host.ssh.user == "root"
