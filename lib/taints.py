"""Taints and tolerations as Kubernetes matches them, and which VMs k3s's packaged add-ons can
schedule on (pure). Facts shared by the inventory's rules and lib/k3s.py: both import them here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lib.inventory.model import VM, Host

# k3s deploys coredns, local-storage (local-path-provisioner), metrics-server and traefik (lib/k3s.py).
ADDONS = ("coredns", "local-storage", "metrics-server", "traefik")
_SCHEDULING = ("NoSchedule", "NoExecute")  # PreferNoSchedule never keeps a pod off a node


@dataclass(frozen=True, order=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


def parse_taint(text: str) -> Taint:
    """key[=value]:Effect, as the inventory writes it (validated there)."""
    head, effect = text.rsplit(":", 1)
    key, _, value = head.partition("=")
    return Taint(key, value, effect)


@dataclass(frozen=True, order=True)
class Toleration:
    key: str
    operator: str  # Exists | Equal
    value: str = ""
    effect: str = ""  # empty: every effect

    def tolerates(self, taint: Taint) -> bool:
        """Kubernetes' ToleratesTaint."""
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value

    def as_json(self) -> dict[str, str]:
        out = {"key": self.key, "operator": self.operator, "effect": self.effect, "value": self.value}
        return {k: v for k, v in out.items() if v}


PACKAGED_TOLERATIONS = (Toleration("CriticalAddonsOnly", "Exists"),
                        Toleration("node-role.kubernetes.io/control-plane", "Exists", "", "NoSchedule"),
                        Toleration("node-role.kubernetes.io/master", "Exists", "", "NoSchedule"))


def untolerated(taints: Iterable[Taint], tolerations: Iterable[Toleration]) -> list[Taint]:
    """The taints that keep a pod with these tolerations off the node (in the node's order)."""
    tols = tuple(tolerations)
    return [t for t in taints if t.effect in _SCHEDULING and not any(tol.tolerates(t) for tol in tols)]


def enabled_addons(host: Host) -> tuple[str, ...]:
    return tuple(a for a in ADDONS if a not in host.k3s.disable)


def addon_nodes(host: Host) -> list[VM]:
    """The k3s VMs where the packaged add-ons schedule as k3s ships them."""
    return [vm for vm in host.vms if vm.k8s and not untolerated(
        [parse_taint(t) for t in vm.k8s.taints], PACKAGED_TOLERATIONS)]
