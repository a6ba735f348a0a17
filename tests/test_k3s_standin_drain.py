"""The k3s stand-in's day-two model (tests/k3s_standin/k3s, section "cordon, drain"), on its own.

A server and one agent in busybox chroots behind real sshds (tests/test_k3s_standin.py's harness):
cordon, drain with evictions and a PodDisruptionBudget, uncordon and annotate answer as kubectl
does (messages, exit codes, JSON shapes: spec.unschedulable, the node.kubernetes.io/unschedulable
taint, metadata.annotations), and every operation lands in the record tests read the order from.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from lib.daytwo import ANNOTATION, parse_node_states
from tests.harness.k3s_standin import standin_artifacts
from tests.harness.sshd import SshdFarm
from tests.test_k3s_standin import V1, Vm, free_port, nodes, taints, vms, wait_for

SERVER, AGENT = "drain-server", "drain-agent"
UNSCHEDULABLE = ("node.kubernetes.io/unschedulable", None, "NoSchedule")


@dataclass
class Pair:
    server: Vm
    agent: Vm

    def kubectl(self, args: str, check: bool = True) -> tuple[int, str, str]:
        rc, out, err = self.server.run(f"k3s kubectl {args}", check=check)
        return rc, out, err

    def record(self) -> list[list[str]]:
        path = self.server.root / "var/lib/rancher/k3s/server/standin/record"
        return [line.split()[1:] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def pair(sshd_farm: SshdFarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    artifacts = standin_artifacts(tmp_path_factory.mktemp("artifacts"), V1)
    port, token = free_port(), secrets.token_hex(16)
    with vms(sshd_farm, SERVER, AGENT) as hosts:
        server, agent = hosts[SERVER], hosts[AGENT]
        for vm in (server, agent):
            vm.upload_artifacts(artifacts)
        server.write("/etc/rancher/k3s/config.yaml", yaml.safe_dump(
            {"token": token, "https-listen-port": port, "bind-address": "127.0.0.1"}), 0o600)
        server.install(INSTALL_K3S_VERSION=V1)
        agent.write("/etc/rancher/k3s/config.yaml", yaml.safe_dump(
            {"server": f"https://127.0.0.1:{port}", "token": token}), 0o600)
        agent.install(INSTALL_K3S_VERSION=V1, INSTALL_K3S_EXEC="agent")
        wait_for("the agent to register", lambda: AGENT in nodes(server))
        yield Pair(server, agent)


def test_cordon_and_uncordon_in_the_api_shapes(pair: Pair) -> None:
    assert pair.kubectl(f"cordon {AGENT}")[1] == f"node/{AGENT} cordoned\n"
    assert pair.kubectl(f"cordon {AGENT}")[1] == f"node/{AGENT} already cordoned\n"
    node = nodes(pair.server)[AGENT]
    assert node["spec"]["unschedulable"] is True
    assert UNSCHEDULABLE in taints(node)
    assert "SchedulingDisabled" in pair.kubectl(f"get nodes {AGENT} --no-headers")[1]
    assert pair.kubectl(f"uncordon {AGENT}")[1] == f"node/{AGENT} uncordoned\n"
    assert pair.kubectl(f"uncordon {AGENT}")[1] == f"node/{AGENT} already uncordoned\n"
    node = nodes(pair.server)[AGENT]
    assert "unschedulable" not in node["spec"] and UNSCHEDULABLE not in taints(node)
    rc, _out, err = pair.kubectl("cordon nosuch", check=False)
    assert rc == 1 and err == 'Error from server (NotFound): nodes "nosuch" not found\n'


def test_annotations_merge_sorted_and_overwrite_rules(pair: Pair) -> None:
    assert pair.kubectl(f"annotate node {AGENT} {ANNOTATION}=restart")[1] == f"node/{AGENT} annotated\n"
    rc, _out, err = pair.kubectl(f"annotate node {AGENT} {ANNOTATION}=other", check=False)
    assert rc == 1 and "--overwrite is false" in err
    pair.kubectl(f"annotate node {AGENT} {ANNOTATION}=other --overwrite")
    listing = pair.kubectl("get nodes -o json")[1]
    annotations = json.loads(listing)["items"][[n["metadata"]["name"] for n in json.loads(listing)["items"]].index(
        AGENT)]["metadata"]["annotations"]
    assert annotations[ANNOTATION] == "other" and list(annotations) == sorted(annotations)
    assert annotations["k3s.io/hostname"] == AGENT
    # The product's parser reads the same JSON: the mark and the cordon state.
    states = parse_node_states(listing)
    assert states is not None and states[AGENT].drained_for == "other" and states[SERVER].drained_for == ""
    pair.kubectl(f"annotate node {AGENT} {ANNOTATION}-")
    assert ANNOTATION not in nodes(pair.server)[AGENT]["metadata"]["annotations"]


def test_drain_evicts_honours_a_pdb_and_records_the_order(pair: Pair) -> None:
    run = pair.server.run
    run(f"k3s standin-pod default web-1 {AGENT} app=web ReplicaSet")
    run(f"k3s standin-pod default web-2 {SERVER} app=web ReplicaSet")
    run(f"k3s standin-pod kube-system svclb-1 {AGENT} app=svclb DaemonSet")
    run("k3s standin-pdb default web app=web 2")  # both replicas must stay: no eviction possible
    before = len(pair.record())
    rc, _out, err = pair.kubectl(f"drain {AGENT} --timeout=6s", check=False)
    assert rc == 1 and "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)" in err
    rc, out, err = pair.kubectl(f"drain {AGENT} --ignore-daemonsets --delete-emptydir-data --timeout=6s", check=False)
    assert rc == 1, out + err
    assert "Cannot evict pod as it would violate the pod's disruption budget." in err
    assert 'global timeout reached: 6s' in err
    assert nodes(pair.server)[AGENT]["spec"]["unschedulable"] is True  # left cordoned, and the record says so
    pods = json.loads(pair.kubectl(f"get pods -A -o json --field-selector spec.nodeName={AGENT}")[1])
    assert sorted(p["metadata"]["name"] for p in pods["items"]) == ["svclb-1", "web-1"]  # nothing evicted

    run("k3s standin-pdb default web app=web 1")  # one replica may go
    rc, out, err = pair.kubectl(f"drain {AGENT} --ignore-daemonsets --delete-emptydir-data --timeout=30s")
    assert out.splitlines() == [f"node/{AGENT} already cordoned", "evicting pod default/web-1", "pod/web-1 evicted",
                                f"node/{AGENT} drained"]
    assert "ignoring DaemonSet-managed Pods: kube-system/svclb-1" in err
    pods = json.loads(pair.kubectl("get pods -A -o json")[1])
    assert (pods["apiVersion"], pods["kind"]) == ("v1", "List")
    left = {(p["metadata"]["namespace"], p["metadata"]["name"]): p["spec"]["nodeName"] for p in pods["items"]}
    # The list also holds k3s's packaged add-ons (the stand-in's scheduling model, #18), none on the agent.
    addons = {k: v for k, v in left.items() if k[1] not in ("web-1", "web-2", "svclb-1")}
    assert {ns for ns, _ in addons} <= {"kube-system"} and AGENT not in addons.values()
    assert {k: v for k, v in left.items() if k not in addons} == {("default", "web-2"): SERVER,
                                                                  ("kube-system", "svclb-1"): AGENT}
    pair.kubectl(f"uncordon {AGENT}")
    ops = [(line[0], line[1]) for line in pair.record()[before:]]
    assert ops == [("drain", AGENT), ("cordon", AGENT), ("drain-failed", AGENT),  # the DaemonSet refusal
                   ("drain", AGENT), ("drain-failed", AGENT),  # the PDB, at the timeout
                   ("drain", AGENT), ("evict", AGENT), ("drained", AGENT), ("uncordon", AGENT)]

