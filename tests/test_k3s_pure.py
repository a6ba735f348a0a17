"""k3s planning without a cluster: config.yaml per node, node JSON, taint diffs, the local token."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from lib import k3s
from lib.inventory.load import load_inventory
from lib.inventory.model import VM, Host
from lib.shell import Secret, mask
from lib.token import ENV, TokenError, cluster_token
from tests.inventory_helpers import REPO


@pytest.fixture(scope="module")
def hv1() -> Host:
    return load_inventory(REPO / "hosts", ["hv1"]).hosts["hv1"].host


def vm(host: Host, name: str) -> VM:
    return next(v for v in host.vms if v.name == name)


def test_server_config_has_token_taints_san_and_private_kubeconfig(hv1: Host) -> None:
    token = Secret("s3cr3t-token-value")
    config = yaml.safe_load(k3s.node_config(hv1, vm(hv1, "k3s-server-tasks"), token))
    assert config == {
        "token": "s3cr3t-token-value", "node-name": "k3s-server-tasks", "tls-san": ["10.0.0.14"],
        "write-kubeconfig-mode": "0600",
        "node-taint": ["node-role.kubernetes.io/control-plane:NoSchedule", "workload=tasks:NoSchedule"],
    }


def test_agent_config_points_at_the_server(hv1: Host) -> None:
    config = yaml.safe_load(k3s.node_config(hv1, vm(hv1, "k3s-worker-data"), Secret("t0ken-for-agent")))
    assert config["server"] == "https://10.0.0.14:6443"
    assert config["node-taint"] == ["workload=data:NoSchedule"] and "tls-san" not in config


def test_install_commands_pin_the_version_and_never_carry_the_token(hv1: Host) -> None:
    cmd = k3s.install_command(hv1, vm(hv1, "k3s-worker-slm"))
    assert "INSTALL_K3S_VERSION=v1.31.4+k3s1 INSTALL_K3S_EXEC=agent" in cmd.real
    assert "TOKEN" not in cmd.real and "get.k3s.io" in cmd.real
    airgap = hv1.model_copy(update={"k3s": hv1.k3s.model_copy(update={"install": "airgap"})})
    cmd = k3s.install_command(airgap, vm(airgap, "k3s-server-tasks"))
    assert cmd.real.startswith("INSTALL_K3S_SKIP_DOWNLOAD=true INSTALL_K3S_FORCE_RESTART=true "
                               "INSTALL_K3S_VERSION=v1.31.4+k3s1 INSTALL_K3S_EXEC=server sh "
                               "/var/lib/numa-k3s/install.sh")


def nodes_doc(*nodes: tuple[str, list[dict[str, str]], str]) -> str:
    items = []
    for name, taints, ready in nodes:
        item: dict[str, object] = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"node-role.kubernetes.io/control-plane": "true"}
                         if name.endswith("tasks") else {}},
            "spec": {"taints": taints} if taints else {},
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                      {"type": "Ready", "status": ready}],
                       "nodeInfo": {"kubeletVersion": "v1.31.4+k3s1"}},
        }
        items.append(item)
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def test_parse_nodes_reads_taints_readiness_roles_and_version() -> None:
    nodes = k3s.parse_nodes(nodes_doc(
        ("k3s-server-tasks", [{"key": "workload", "value": "tasks", "effect": "NoSchedule"},
                              {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}], "True"),
        ("k3s-worker-slm", [], "False")))
    server = nodes["k3s-server-tasks"]
    assert server.ready and server.roles == ("control-plane",) and server.version == "v1.31.4+k3s1"
    assert k3s.shown_taints(server.taints) == ("node-role.kubernetes.io/control-plane:NoSchedule, "
                                               "workload=tasks:NoSchedule")
    assert not nodes["k3s-worker-slm"].ready and nodes["k3s-worker-slm"].taints == frozenset()
    with pytest.raises(ValueError):
        k3s.parse_nodes("The connection to the server 127.0.0.1:6443 was refused")


def test_taint_diff_adds_overwrites_and_removes_only_managed_keys(hv1: Host) -> None:
    node = k3s.parse_nodes(nodes_doc(("k3s-worker-data", [
        {"key": "workload", "value": "old", "effect": "NoSchedule"},          # wrong value: overwrite
        {"key": "workload", "effect": "NoExecute"},                           # stale effect: remove
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},  # not ours: leave alone
    ], "True")))["k3s-worker-data"]
    cmds = [c.real for c in k3s.taint_commands(vm(hv1, "k3s-worker-data"), node, k3s.managed_keys(hv1))]
    assert cmds == [
        "k3s kubectl taint nodes k3s-worker-data workload=data:NoSchedule --overwrite",
        "k3s kubectl taint nodes k3s-worker-data workload:NoExecute-",
    ]
    exact = k3s.parse_nodes(nodes_doc(("k3s-worker-data", [
        {"key": "workload", "value": "data", "effect": "NoSchedule"}], "True")))["k3s-worker-data"]
    assert k3s.taint_commands(vm(hv1, "k3s-worker-data"), exact, k3s.managed_keys(hv1)) == []


def test_parse_version_from_k3s_version_output() -> None:
    assert k3s.parse_version("k3s version v1.31.4+k3s1 (a1b2c3d4)\ngo version go1.22.9\n") == "v1.31.4+k3s1"
    assert k3s.parse_version("sh: k3s: not found") == ""


# -- the token on the operator's machine ------------------------------------------------------------

def test_token_generated_once_0600_and_reused(tmp_path: Path) -> None:
    where = str(tmp_path / "tokens" / "{host}.token")
    assert cluster_token(where, "hv1", create=False, environ={}) is None  # plan/verify never create one
    assert not (tmp_path / "tokens").exists()
    first = cluster_token(where, "hv1", create=True, environ={})
    path = tmp_path / "tokens" / "hv1.token"
    assert first is not None and len(first.reveal()) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert cluster_token(where, "hv1", create=True, environ={}) == first
    assert str(first) == "***" and first.reveal() not in mask(f"token is {first.reveal()}")


def test_token_from_the_environment_wins(tmp_path: Path) -> None:
    token = cluster_token(str(tmp_path / "t"), "hv1", create=True, environ={ENV: "from-env-token-123"})
    assert token is not None and token.reveal() == "from-env-token-123"
    assert not (tmp_path / "t").exists()


def test_a_world_readable_token_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "hv1.token"
    path.write_text("abc-def-secret\n")
    path.chmod(0o644)
    with pytest.raises(TokenError) as err:
        cluster_token(str(path), "hv1", create=True, environ={})
    assert f"chmod 600 {path}" in str(err.value) and "abc-def-secret" not in str(err.value)
    assert path.read_text() == "abc-def-secret\n" and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_token_file_inside_the_repository_is_refused() -> None:
    with pytest.raises(TokenError, match="inside the repository"):
        cluster_token(str(REPO / ".runs" / "{host}.token"), "hv1", create=True, environ={})
    assert not (REPO / ".runs" / "hv1.token").exists()
