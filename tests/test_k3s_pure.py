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
        # k3s.addon_node: kube-system's default tolerations take effect through this admission plugin.
        "kube-apiserver-arg": ["enable-admission-plugins=NodeRestriction,PodTolerationRestriction"],
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


# -- add-ons against taints ------------------------------------------------------------------------

def test_tolerations_match_as_kubernetes_matches_them() -> None:
    taint = k3s.Taint("workload", "tasks", "NoSchedule")
    assert k3s.Toleration("workload", "Equal", "tasks", "NoSchedule").tolerates(taint)
    assert k3s.Toleration("workload", "Exists").tolerates(taint)  # no effect: every effect
    assert k3s.Toleration("", "Exists").tolerates(taint)  # no key with Exists: every taint
    assert not k3s.Toleration("workload", "Equal", "slm", "NoSchedule").tolerates(taint)
    assert not k3s.Toleration("workload", "Equal", "tasks", "NoExecute").tolerates(taint)
    assert not k3s.Toleration("CriticalAddonsOnly", "Exists").tolerates(taint)
    prefer = k3s.Taint("dedicated", "", "PreferNoSchedule")  # never keeps a pod off a node
    assert k3s.untolerated([prefer, taint], k3s.PACKAGED_TOLERATIONS) == [taint]


def test_hv1_add_ons_tolerate_exactly_the_servers_own_taint(hv1: Host) -> None:
    assert k3s.addon_nodes(hv1) == []  # the spec taints every node
    assert k3s.addon_tolerations(hv1) == (k3s.Toleration("workload", "Equal", "tasks", "NoSchedule"),)
    assert k3s.tolerations_annotation(k3s.addon_tolerations(hv1)) == (
        '[{"effect":"NoSchedule","key":"workload","operator":"Equal","value":"tasks"}]')
    command = k3s.annotate_command(k3s.addon_tolerations(hv1)).real
    assert "annotate namespace kube-system" in command and "--overwrite" in command
    assert "scheduler.alpha.kubernetes.io/defaultTolerations=" in command


def test_disabled_add_ons_reach_config_and_leave_the_checks(hv1: Host) -> None:
    host = hv1.model_copy(update={"k3s": hv1.k3s.model_copy(update={"disable": ("traefik",)})})
    config = yaml.safe_load(k3s.node_config(host, vm(host, "k3s-server-tasks"), Secret("t0ken-value-xx")))
    assert config["disable"] == ["traefik"]
    assert [name for name, _, _ in k3s.addon_rows(host, [])] == ["coredns", "local-path-provisioner",
                                                                 "metrics-server"]
    agent = yaml.safe_load(k3s.node_config(host, vm(host, "k3s-worker-data"), Secret("t0ken-value-xx")))
    assert "disable" not in agent and "kube-apiserver-arg" not in agent


PENDING_POD = {  # the shape the API server returns for an unschedulable Deployment pod
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "coredns-ccb96694c-x2vq7", "namespace": "kube-system",
                 "ownerReferences": [{"apiVersion": "apps/v1", "blockOwnerDeletion": True, "controller": True,
                                      "kind": "ReplicaSet", "name": "coredns-ccb96694c", "uid": "u1"}]},
    "spec": {"tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                             {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists",
                              "tolerationSeconds": 300}]},
    "status": {"conditions": [{"lastProbeTime": None, "lastTransitionTime": "2026-01-01T00:00:00Z",
                               "message": "0/4 nodes are available: 4 node(s) had untolerated taint {workload: slm}. "
                                          "preemption: 0/4 nodes are available: 4 Preemption is not helpful for "
                                          "scheduling.",
                               "reason": "Unschedulable", "status": "False", "type": "PodScheduled"}],
               "phase": "Pending", "qosClass": "Burstable"},
}
DONE_JOB_POD = {
    "metadata": {"name": "helm-install-traefik-8xk2l",
                 "ownerReferences": [{"controller": True, "kind": "Job", "name": "helm-install-traefik"}]},
    "spec": {"nodeName": "k3s-server-tasks"},
    "status": {"phase": "Succeeded", "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}]},
}


def test_pods_name_their_workload_and_the_schedulers_reason(hv1: Host) -> None:
    pods = k3s.parse_pods(json.dumps({"apiVersion": "v1", "kind": "List", "items": [PENDING_POD, DONE_JOB_POD]}))
    assert [(p.controller, p.phase, p.works()) for p in pods] == [
        ("coredns", "Pending", False), ("helm-install-traefik", "Succeeded", True)]
    rows = {name: (ok, found) for name, ok, found in k3s.addon_rows(hv1, pods)}
    assert rows["coredns"] == (False, "Pending: " + PENDING_POD["status"]["conditions"][0]["message"])  # type: ignore[index]
    assert rows["helm-install-traefik"] == (True, "Completed on k3s-server-tasks")
    assert rows["metrics-server"] == (False, "no pod")
    # Created before kube-system's default tolerations: restarted by k3s.server.
    assert k3s.stale_pending(pods, k3s.addon_tolerations(hv1)) == pods[:1]
    with pytest.raises(ValueError):
        k3s.parse_pods("The connection to the server 127.0.0.1:6443 was refused")
