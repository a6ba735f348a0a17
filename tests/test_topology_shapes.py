"""Every real machine shape of tests/harness/sysfs.SHAPES, read over real SSH and judged by lscpu.

lscpu (util-linux) is a parser nobody here wrote: for each generated tree the project's facts must
agree with `lscpu --sysroot TREE -p=CPU,CORE,SOCKET,NODE`, `-p=CPU,SOCKET,CACHE` and `--caches`.
Then bios.check runs over SSH with three inventories of the same tree: its true shape (passes), the
other sibling layout (refused, naming the first differing core) and hv1's (refused, naming the rows
that differ, with the values lscpu sees).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lib.cpuset import format_cpulist
from lib.errors import InventoryError
from lib.facts.host import HostFacts, host_facts_command, parse_host_facts
from lib.remote import Endpoint, Session
from lib.retry import Policies
from lib.steps.registry import REGISTRY
from tests.harness.inventory import small_vm, write_host
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.sysfs import SHAPES, HostShape, fast_tmp_dir, inventory_topology, layout, write_tree
from tests.harness.world import World
from tests.inventory_helpers import HOSTS

LSCPU = shutil.which("lscpu") or "/usr/bin/lscpu"  # util-linux is essential on Debian
HV1_TOPOLOGY: dict[str, Any] = yaml.safe_load((HOSTS / "hv1.yaml").read_text())["topology"]
# Shapes whose true inventory is hv1's own topology: hv1 passes there.
HV1_SHAPES = {"intel-2x18x2-spread", "offline-cpus-5-41-70"}
OTHER = {"spread": "adjacent", "adjacent": "spread", "socket-spread": "spread"}


@pytest.fixture(scope="module")
def hv(sshd_farm: SshdFarm) -> Iterator[SshHost]:
    host = sshd_farm.start("hv-topo16")
    yield host
    sshd_farm.stop(host.name)


@pytest.fixture(scope="module")
def trees() -> Iterator[dict[str, Path]]:
    """One tree per shape for the whole module (read-only to every test here), on tmpfs."""
    base = Path(tempfile.mkdtemp(prefix="shapes16-", dir=fast_tmp_dir()))
    yield {name: write_tree(base / name, shape) for name, shape in SHAPES.items()}
    shutil.rmtree(base, ignore_errors=True)


def read_facts(hv: SshHost, root: Path) -> HostFacts:
    session = Session(Endpoint("hv", hv.host, hv.port, hv.user, str(hv.key_file), str(hv.known_hosts)), Policies())
    try:
        return parse_host_facts(session.run(host_facts_command(str(root))).stdout, str(root))
    finally:
        session.close()


def lscpu_rows(root: Path, columns: str) -> list[list[str]]:
    out = subprocess.run([LSCPU, "--sysroot", str(root), f"-p={columns}"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split(",") for line in out.splitlines() if not line.startswith("#")]


def lscpu_summary(root: Path) -> dict[str, str]:
    out = subprocess.run([LSCPU, "--sysroot", str(root), "-J"], capture_output=True, text=True, check=True).stdout
    return {f["field"].rstrip(":"): f.get("data") for f in json.loads(out)["lscpu"]}


def lscpu_l3(root: Path) -> tuple[int, dict[int, set[str]]]:
    """(one L3 instance in bytes, or 0 when none; {socket: its distinct L3 ids}) as lscpu reads them."""
    out = subprocess.run([LSCPU, "--sysroot", str(root), "--caches", "-B", "-J"], capture_output=True, text=True,
                         check=True).stdout
    l3 = [c for c in json.loads(out)["caches"] if c["name"] == "L3"]
    if not l3:
        return 0, {}
    ids: dict[int, set[str]] = defaultdict(set)
    for row in lscpu_rows(root, "CPU,SOCKET,CACHE"):
        ids[int(row[1])].add(row[-1])  # CACHE expands to ",L1d,L1i,L2,L3": L3 is the last field
    (cache,) = l3
    assert int(cache["all-size"]) == int(cache["one-size"]) * sum(len(v) for v in ids.values())
    return int(cache["one-size"]), dict(ids)


def lscpu_topology(root: Path) -> tuple[dict[int, frozenset[int]], dict[int, frozenset[int]], dict[int, int]]:
    """(CPU -> its core's CPUs, node -> CPUs, CPU -> socket) from lscpu's parsable output."""
    rows = [(int(c), int(core), int(sock), node) for c, core, sock, node in lscpu_rows(root, "CPU,CORE,SOCKET,NODE")]
    by_core: dict[int, set[int]] = defaultdict(set)
    nodes: dict[int, set[int]] = defaultdict(set)
    for cpu, core, _, node in rows:
        by_core[core].add(cpu)
        if node:
            nodes[int(node)].add(cpu)
    core_of = {cpu: frozenset(by_core[core]) for cpu, core, _, _ in rows}
    return core_of, {n: frozenset(c) for n, c in nodes.items()}, {cpu: sock for cpu, _, sock, _ in rows}


@pytest.mark.parametrize("name", list(SHAPES))
def test_facts_agree_with_lscpu(name: str, hv: SshHost, trees: dict[str, Path]) -> None:
    root = trees[name]
    facts = read_facts(hv, root)
    assert facts.unreadable == ()
    core_of, nodes, socket_of = lscpu_topology(root)
    summary = lscpu_summary(root)
    assert set(facts.cpus) == set(core_of) == facts.online  # lscpu -p lists the online CPUs
    assert {cpu: c.siblings for cpu, c in facts.cpus.items()} == core_of
    assert {cpu: c.package for cpu, c in facts.cpus.items()} == socket_of
    assert facts.nodes == nodes
    assert len(facts.nodes) == int(summary["NUMA node(s)"])
    assert facts.sockets == int(summary["Socket(s)"])
    assert facts.cores_per_socket == int(summary["Core(s) per socket"])
    assert facts.threads_per_core == int(summary["Thread(s) per core"])
    assert facts.online == _cpulist(summary["On-line CPU(s) list"])
    assert facts.offline == _cpulist(summary.get("Off-line CPU(s) list") or "")
    one, ids = lscpu_l3(root)
    assert facts.l3_kb == {s: one * len(v) // 1024 for s, v in ids.items()}
    assert facts.l3_instances == {s: len(v) for s, v in ids.items()}
    assert facts.smt_active is (int(summary["Thread(s) per core"]) > 1)


def _cpulist(text: str) -> frozenset[int]:
    from lib.cpuset import parse_cpulist

    return parse_cpulist(text)


def test_the_shapes_cover_what_real_machines_do() -> None:
    """The list the issue asks for, so a shape cannot quietly drop out of SHAPES."""
    shapes = SHAPES.values()
    assert any(s.node_count == 8 and s.sockets == 2 and s.ccx_cores == 3 for s in shapes)
    assert any(s.sockets == 4 and s.node_ids == [0, 2, 3] and s.socket_interleave for s in shapes)
    assert any(s.possible_cpus == 80 and s.sockets * s.cores_per_socket * s.threads_per_core == 64 for s in shapes)
    assert any(s.offline for s in shapes) and any(s.old_kernel for s in shapes)
    assert any(s.l3_kb == 0 for s in shapes)
    assert {s.siblings for s in shapes} == {"spread", "adjacent", "socket-spread"}


def _bad(run: Any) -> dict[str, Any]:
    (result,) = run.results
    return {c.name: c for c in result.checks if not c.ok}


def bios_check(tmp: Path, hv: SshHost, root: Path, topology: dict[str, Any]) -> Any:
    world = World(tmp, REGISTRY)
    write_host(world.hosts, "hv1", hv, sysroot=root, topology=topology)
    (run,) = world.run("bios.check")
    return run


@pytest.mark.parametrize("name", list(SHAPES))
def test_true_shape_passes_bios_check(name: str, hv: SshHost, trees: dict[str, Path], tmp_path: Path) -> None:
    shape, root = SHAPES[name], trees[name]
    run = bios_check(tmp_path, hv, root, inventory_topology(shape))
    assert run.exit_code == 0 and not _bad(run), _bad(run)
    warned = {c.name: c.found for c in run.results[0].checks if c.kind == "warning"}
    _, nodes, _ = lscpu_topology(root)
    expect_warned: set[str] = set()
    if shape.old_kernel:  # no nodeN/meminfo: unknown, never a number
        expect_warned |= {f"node {n} memory" for n in nodes}
        assert all(warned[f"node {n} memory"].startswith("unknown") for n in nodes)
    if shape.offline:  # offline CPUs no VM uses; the kernel's core count leaves their core out
        expect_warned |= {"CPUs online", "cores per socket"}
        assert warned["CPUs online"].startswith(f"CPUs {format_cpulist(shape.offline)} offline; no VM is pinned")
    assert set(warned) == expect_warned
    evidence = {c.name: c.found for c in run.results[0].checks if c.kind == "evidence"}
    if shape.possible_cpus:
        assert evidence["CPUs possible"] == f"0-{shape.possible_cpus - 1} (present 0-{len(lay_cpus(shape)) - 1})"
    else:
        assert "CPUs possible" not in evidence


def lay_cpus(shape: HostShape) -> list[int]:
    return list(layout(shape).cpus)


@pytest.mark.parametrize("name", list(SHAPES))
def test_other_sibling_layout_is_refused(name: str, hv: SshHost, trees: dict[str, Path], tmp_path: Path) -> None:
    """Refused by inventory.check where the lie's cores cross the nodes, else by bios.check's core row."""
    shape, root = SHAPES[name], trees[name]
    lie = inventory_topology(shape, OTHER[shape.siblings])
    try:
        run = bios_check(tmp_path, hv, root, lie)
    except InventoryError as err:
        assert err.exit_code == 2
        assert [p.rule for p in err.problems] == ["topology.core-nodes"]
        return
    assert run.exit_code == 3
    (row,) = [c for n, c in _bad(run).items() if n.startswith("core of CPU ")]
    cpu = int(row.name.removeprefix("core of CPU "))
    core_of, _, _ = lscpu_topology(root)
    kernel = format_cpulist(core_of[cpu])
    assert row.found.startswith((f"{kernel} ", f"{kernel};")) and row.expected != kernel
    fix = "listed with sibling_sets" if shape.siblings == "socket-spread" else shape.siblings
    assert row.found.endswith(f"(this host needs sibling_layout: {fix})")


def test_both_refusals_are_exercised() -> None:
    """Some lies fail inventory.check (cores across nodes), others only bios.check: both paths are tested."""
    from lib.inventory.model import Topology
    from lib.inventory.rules import inventory_threads
    from lib.pinplan import layout_problems

    crosses = set()
    for name, shape in SHAPES.items():
        topo = Topology.model_validate(inventory_topology(shape, OTHER[shape.siblings]))
        if layout_problems(inventory_threads(topo), {n.id: n.cpu_set for n in topo.nodes}, "x"):
            crosses.add(name)
    assert crosses and crosses != set(SHAPES)


@pytest.mark.parametrize("name", sorted(set(SHAPES) - HV1_SHAPES))
def test_hv1_is_refused_row_by_row(name: str, hv: SshHost, trees: dict[str, Path], tmp_path: Path) -> None:
    """Every row where lscpu's view differs from hv1's inventory fails, showing what lscpu sees."""
    root = trees[name]
    run = bios_check(tmp_path, hv, root, HV1_TOPOLOGY)
    assert run.exit_code == 3
    bad = _bad(run)
    summary = lscpu_summary(root)
    for row_name, key, lscpu_field in (("sockets", "sockets", "Socket(s)"),
                                       ("cores per socket", "cores_per_socket", "Core(s) per socket"),
                                       ("threads per core", "threads_per_core", "Thread(s) per core")):
        if summary[lscpu_field] != str(HV1_TOPOLOGY[key]):
            assert bad[row_name].found == summary[lscpu_field]
    _, nodes, _ = lscpu_topology(root)
    for node in HV1_TOPOLOGY["nodes"]:
        if nodes.get(node["id"]) != _cpulist(node["cpus"]):
            shown = bad[f"node {node['id']} CPUs"].found
            assert shown == (format_cpulist(nodes[node["id"]]) if node["id"] in nodes else "missing")
    for node_id in set(nodes) - {n["id"] for n in HV1_TOPOLOGY["nodes"]}:
        assert bad[f"node {node_id} CPUs"].expected == "not in the inventory"
    core_rows = [c for n, c in bad.items() if n.startswith("core of CPU ")]
    if SHAPES[name].siblings != "spread":  # hv1 says spread: the row names the layout the host has
        fix = "listed with sibling_sets" if SHAPES[name].siblings == "socket-spread" else SHAPES[name].siblings
        assert core_rows and core_rows[0].found.endswith(f"(this host needs sibling_layout: {fix})")
    one, ids = lscpu_l3(root)
    for socket, l3_ids in ids.items():
        if one * len(l3_ids) != HV1_TOPOLOGY["l3_cache_mb"] << 20:
            assert bad[f"socket {socket} L3"].found.startswith(f"{one * len(l3_ids) / 2**20:g} MB")
    if not ids:
        assert bad["socket 0 L3"].found == "none reported"


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_unreadable_values_fail_by_file_and_value(hv: SshHost, tmp_path: Path) -> None:
    root = write_tree(tmp_path / "root", HostShape())
    cpu, node = root / "sys/devices/system/cpu", root / "sys/devices/system/node"
    (cpu / "cpu3/topology/core_id").write_text("three\n")
    (node / "node1/cpulist").write_text("18-35,54-\n")  # truncated
    (cpu / "cpu40/cache/index3/size").write_text("45 MiB\n")
    dmi = root / "sys/class/dmi/id/bios_version"
    dmi.unlink()
    dmi.mkdir()  # there but unreadable (as root, too): named, never read as absent
    before = snapshot(root)
    run = bios_check(tmp_path, hv, root, inventory_topology(HostShape()))
    assert run.exit_code == 3
    (result,) = run.results
    assert result.status == "failed" and "checks differ from the spec" in (result.error or "")  # not a crash
    bad = _bad(run)
    rows = {name: (c.expected, c.found) for name, c in bad.items() if name.startswith("unreadable ")}
    assert rows == {
        "unreadable /sys/devices/system/cpu/cpu3/topology/core_id": ("a number", "'three'"),
        "unreadable /sys/devices/system/node/node1/cpulist": ("a cpulist", "'18-35,54-'"),
        "unreadable /sys/devices/system/cpu/cpu40/cache/index3/size": ("a size like 45056K", "'45 MiB'"),
        "unreadable /sys/class/dmi/id/bios_version": ("a readable file", "'Is a directory'"),
    }
    assert bad["node 1 CPUs"].found == "missing"  # never a guess
    assert snapshot(root) == before


def test_vm_pinned_to_an_offline_cpu_fails(hv: SshHost, tmp_path: Path) -> None:
    shape = SHAPES["offline-cpus-5-41-70"]
    vm = small_vm("vm-off", 0)
    del vm["k8s"]
    vm["tuning"]["vcpu_pins"] = ["4", "5"]
    world = World(tmp_path, REGISTRY)
    write_host(world.hosts, "hv1", hv, sysroot=write_tree(tmp_path / "root", shape),
               topology=inventory_topology(shape), vms=[vm])
    (run,) = world.run("bios.check")
    assert run.exit_code == 3
    assert _bad(run)["CPUs online"].found == "CPUs 5,41,70 offline; vm-off is pinned to CPU 5"


def _vm(name: str, index: int, vcpus: int, nodeset: str, emulator: list[int]) -> dict[str, Any]:
    vm = small_vm(name, index)
    del vm["k8s"]
    vm["vcpu_count"] = vcpus
    vm["tuning"] = {"emulator_cpuset": format_cpulist(emulator), "numa_memory": {"nodeset": nodeset, "mode": "strict"}}
    return vm


@pytest.mark.parametrize("name", ["epyc-2x24x2-8node-ccx", "epyc-2x24x2-8node-ccx-spread"])
def test_planner_on_eight_nodes_keeps_whole_kernel_cores(name: str, hv: SshHost, trees: dict[str, Path],
                                                         tmp_path: Path) -> None:
    shape, root = SHAPES[name], trees[name]
    lay = layout(shape)
    node_cores = {n: [c for c in lay.cores() if lay.cpus[c[0]].node == n] for n in lay.nodes_written}
    host_cpus = node_cores[0][0]  # the host keeps node 0's first core; each VM's emulator its node's last
    vms = [_vm("vm-a", 0, 8, "0", node_cores[0][-1]), _vm("vm-b", 1, 9, "1", node_cores[1][-1]),
           _vm("vm-big", 2, 11, "2", node_cores[2][-1]), _vm("vm-d", 3, 10, "3", node_cores[3][-1]),
           _vm("vm-e", 4, 16, "6-7", node_cores[6][-1])]
    extra = {"topology": inventory_topology(shape), "host_reserved_cpus": format_cpulist(host_cpus)}
    world = World(tmp_path, REGISTRY)
    write_host(world.hosts, "hv1", hv, sysroot=root, vms=vms, **extra)
    # Node 2 has 12 threads, 2 of them its emulator's: 11 vCPUs do not fit; exactly that VM is refused.
    with pytest.raises(InventoryError) as err:
        world.loaded()
    assert [(p.rule, p.path, p.message) for p in err.value.problems] == [
        ("pins.plan", "vms[2].vcpu_count", "could not fit 11 vCPUs of vm-big on node 2: 10 free threads")]

    vms[2]["vcpu_count"] = 10
    write_host(world.hosts, "hv1", hv, sysroot=root, vms=vms, **extra)
    (loaded,) = world.loaded()
    facts = read_facts(hv, root)  # the kernel's siblings and nodes, over SSH
    kept = set(host_cpus).union(*(node_cores[n][-1] for n in (0, 1, 2, 3, 6)))
    for vm in loaded.host.vms:
        pins = vm.pins
        assert len(pins) == vm.vcpu_count and kept.isdisjoint(pins), vm.name
        allowed = frozenset().union(*(facts.nodes[n] for n in vm.tuning.numa_memory.nodes))
        assert set(pins) <= allowed, vm.name
        # vCPUs 2k and 2k+1 are the two threads of one kernel core; an odd count ends on one thread.
        pairs = [pins[i:i + 2] for i in range(0, len(pins) - 1, 2)]
        assert all(facts.cpus[a].siblings == {a, b} for a, b in pairs), (vm.name, pins)
        whole = [core for core in facts.cores if core <= set(pins)]
        assert len(whole) == vm.vcpu_count // 2, vm.name
    (run,) = world.run("bios.check")
    assert run.exit_code == 0, _bad(run)


def test_this_machines_own_sys_agrees_with_lscpu(hv: SshHost) -> None:
    """The real kernel's /sys (sysroot /), read over SSH, against lscpu on the same files."""
    root = Path("/")
    facts = read_facts(hv, root)
    core_of, nodes, socket_of = lscpu_topology(root)
    assert facts.unreadable == ()
    assert {cpu: c.siblings for cpu, c in facts.cpus.items()} == core_of
    assert {cpu: c.package for cpu, c in facts.cpus.items()} == socket_of
    assert facts.nodes == nodes
    one, ids = lscpu_l3(root)
    assert facts.l3_kb == {s: one * len(v) // 1024 for s, v in ids.items()}


def test_spread_inventory_on_an_adjacent_host_with_the_same_nodes_is_refused(hv: SshHost, tmp_path: Path) -> None:
    """The issue's worst case: every node row agrees with hv1, only the siblings differ (N and N+1)."""
    shape = HostShape(siblings="adjacent", node_cpus_override={0: "0-17,36-53", 1: "18-35,54-71"})
    root = write_tree(tmp_path / "root", shape)
    core_of, nodes, _ = lscpu_topology(root)
    assert core_of[1] == {0, 1} and nodes == {0: _cpulist("0-17,36-53"), 1: _cpulist("18-35,54-71")}
    run = bios_check(tmp_path, hv, root, HV1_TOPOLOGY)
    assert run.exit_code == 3
    bad = _bad(run)
    assert list(bad) == ["core of CPU 0"]
    assert (bad["core of CPU 0"].expected, bad["core of CPU 0"].found) == (
        "0,36", "0-1; 35 more cores differ (this host needs sibling_layout: adjacent)")


def test_kernel_core_across_two_nodes_is_its_own_row(hv: SshHost, tmp_path: Path) -> None:
    """A firmware that puts CPU 53 (CPU 17's sibling) on node 1: the core is split, whatever the inventory says."""
    shape = HostShape(node_cpus_override={0: "0-17,36-52", 1: "18-35,53-71"})
    root = write_tree(tmp_path / "root", shape)
    _, nodes, _ = lscpu_topology(root)
    assert 53 in nodes[1] and 17 in nodes[0]
    bad = _bad(bios_check(tmp_path, hv, root, HV1_TOPOLOGY))
    assert (bad["core of CPU 17 on one node"].expected, bad["core of CPU 17 on one node"].found) == (
        "every thread on one node", "CPU 17 on node 0, CPU 53 on node 1")
    assert bad["node 1 CPUs"].found == "18-35,53-71"
