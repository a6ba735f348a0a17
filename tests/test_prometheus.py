"""`monitor --prometheus`: the captured QEMU sample as Prometheus text, read back with
prometheus_client's own parser (the format's reference implementation in Python)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from lib.monitor.prom import VmNumbers, exposition, write_textfile
from lib.steps.observe import parse_sample, vm_numbers
from tests.test_observe import captured_stdout, fixture, vm


def families(text: str) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    return {f.name: (f.type, [(s.name, s.labels, s.value) for s in f.samples])
            for f in text_string_to_metric_families(text)}


def captured() -> VmNumbers:
    text = captured_stdout() + "@@nodes2@@\n== 0\n" + fixture("node0_numastat.2.txt") + "@@llc_occupancy@@\n4096\n"
    return vm_numbers(vm(), parse_sample(text, 1.0, "strict"))


def test_metrics_follow_the_conventions_and_carry_the_sample() -> None:
    got = families(exposition([("lab", "moncap", captured())]))
    assert all(name.startswith("numa_k3s_") for name in got)
    kind, samples = got["numa_k3s_vcpu_utilisation_ratio"]
    util = {s[1]["vcpu"]: s[2] for s in samples}
    assert kind == "gauge" and samples[0][1].keys() == {"host", "vm", "vcpu"}
    assert util["0"] >= 0.9 and util["1"] == 0.0  # vCPU 0 spins in the captured guest, vCPU 1 never started
    kind, samples = got["numa_k3s_vcpu_run_delay_seconds"]
    assert kind == "counter" and {s[0] for s in samples} == {"numa_k3s_vcpu_run_delay_seconds_total"}
    assert got["numa_k3s_vm_remote_memory_ratio"][1] == [("numa_k3s_vm_remote_memory_ratio",
                                                          {"host": "lab", "vm": "moncap"}, 0.0)]
    assert got["numa_k3s_vm_llc_occupancy_bytes"][1][0][2] == 4096.0
    assert "numa_k3s_vm_llc_miss_ratio" not in got or not got["numa_k3s_vm_llc_miss_ratio"][1]  # perf: no LLC
    foreign = got["numa_k3s_node_numa_foreign_pages"]
    assert foreign == ("counter", [("numa_k3s_node_numa_foreign_pages_total", {"host": "lab", "node": "0"}, 0.0)])
    assert got["numa_k3s_node_memory_total_bytes"][1][0][1] == {"host": "lab", "node": "0"}
    assert got["numa_k3s_emulator_cpu_ratio"][1][0][2] < 0.5


def test_two_vms_share_one_family_and_the_host_figures_once(tmp_path: Path) -> None:
    numbers = captured()
    again = VmNumbers.from_json(numbers.as_json())
    assert again == numbers  # the row the step hands the task survives JSON
    path = tmp_path / "numa_k3s.prom"
    write_textfile(str(path), [("lab", "a", numbers), ("lab", "b", again)])
    got = families(path.read_text())
    assert {s[1]["vm"] for s in got["numa_k3s_vcpu_utilisation_ratio"][1]} == {"a", "b"}
    assert len(got["numa_k3s_node_memory_used_bytes"][1]) == 1  # the host's node, not once per VM
    assert not list(tmp_path.glob("*.tmp*"))  # written beside and renamed
