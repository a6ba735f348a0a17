"""Inventory problems as the operator reads them: VMs named, one line per root cause, each warning once."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke.config import Config
from invoke.context import Context

import tasks
from lib.errors import InventoryError
from lib.inventory.load import load_inventory
from lib.inventory.report import lines
from tests.inventory_helpers import HOSTS, hv1, write_inventory


def test_one_wrong_nodeset_is_one_line_per_list_with_the_count_and_the_vm_named(tmp_path: Path) -> None:
    data = hv1()
    data["vms"][2]["tuning"]["numa_memory"]["nodeset"] = "0"  # k3s-worker-slm's pins are all on node 1
    hosts = write_inventory(tmp_path, data)
    with pytest.raises(InventoryError) as err:
        load_inventory(hosts)
    numa = [p for p in err.value.problems if p.rule == "pins.numa" and ".vcpu_pins[" in p.path]
    assert len(numa) == 8  # the rules still see every pin ...
    shown = [line for line in lines(err.value.problems) if "[pins.numa]" in line]
    pins = [line for line in shown if ".vcpu_pins" in line]
    assert len(pins) == 1  # ... the operator reads one line for them, with the count and the VM's name
    assert "vms[2] (k3s-worker-slm).tuning.vcpu_pins: 8 entries ([0-7]) break this rule; the first: CPU 24 is on " \
           "NUMA node 1" in pins[0]
    assert len(shown) <= 2  # the pins, and the emulator's CPUs
    assert all("vms[2] (k3s-worker-slm)" in line for line in shown)


def test_one_shared_cpu_is_one_warning_naming_every_vm() -> None:
    inv = load_inventory(HOSTS, ["lab"])
    shared = [w for w in inv.warnings if w.rule == "pins.shared"]
    assert len(shared) == 3
    (line,) = lines(shared)
    assert line.startswith(f"WARNING [pins.shared] {HOSTS}/lab.yaml: 3 places (vms[1] (lab-data).tuning.vcpu_pins[0]; "
                           "vms[2] (lab-slm).")
    assert line.endswith("CPU 1 is already a vCPU pin of vms[0] (lab-slm-heavy) (pin_sharing: allow)")


def test_each_warning_is_printed_once_per_invocation(capsys: pytest.CaptureFixture[str]) -> None:
    c = Context(Config(overrides={"hosts_dir": str(HOSTS), "runs_dir": ".runs"}))
    tasks._warned.clear()
    for _ in range(3):  # monitor --watch and teardown load the inventory more than once
        tasks._inventory(c, "lab")
    err = capsys.readouterr().err
    assert err.count("[pins.shared]") == 1
    assert len(err.splitlines()) == len(set(err.splitlines())) > 0
