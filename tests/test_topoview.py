"""The topology picture tells the truth: every VM on a shared CPU, whose emulator each E cell holds,
whole names at 80 columns, and memory figures that add up to the total they print."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from lib.inventory.load import load_inventory
from lib.topoview import thread_owners, topology_picture
from tests.inventory_helpers import HOSTS


def picture(host: str, width: int = 80) -> str:
    loaded = load_inventory(HOSTS, [host]).hosts[host]
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(topology_picture(loaded))
    return console.export_text()


def test_a_cpu_shared_by_four_vms_shows_all_four() -> None:
    loaded = load_inventory(HOSTS, ["lab"]).hosts["lab"]
    owners = thread_owners(loaded)
    assert owners[1].tag == "VM1,2,3,4" and owners[1].what == "shared: VM1, VM2, VM3, VM4"
    assert "   1 VM1,2,3,4" in picture("lab")


def test_emulator_cells_name_whose_emulator_they_hold() -> None:
    text = picture("hv1")
    assert " 16 E1 " in text and " 34 E2,3,4 " in text
    assert "E2,3,4  emulator threads of VM2, VM3, VM4: CPUs 34-35,70-71" in text


@pytest.mark.parametrize("host", ["hv1", "lab"])
def test_names_are_whole_at_80_columns(host: str) -> None:
    text = picture(host, 80)
    loaded = load_inventory(HOSTS, [host]).hosts[host]
    assert "…" not in text
    flat = re.sub(r"\s+", " ", text)  # a legend line may wrap; a name is never cut
    for vm in loaded.host.vms:
        assert f" {vm.name}: {vm.vcpu_count} vCPUs" in flat
    assert all(len(line) <= 80 for line in text.splitlines())


def _mib(figure: str) -> float:
    value, unit = figure.split()
    return float(value) * (1024 if unit == "GiB" else 1)


@pytest.mark.parametrize("host", ["hv1", "lab"])
def test_memory_figures_add_up(host: str) -> None:
    flat = re.sub(r"\s*│\s*", " ", picture(host, 200))
    sums = re.findall(r"((?:VM\d+ [\d.]+ [MG]iB \+ )*)host ([\d.]+ [MG]iB) = ([\d.]+ [MG]iB) of ([\d.]+ [MG]iB), "
                      r"free (-?[\d.]+ [MG]iB)", flat)
    assert sums
    for parts, reserve, used, total, free in sums:
        vms = [_mib(p) for p in re.findall(r"VM\d+ ([\d.]+ [MG]iB)", parts)]
        assert sum(vms) + _mib(reserve) == _mib(used)  # 256 MiB x 4 + 1 GiB = 2 GiB, not 0.2 x 4 + 1.0 = 2.0
        assert _mib(used) + _mib(free) == _mib(total)
