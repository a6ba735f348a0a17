"""Write mutated copies of the real hosts/ files into a temporary inventory for rule tests."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
HOSTS = REPO / "hosts"

Mutation = Callable[[dict[str, Any]], None]
# A real public key (its private half was thrown away), for copies of hv1 that runs apply: hv1's
# own keys are the spec's placeholder, which such runs refuse (#26).
REAL_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJW5J3lsIsf6/qRrVkq+NRu+PENpGXQp/hcDxmzgyjIe bench@numa-k3s"


def with_real_keys(data: dict[str, Any]) -> dict[str, Any]:
    """hv1-shaped data whose VM users carry REAL_KEY instead of the placeholder."""
    for vm in data.get("vms", []):
        for user in vm.get("user_configs", []):
            user["ssh_authorized_keys"] = [REAL_KEY]
    return data


def hv1() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((HOSTS / "hv1.yaml").read_text())
    return data


def write_inventory(tmp: Path, data: dict[str, Any] | None = None, name: str = "hv1",
                    defaults: dict[str, Any] | None = None) -> Path:
    """A hosts dir holding the repo's defaults.yaml (or the given defaults) and one host file."""
    hosts = tmp / "hosts"
    hosts.mkdir(exist_ok=True)
    if defaults is None:
        shutil.copy(HOSTS / "defaults.yaml", hosts / "defaults.yaml")
    else:
        (hosts / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    (hosts / f"{name}.yaml").write_text(yaml.safe_dump(hv1() if data is None else data, sort_keys=False))
    return hosts


def mutated(mutate: Mutation) -> dict[str, Any]:
    data = copy.deepcopy(hv1())
    mutate(data)
    return data
