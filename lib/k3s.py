"""k3s (pure): config.yaml per node, install commands, node state from `kubectl get nodes -o json`, taint diffs.

The token is a Secret: it reaches config.yaml's bytes (uploaded 0600, never shown) and nothing else.
Node names are the VM names (config sets node-name), so the inventory and the cluster line up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from lib.inventory.model import VM, Host
from lib.shell import Command, Secret, sh
from lib.taints import (
    ADDONS,
    PACKAGED_TOLERATIONS,
    Taint,
    Toleration,
    addon_nodes,
    enabled_addons,
    parse_taint,
    untolerated,
)

# Re-exported: steps and tests name these k3s.Taint, k3s.untolerated, ...
__all__ = ["ADDONS", "PACKAGED_TOLERATIONS", "Taint", "Toleration", "addon_nodes", "enabled_addons", "parse_taint",
           "untolerated"]

CONFIG = "/etc/rancher/k3s/config.yaml"
INSTALL_SCRIPT = "/var/lib/numa-k3s/install.sh"
# Written by our install and restart commands once install.sh has (re)started the service: the
# version and the config.yaml digest it started with. The binary and config.yaml are uploaded
# before install.sh runs, so their presence alone does not say the service runs them: a run
# interrupted between the uploads and install.sh left exactly that.
STARTED = "/var/lib/numa-k3s/started"
BINARY = "/usr/local/bin/k3s"
IMAGES_DIR = "/var/lib/rancher/k3s/agent/images"
IMAGES = "k3s-airgap-images-amd64.tar.zst"
ARTIFACTS = ("install.sh", "k3s", IMAGES)
API_PORT = 6443
# Taint keys this tool owns: a taint under one of these keys that the inventory does not list is
# removed; taints under other keys (k3s's own, another operator's) are left alone.
BASE_MANAGED_KEYS = frozenset({"workload"})


def server_vm(host: Host) -> VM:
    return next(vm for vm in host.vms if vm.k8s and vm.k8s.role == "server")


def server_address(host: Host) -> str:
    """Where agents reach the API: the server VM's static address, else its SSH host."""
    vm = server_vm(host)
    if vm.network:
        return str(vm.network.address.ip)
    return vm.ssh.host if vm.ssh and vm.ssh.host else vm.name


def server_url(host: Host) -> str:
    return host.k3s.server_url or f"https://{server_address(host)}:{host.k3s.api_port}"


def node_config(host: Host, vm: VM, token: Secret) -> bytes:
    """config.yaml for one node. Taints here only apply when the node first registers (k3s.taints fixes the rest)."""
    assert vm.k8s is not None
    config: dict[str, Any] = {"token": token.reveal(), "node-name": vm.name}
    if vm.k8s.role == "server":
        config["tls-san"] = [server_address(host)]
        config["write-kubeconfig-mode"] = "0600"
        if host.k3s.api_port != API_PORT:
            config["https-listen-port"] = host.k3s.api_port
    else:
        config["server"] = server_url(host)
    if vm.k8s.taints:
        config["node-taint"] = list(vm.k8s.taints)
    if vm.k8s.labels:
        config["node-label"] = [f"{k}={v}" for k, v in sorted(vm.k8s.labels.items())]
    if vm.k8s.role == "server":
        if host.k3s.disable:
            config["disable"] = list(host.k3s.disable)
        if addon_tolerations(host):  # see annotate_command: kube-system's default tolerations
            config["kube-apiserver-arg"] = [ADMISSION_ARG]
    return yaml.safe_dump(config, sort_keys=False).encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def service(vm: VM) -> str:
    assert vm.k8s is not None
    return "k3s" if vm.k8s.role == "server" else "k3s-agent"


