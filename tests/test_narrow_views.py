"""Every view readable at 80 columns (issue #30): rendered by rich at 80 and 200 columns, every VM name,
every pin list, every cpulist and emulator set is there in full, no cell is cut (…), no line is wider
than the terminal, and a figure never breaks from its unit. monitor --watch shows every VM of hv1 in
a 100x30 pane, and per-vCPU values are summarised as ranges with the outliers named."""

from __future__ import annotations

import re

import pytest
from rich.console import Console, RenderableType

from lib.cpuset import format_cpulist
from lib.inventory.load import load_inventory, plan_host
from lib.monitor.show import metrics
from lib.monitor.watch import live_view
from lib.results import Check, HostRun, StepResult
from lib.topoview import pins_table, topology_picture
from lib.vcpu_summary import summarise
from lib.vmview import vm_settings_table
from tests.inventory_helpers import HOSTS


def render(view: RenderableType, width: int) -> str:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(view)
    return console.export_text()


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("width", [80, 200])
@pytest.mark.parametrize("host", ["hv1", "lab"])
def test_pins_settings_and_topology_keep_every_name_pin_and_emulator_set(host: str, width: int) -> None:
    loaded = load_inventory(HOSTS, [host]).hosts[host]
    replanned = plan_host(loaded.host, loaded.cores, replan=True) if host == "hv1" else None  # lab shares CPUs
    for view in (pins_table(loaded, replanned), pins_table(loaded), vm_settings_table(loaded),
                 topology_picture(loaded)):
        text = render(view, width)
        assert "…" not in text and "┃┃" not in text
        assert all(len(line.rstrip()) <= width for line in text.splitlines())
        for vm in loaded.host.vms:
            assert vm.name in text
    pins = render(pins_table(loaded, replanned), width)
    for vm in loaded.host.vms:
        assert " ".join(map(str, vm.pins)) in flat(pins), vm.name  # vCPU order, each pin whole
        assert format_cpulist(vm.pins) in pins and vm.tuning.emulator_cpuset in pins
    picture = render(topology_picture(loaded), width)
    for vm in loaded.host.vms:
        assert vm.tuning.emulator_cpuset in picture and format_cpulist(vm.pins) in picture


def test_the_legend_and_the_memory_sums_never_break_a_figure_at_80_columns() -> None:
    text = render(topology_picture(load_inventory(HOSTS, ["hv1"]).hosts["hv1"]), 80)
    lines = text.splitlines()
    assert any(line.strip() == "60 GiB on node 1 (strict)" for line in lines)  # was "60⏎GiB"
    assert not any(re.search(r"\d$", line.rstrip(" │")) and "CPUs" not in line and "core" not in line
                   and not re.search(r"(VM|E)[\d,]+$", line.rstrip(" │")) for line in lines), text
    assert "= 120 GiB of 128 GiB, free 8 GiB" in text


def _vm_rows(n: int, breach: bool = False) -> tuple[Check, ...]:
    return (Check("vCPU utilisation", "per vCPU", " ".join(f"{i}:{97 if i == 5 else 3}%" for i in range(n)), True),
            Check("vCPU wait (run-queue delay)", "< 5% of the interval",
                  " ".join(f"{i}:{80.0 if breach and i == 2 else 0.2:.1f}ms" for i in range(n)), not breach),
            Check("numatune mode", "strict", "strict", True),
            Check("emulator load", f"< 50% of CPUs {n}", "3.1%", True),
            Check.evidence("host memory per node (numastat -m)", "node0 120000/128000 MB used"),
            Check.evidence("LLC occupancy (resctrl)", "not available (no resctrl group: the VM has no "
                                                      "exclusive_l3_mb, or the host no resctrl)"))


def _hv1_sample() -> list[HostRun]:
    loaded = load_inventory(HOSTS, ["hv1"]).hosts["hv1"]
    results = [StepResult("hv1", "monitor.sample", vm.name, "ok", 0.0, 1.0,
                          checks=_vm_rows(vm.vcpu_count, breach=vm.name == "k3s-server-tasks"))
               for vm in loaded.host.vms]
    return [HostRun("hv1", "r", "monitor", "verify", 0.0, 1.0, results)]


def test_monitor_watch_shows_all_four_vms_in_a_100x30_pane_and_names_the_breach() -> None:
    runs = _hv1_sample()
    text = render(live_view(runs, "2026-12-06T11:00:00Z", 3, 1), 100)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 30, text
    assert all(len(line.rstrip()) <= 100 for line in lines)
    for vm in metrics(runs)["hv1"]:
        assert vm in text
    assert "BREACH now: hv1 k3s-server-tasks: vCPU wait (run-queue delay)" in text
    assert "0-4,6-31: 3%;" in text  # VM1's 32 vCPUs in one cell: a range, the outlier named below it
    assert "80.0ms" in text and "BREACH" in text.split("│")[-1].split("every VM")[0]
    assert "CPUs 32)" in text and "CPUs 8)" in text  # each VM's own threshold beside its value
    header = next(line for line in lines if line.strip().startswith("metric"))
    assert header.split() == ["metric", "threshold", "VM1", "VM2", "VM3", "VM4"]  # every column headed


def test_monitor_at_80_columns_stacks_a_table_per_vm_with_every_column_headed() -> None:
    text = render(live_view(_hv1_sample(), "2026-12-06T11:00:00Z", 1, 0), 80)
    assert all(len(line.rstrip()) <= 80 for line in text.splitlines())
    headers = [line.split() for line in text.splitlines() if line.strip().startswith("metric")]
    assert headers and all(h == ["metric", "value", "threshold", "status"] for h in headers)
    for vm in metrics(_hv1_sample())["hv1"]:
        assert f"hv1 / {vm}" in text
    assert "…" not in text


def test_per_vcpu_values_as_ranges_with_the_outliers_named() -> None:
    assert summarise(" ".join(f"{i}:{97 if i == 16 else 3}%" for i in range(32))) == "0-15,17-31: 3%; 16: 97%"
    assert summarise("0:1% 1:2%") == "0:1% 1:2%"  # few vCPUs: as they are
    many = summarise(" ".join(f"{i}:{(i * 7) % 100}%" for i in range(32)))
    assert many.count(":") == 4  # four bands, each a range, no vCPU left out
    assert summarise("not available (virsh domstats)") == "not available (virsh domstats)"


def test_a_long_warning_breaks_between_words_at_80_columns() -> None:
    from lib.shell import wrapped

    line = ("WARNING [key.placeholder] hosts/hv1.yaml: 4 places (vms[0] (k3s-worker-slm-heavy).user_configs[0]."
            "ssh_authorized_keys[0]; vms[1] (k3s-worker-data).user_configs[0].ssh_authorized_keys[0]): this key "
            "is the spec's placeholder, not a real key; put the VM user's real public key here before provisioning")
    out = wrapped(line, 80).splitlines()
    assert all(len(row) <= 80 for row in out) and len(out) > 2
    assert " ".join(row.strip() for row in out) == line  # every word whole, none lost
    assert all(row.startswith("  ") for row in out[1:])
    assert wrapped(line, 10) == line  # no usable width: left to the terminal
