"""The benchmarks' generated inputs stay valid inventories: a bench that only errors measures nothing,
and `make bench` is not in CI (its figures depend on the machine)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from lib.inventory.load import load_inventory
from tests.inventory_helpers import REPO


def _bench(name: str) -> object:
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("planned", [False, True], ids=["pins-given", "pins-planned"])
def test_inventory_validate_bench_generates_valid_hosts(tmp_path: Path, planned: bool) -> None:
    bench = _bench("inventory_validate")
    for i in range(2):
        (tmp_path / f"hv{i}.yaml").write_text(yaml.safe_dump(bench._host(i, planned)))  # type: ignore[attr-defined]
    inventory = load_inventory(tmp_path)  # raises InventoryError, naming the rule, on any error
    assert sum(len(h.host.vms) for h in inventory.hosts.values()) == 2 * bench.VMS_PER_HOST  # type: ignore[attr-defined]