def install_command(host: Host, vm: VM) -> Command:
    """The installer with the pinned version; airgap: the binary and images are already in place."""
    assert vm.k8s is not None
    k3s = host.k3s
    env = "INSTALL_K3S_VERSION={version} INSTALL_K3S_EXEC={role}"
    if k3s.install == "airgap":
        # The binary is replaced before install.sh runs, so its before/after hashes match and it
        # would skip the restart an upgrade needs: FORCE_RESTART (harmless on a first install).
        return sh(f"INSTALL_K3S_SKIP_DOWNLOAD=true INSTALL_K3S_FORCE_RESTART=true {env} sh {{script}} && "
                  + _RECORD_STARTED, version=k3s.version, role=vm.k8s.role, script=INSTALL_SCRIPT, started=STARTED,
                  config=CONFIG, sudo=True, timeout=600, why=f"install k3s {k3s.version} ({vm.k8s.role})")
    steps = ["mkdir -p /var/lib/numa-k3s {images}", _fetch("{script}", "{script_url}")]
    if k3s.download_url:  # a mirror of the release: the images tarball from there as well
        steps.append(_fetch("{images}/" + IMAGES, "{download_url}/download/{version}/" + IMAGES))
        env = "GITHUB_URL={download_url} " + env
    return sh(" && ".join(steps) + f" && {env} sh {{script}} && " + _RECORD_STARTED, version=k3s.version,
              role=vm.k8s.role, script=INSTALL_SCRIPT, started=STARTED, config=CONFIG, images=IMAGES_DIR,
              script_url=k3s.install_script_url, download_url=k3s.download_url or "", sudo=True, timeout=900,
              why=f"install k3s {k3s.version} ({vm.k8s.role}, online from {k3s.download_url or 'GitHub'})")


def plain_http_urls(host: Host) -> list[str]:
    """What an online install fetches over plain http (only with k3s.allow_http_mirror: the rules
    refuse it otherwise); the plan names each, so nobody runs one unawares."""
    k3s = host.k3s
    if k3s.install != "online":
        return []
    return [url for url in (k3s.install_script_url, k3s.download_url) if url and url.startswith("http://")]


def _fetch(out: str, url: str) -> str:
    """Shell: url to out with whichever of curl and wget the guest has. out and url are sh()
    placeholders, passed as data and never formatted here, so no brace needs escaping twice."""
    return f"( curl -sfL -o {out} {url} || wget -qO {out} {url} )"


# After install.sh: record what the service was started with (written beside, then renamed).
_RECORD_STARTED = ("printf '%s %s\\n' {version} \"$(sha256sum {config} | cut -d' ' -f1)\" > {started}.tmp && "
                   "mv -f {started}.tmp {started}")


def restart_command(host: Host, vm: VM) -> Command:
    """Rerun the installer with the binary in place and INSTALL_K3S_FORCE_RESTART=true.

    install.sh does not notice a changed config.yaml (it hashes the binary and the unit files), and
    the service reads config.yaml only when it starts; the installer knows the init system.
    """
    assert vm.k8s is not None
    return sh("INSTALL_K3S_SKIP_DOWNLOAD=true INSTALL_K3S_FORCE_RESTART=true INSTALL_K3S_VERSION={version} "
              "INSTALL_K3S_EXEC={role} sh {script} && " + _RECORD_STARTED, version=host.k3s.version,
              role=vm.k8s.role, script=INSTALL_SCRIPT, started=STARTED, config=CONFIG, sudo=True, timeout=300,
              why=f"restart {service(vm)} to apply config.yaml")


