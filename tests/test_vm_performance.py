"""The VMs' own performance settings in the domain: guest topology, memory backing, I/O threads, L3.

The oracles are libvirt's: virt-install 4.1 writes the XML (--print-xml) from the arguments we
give it, virt-xml-validate checks it against libvirt's RNG schema, and the real libvirtd defines
it (tests/test_vms_define.py reads every VM's definition back through vms.define).
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lib.cores import unpaired_whole_cores
from lib.domain import parse_domain_xml, performance_checks, virt_install_args
from lib.errors import InventoryError
from lib.inventory.load import LoadedHost, load_inventory
from lib.inventory.model import VM
from lib.pinplan import Core, cores_from_layout
from lib.vmperf import GuestTopology, domain_tuning, guest_topology, tcg_cpu_model
from tests.inventory_helpers import REPO, hv1, write_inventory

SPREAD = cores_from_layout(2, 18, 2, {0: frozenset([*range(18), *range(36, 54)]),
                                      1: frozenset([*range(18, 36), *range(54, 72)])})


def hv1_loaded() -> LoadedHost:
    return load_inventory(REPO / "hosts", ["hv1"]).hosts["hv1"]


def test_hv1_pins_make_sibling_pairs_so_the_guest_gets_threads_2() -> None:
    loaded = hv1_loaded()
    topo = {vm.name: guest_topology(vm.pins, loaded.cores) for vm in loaded.host.vms}
    assert topo == {"k3s-worker-slm-heavy": GuestTopology(1, 16, 2), "k3s-worker-data": GuestTopology(1, 6, 2),
                    "k3s-worker-slm": GuestTopology(1, 4, 2), "k3s-server-tasks": GuestTopology(1, 6, 2)}


@pytest.mark.parametrize(("pins", "cores", "want"), [
    ((0, 36, 1, 37), SPREAD, GuestTopology(1, 2, 2)),
    ((0, 1, 36, 37), SPREAD, GuestTopology(1, 4, 1)),  # whole cores, but vCPU 0 and 1 are not siblings
    ((0, 36, 1), SPREAD, GuestTopology(1, 3, 1)),  # odd count
    ((0, 1), [Core(0, (0, 1))], GuestTopology(1, 1, 2)),  # adjacent numbering (AMD)
    ((0, 1), [Core(0, (0,)), Core(0, (1,))], GuestTopology(1, 2, 1)),  # no SMT
    ((0, 0), [Core(0, (0, 1))], GuestTopology(1, 2, 1)),  # one thread twice is not a pair
])
def test_topology_is_threads_2_only_when_every_pair_is_one_core(pins: tuple[int, ...], cores: list[Core],
                                                                 want: GuestTopology) -> None:
    assert guest_topology(pins, cores) == want


def test_whole_cores_out_of_order_are_a_warning_rule(tmp_path: Path) -> None:
    assert [c.threads for c in unpaired_whole_cores((0, 1, 36, 37), SPREAD)] == [(0, 36), (1, 37)]
    assert unpaired_whole_cores((0, 36, 1, 37), SPREAD) == []
    assert unpaired_whole_cores((0, 1), SPREAD) == []  # no whole core: nothing to pair
    data = hv1()
    pins = data["vms"][2]["tuning"]["vcpu_pins"]
    data["vms"][2]["tuning"]["vcpu_pins"] = pins[0::2] + pins[1::2]  # 24..27 then their siblings
    inv = load_inventory(write_inventory(tmp_path, data))
    (warning,) = [w for w in inv.warnings if w.rule == "topology.unpaired-siblings"]
    assert warning.severity == "warning" and warning.path == "vms[2].tuning.vcpu_pins"
    assert "both threads of 4 core(s) (24+60, 25+61, 26+62, 27+63)" in warning.message
    vm = inv.hosts["hv1"].host.vms[2]
    assert guest_topology(vm.pins, inv.hosts["hv1"].cores) == GuestTopology(1, 8, 1)


def _broken(tmp_path: Path, mutate: Any) -> str:
    data = copy.deepcopy(hv1())
    mutate(data)
    with pytest.raises(InventoryError) as exc:
        load_inventory(write_inventory(tmp_path, data))
    return str(exc.value)


def test_hugepage_vm_without_a_reservation_on_its_node_is_refused(tmp_path: Path) -> None:
    text = _broken(tmp_path, lambda d: d.update(hugepages=[{"node": 0, "size": "1G", "count": 118}]))
    assert "[memory.hugepages]" in text
    assert "node 1: VMs backed by hugepages need 118784 MB (k3s-worker-data 61440, k3s-worker-slm 32768, " \
           "k3s-server-tasks 24576), but only 0 MB of hugepages are reserved there" in text


def test_memory_fit_counts_the_hugepage_reservation(tmp_path: Path) -> None:
    # 124 GiB of pages + the 4 GiB host reserve fill node 0; one more page does not fit.
    def more(d: dict[str, Any]) -> None:
        d["hugepages"][0]["count"] = 125
    text = _broken(tmp_path, more)
    assert "[memory.fit]" in text and "node 0: 128000 MB hugepages + 4096 MB host reserve = 132096 MB, more " \
                                     "than the node's 131072 MB" in text


def test_one_hugepage_size_per_node_and_l3_left_to_the_host(tmp_path: Path) -> None:
    text = _broken(tmp_path, lambda d: d["hugepages"].append({"node": 0, "size": "2M", "count": 1}))
    assert "node 0 is listed twice: one hugepage size per node" in text
    text = _broken(tmp_path, lambda d: d["vms"][0]["tuning"].update(exclusive_l3_mb=45))
    assert "[l3.exclusive]" in text and "socket 0: exclusive L3 of k3s-worker-slm-heavy 45 MB = 45 MB leaves " \
                                        "nothing of its 45 MB L3" in text


def _local_copy(vm: VM, images: Path) -> VM:
    """The VM with its files under `images`: virt-install reads the disks it is given."""
    disks = tuple(d.model_copy(update={"path": str(images / f"{vm.name}-{d.name}.qcow2")}) for d in vm.disks)
    copied = vm.model_copy(update={"name": f"{vm.name}-t20", "disk_path": str(images / f"{vm.name}.qcow2"),
                                   "cloud_init_iso_path": str(images / f"{vm.name}.iso"), "disks": disks})
    for path in [copied.disk_path, *(d.path for d in disks)]:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "1M"], check=True)
    Path(copied.cloud_init_iso_path).touch()
    return copied


def print_xml(loaded: LoadedHost, vm: VM, images: Path, out: Path) -> str:
    tuning = domain_tuning(loaded.host, loaded.cores, vm)
    args = virt_install_args(_local_copy(vm, images), uri="qemu:///system", virt_type=loaded.host.virt_type,
                             tuning=tuning)
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    out.write_text(done.stdout)
    valid = subprocess.run(["virt-xml-validate", str(out), "domain"], capture_output=True, text=True, check=False)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    return done.stdout


def test_hv1_domain_xml_carries_every_setting_and_validates(tmp_path: Path) -> None:
    loaded = hv1_loaded()
    heavy, data = loaded.host.vms[0], loaded.host.vms[1]
    xml = print_xml(loaded, heavy, tmp_path, tmp_path / "heavy.xml")
    assert '<topology sockets="1" dies="1" cores="16" threads="2"/>' in xml
    assert '<cpu mode="host-passthrough">' in xml and '<cache mode="passthrough"/>' in xml
    assert '<page size="1048576" unit="KiB"/>' in xml and "<nosharepages/>" in xml and "<locked/>" in xml
    assert '<memballoon model="none"/>' in xml
    assert '<cachetune vcpus="0-31">' in xml and '<cache id="0" level="3" type="both" size="36864" unit="KiB"/>' in xml
    rows = {c.name: (c.expected, c.found, c.ok) for c in
            performance_checks(heavy, parse_domain_xml(xml), domain_tuning(loaded.host, loaded.cores, heavy))}
    assert all(ok for _, _, ok in rows.values()), rows
    assert rows["L3 cachetune"][1] == "vCPUs 0-31: L3 id 0 36864 KiB"

    xml = print_xml(loaded, data, tmp_path, tmp_path / "data.xml")
    assert "<iothreads>2</iothreads>" in xml
    assert '<iothreadpin iothread="1" cpuset="34-35,70-71"/>' in xml
    assert '<iothreadpin iothread="2" cpuset="34-35,70-71"/>' in xml
    assert '<driver name="qemu" type="qcow2" cache="none" discard="unmap" io="native" iothread="2"/>' in xml
    tuning = domain_tuning(loaded.host, loaded.cores, data)
    rows = {c.name: (c.expected, c.found, c.ok) for c in performance_checks(data, parse_domain_xml(xml), tuning)}
    assert rows["disk vdc driver"] == ("cache=none io=native discard=unmap iothread=2",) * 2 + (True,)
    assert all(ok for _, _, ok in rows.values()), rows


def test_a_domain_without_the_settings_is_drift_row_by_row(tmp_path: Path) -> None:
    """The XML vms.define wrote before these settings existed: each one is its own failing row."""
    loaded = hv1_loaded()
    data = loaded.host.vms[1]
    xml = print_xml(loaded, data, tmp_path, tmp_path / "data.xml")
    old = (xml.replace('<topology sockets="1" dies="1" cores="6" threads="2"/>', "")
           .replace("<nosharepages/>", "").replace('<memballoon model="none"/>', "")
           .replace(' cache="none" discard="unmap" io="native" iothread="1"', "")
           .replace('<iothreadpin iothread="2" cpuset="34-35,70-71"/>', ""))
    tuning = domain_tuning(loaded.host, loaded.cores, data)
    bad = {c.name: c.found for c in performance_checks(data, parse_domain_xml(old), tuning) if not c.ok}
    assert bad == {"guest topology": "none", "memory sharing (KSM)": "allowed", "memory balloon": "default",
                   "disk vdb driver": "cache=- io=- discard=- iothread=-", "iothreadpin 2": "unpinned"}


def test_tcg_keeps_the_topology_on_a_model_that_shows_threads(tmp_path: Path) -> None:
    """No host-passthrough under TCG; qemu64 would hide the threads, so the domain names Nehalem."""
    loaded = hv1_loaded()
    host = loaded.host.model_copy(update={"virt_type": "qemu"})
    vm = host.vms[3]
    tuning = domain_tuning(host, loaded.cores, vm)
    args = virt_install_args(_local_copy(vm, tmp_path), uri="qemu:///system", virt_type="qemu", tuning=tuning)
    assert args[args.index("--cpu") + 1] == "Nehalem"
    done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120)
    (tmp_path / "tcg.xml").write_text(done.stdout)
    valid = subprocess.run(["virt-xml-validate", str(tmp_path / "tcg.xml"), "domain"], capture_output=True,
                           text=True, check=False)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    dom = parse_domain_xml(done.stdout)
    assert dom.topology == GuestTopology(1, 6, 2) and dom.cpu_mode != "host-passthrough"
    rows = {c.name: (c.found, c.ok) for c in performance_checks(vm, dom, tuning)}
    assert rows["cpu model (TCG, threads)"] == ("Nehalem", True) and all(ok for _, ok in rows.values()), rows
    # The model QEMU defaults to is a drift row: its guest would see every vCPU as a core of its own.
    plain = parse_domain_xml(done.stdout.replace("<model>Nehalem</model>", ""))
    assert {c.name: c.found for c in performance_checks(vm, plain, tuning) if not c.ok} == {
        "cpu model (TCG, threads)": "default"}
    # One thread per core (the demo lab's 1-vCPU guests): QEMU's default model; KVM: host-passthrough.
    assert tcg_cpu_model("qemu", GuestTopology(1, 1, 1)) == "" and tcg_cpu_model("kvm", GuestTopology(1, 6, 2)) == ""


@pytest.mark.parametrize("task", ["pins", "topology"])
def test_pins_and_topology_show_what_each_domain_carries(task: str) -> None:
    done = subprocess.run([str(REPO / ".venv/bin/invoke"), task, "--host=hv1"], cwd=REPO, capture_output=True,
                          text=True, check=False, timeout=120, env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    rows = {line.split()[1]: line for line in done.stdout.splitlines() if "threads=" in line}
    assert "│ sockets=1,cores=16,threads=2 │ 1 GiB hugepages, locked │ -" in rows["k3s-worker-slm-heavy"]
    assert "│ 36 MB exclusive │" in rows["k3s-worker-slm-heavy"]
    assert "│ vdb:1 vdc:2 on 34-35,70-71 │ shared " in rows["k3s-worker-data"]
    assert "every VM: nosharepages, no balloon; CPU host-passthrough with cache passthrough" in done.stdout
    assert "host work: host processes and IRQs on CPUs 16-17,34-35,52-53,70-71" in done.stdout
    assert "hugepages reserved: node 0 118 x 1G, node 1 116 x 1G" in done.stdout


def test_offline_plan_of_hv1_carries_topology_disk_io_and_confinement() -> None:
    done = subprocess.run([str(REPO / ".venv/bin/invoke"), "plan", "--host=hv1", "--offline"], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "--vcpus 32,sockets=1,cores=16,threads=2" in out and "guest sockets=1,cores=16,threads=2" in out
    assert "vdc cache=none io=native discard=unmap iothread 2 on CPUs 34-35,70-71" in out
    # The terminal cuts long commands (#15); the journal the plan names keeps each one whole.
    journal = Path(out.split("every command and file in full: ")[1].split()[0]).read_text()
    for edit in ("cache=none", "io=native", "discard=unmap", "iothread=2"):
        assert f"./devices/disk[3]/driver/@{edit}" in journal
    assert "iothreadpin1.iothread=2,iothreadpin1.cpuset=34-35,70-71" in journal
    # The drop-ins' bodies, as the plan shows every file it writes (#15)
    assert "| [Slice]\n      | AllowedCPUs=16-17,34-35,52-53,70-71" in out and "IRQBALANCE_BANNED_CPULIST=" in out
    assert "echo 118 > /sys/devices/system/node/node0/hugepages/hugepages-1048576kB/nr_hugepages" in out