def parse_version(text: str) -> str:
    """`k3s --version` first line: 'k3s version v1.31.4+k3s1 (abc123)' -> 'v1.31.4+k3s1'."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "k3s" and parts[1] == "version":
            return parts[2]
    return ""


@dataclass(frozen=True)
class Node:
    name: str
    ready: bool
    taints: frozenset[Taint]
    version: str
    roles: tuple[str, ...]


def parse_nodes(text: str) -> dict[str, Node]:
    """`kubectl get nodes -o json` (a v1 List of Nodes) -> nodes by name. Raises ValueError if not JSON."""
    data = json.loads(text)
    nodes: dict[str, Node] = {}
    for item in data.get("items", []):
        meta, spec, status = item.get("metadata", {}), item.get("spec", {}), item.get("status", {})
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
        taints = frozenset(Taint(t["key"], t.get("value", ""), t["effect"]) for t in spec.get("taints") or [])
        roles = tuple(sorted(k.split("/", 1)[1] for k in meta.get("labels", {})
                             if k.startswith("node-role.kubernetes.io/")))
        nodes[meta["name"]] = Node(meta["name"], ready, taints, status.get("nodeInfo", {}).get("kubeletVersion", ""),
                                   roles)
    return nodes


def managed_keys(host: Host) -> frozenset[str]:
    keys = {parse_taint(t).key for vm in host.vms if vm.k8s for t in vm.k8s.taints}
    return BASE_MANAGED_KEYS | keys


def wanted_taints(vm: VM) -> frozenset[Taint]:
    return frozenset(parse_taint(t) for t in (vm.k8s.taints if vm.k8s else ()))


def taint_commands(vm: VM, node: Node, managed: frozenset[str]) -> list[Command]:
    """kubectl taint to make the node's managed taints exactly the inventory's."""
    want = wanted_taints(vm)
    have = {t for t in node.taints if t.key in managed}
    cmds = [sh("k3s kubectl taint nodes {node} {taint} --overwrite", node=vm.name, taint=str(t), sudo=True,
               why=f"taint {vm.name} with {t}") for t in sorted(want - have)]
    cmds += [sh("k3s kubectl taint nodes {node} {taint}", node=vm.name, taint=f"{t.key}:{t.effect}-", sudo=True,
                why=f"remove {t} from {vm.name} (not in the inventory)")
             for t in sorted(have - want) if (t.key, t.effect) not in {(w.key, w.effect) for w in want}]
    return cmds


def shown_taints(taints: frozenset[Taint] | set[Taint]) -> str:
    return ", ".join(str(t) for t in sorted(taints)) or "none"


# -- the packaged add-ons against the nodes' taints --------------------------------------------------
# k3s deploys coredns, local-storage (local-path-provisioner), metrics-server and traefik (ADDONS) from
# manifests it rewrites on every start; all of them, and the Traefik chart's helm-install jobs,
# tolerate exactly PACKAGED_TOLERATIONS (k3s manifests/*.yaml, the chart values k3s passes).
# The controllers whose pods show an add-on works: a Deployment's pod Running and Ready, a Job's Succeeded.
ADDON_WORKLOADS = {"coredns": ("coredns",), "local-storage": ("local-path-provisioner",),
                   "metrics-server": ("metrics-server",),
                   "traefik": ("helm-install-traefik-crd", "helm-install-traefik", "traefik")}
DEFAULT_TOLERATIONS = "scheduler.alpha.kubernetes.io/defaultTolerations"
# k3s runs kube-apiserver with enable-admission-plugins=NodeRestriction; a kube-apiserver-arg for the
# same flag replaces it, so ours keeps NodeRestriction.
ADMISSION_ARG = "enable-admission-plugins=NodeRestriction,PodTolerationRestriction"


def addon_tolerations(host: Host) -> tuple[Toleration, ...]:
    """What kube-system tolerates besides k3s's own list: the taints of k3s.addon_node that k3s's
    list does not cover, each exactly (key, value, effect), so the add-ons may run there too."""
    node = next((vm for vm in host.vms if vm.k8s and vm.name == host.k3s.addon_node), None)
    if node is None or node.k8s is None or not enabled_addons(host):
        return ()
    return tuple(Toleration(t.key, "Equal", t.value, t.effect) for t in
                 untolerated([parse_taint(t) for t in node.k8s.taints], PACKAGED_TOLERATIONS))


def tolerations_annotation(tolerations: Iterable[Toleration]) -> str:
    return json.dumps([t.as_json() for t in tolerations], separators=(",", ":"), sort_keys=True)


def annotate_command(tolerations: tuple[Toleration, ...]) -> Command:
    """kube-system's default tolerations, then a fresh start for the add-on pods created before them.

    PodTolerationRestriction merges the annotation into a pod when the pod is created, so pods
    already Pending keep their old tolerations: deleting them lets their ReplicaSet or Job create
    them again.
    """
    value = f"{DEFAULT_TOLERATIONS}={tolerations_annotation(tolerations)}"
    return sh("k3s kubectl annotate namespace kube-system {value} --overwrite && "
              "k3s kubectl delete pods -n kube-system --field-selector=status.phase=Pending", value=value,
              sudo=True, timeout=120, why="kube-system tolerates " + ", ".join(
                  str(Taint(t.key, t.value, t.effect)) for t in tolerations) + " (k3s.addon_node's taints); "
              "restart its Pending pods")


def restart_pending_command() -> Command:
    return sh("k3s kubectl delete pods -n kube-system --field-selector=status.phase=Pending", sudo=True,
              timeout=120, why="restart kube-system pods created before its default tolerations")


def parse_namespace_tolerations(text: str) -> tuple[Toleration, ...] | None:
    """`kubectl get namespace kube-system -o json` -> its default tolerations; None if not JSON."""
    try:
        value = json.loads(text).get("metadata", {}).get("annotations", {}).get(DEFAULT_TOLERATIONS)
        items = json.loads(value) if value else []
        return tuple(sorted(Toleration(i.get("key", ""), i.get("operator", "Equal"), i.get("value", ""),
                                       i.get("effect", "")) for i in items))
    except (ValueError, AttributeError, TypeError):
        return None


@dataclass(frozen=True)
class Pod:
    name: str
    controller: str  # the Deployment or Job behind it
    phase: str
    ready: bool
    node: str
    message: str  # the scheduler's, when Pending
    tolerations: tuple[Toleration, ...]

    def works(self) -> bool:
        return self.phase == "Succeeded" or (self.phase == "Running" and self.ready)

    def shown(self) -> str:
        if self.works():
            return f"{'Completed' if self.phase == 'Succeeded' else 'Running'} on {self.node}"
        return f"{self.phase}: {self.message}" if self.message else f"{self.phase} on {self.node or 'no node'}"


def _controller(meta: dict[str, Any]) -> str:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            name = str(ref.get("name", ""))
            # A ReplicaSet is <deployment>-<pod-template-hash>.
            return name.rsplit("-", 1)[0] if ref.get("kind") == "ReplicaSet" else name
    return str(meta.get("name", ""))


def parse_pods(text: str) -> list[Pod]:
    """`kubectl get pods -o json` (a v1 List of Pods). Raises ValueError if not JSON."""
    pods = []
    for item in json.loads(text).get("items", []):
        meta, spec, status = item.get("metadata", {}), item.get("spec", {}), item.get("status", {})
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        scheduled = conditions.get("PodScheduled", {})
        message = scheduled.get("message", "") if scheduled.get("status") == "False" else ""
        tolerations = tuple(Toleration(t.get("key", ""), t.get("operator", "Equal"), t.get("value", ""),
                                       t.get("effect", "")) for t in spec.get("tolerations") or [])
        pods.append(Pod(meta.get("name", ""), _controller(meta), status.get("phase", ""),
                        conditions.get("Ready", {}).get("status") == "True", spec.get("nodeName", ""), message,
                        tolerations))
    return pods


def addon_rows(host: Host, pods: list[Pod]) -> list[tuple[str, bool, str]]:
    """(workload, works, what was found) for every workload of the enabled add-ons."""
    rows = []
    for addon in enabled_addons(host):
        for workload in ADDON_WORKLOADS[addon]:
            mine = [p for p in pods if p.controller == workload]
            best = next((p for p in mine if p.works()), mine[0] if mine else None)
            rows.append((workload, best is not None and best.works(), best.shown() if best else "no pod"))
    return rows


def stale_pending(pods: list[Pod], wanted: tuple[Toleration, ...]) -> list[Pod]:
    """Pending pods created before kube-system's default tolerations (so without them)."""
    return [p for p in pods if p.phase == "Pending" and not set(wanted) <= set(p.tolerations)]
