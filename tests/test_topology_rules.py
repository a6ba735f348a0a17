"""Layout, sibling sets, nodes and CPUs that contradict each other: named rules with exit 2, never a traceback.

Also the planner's refusals: exactly the VM that cannot be placed, never a false pins.count for the others.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib.errors import InventoryError
from lib.inventory.load import load_inventory
from tests.inventory_helpers import REPO, Mutation, mutated, write_inventory


def _topology(**changes: Any) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        d["topology"].update(changes)

    return apply


def _nodes(cpus0: str, cpus1: str, **changes: Any) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        d["topology"]["nodes"][0]["cpus"] = cpus0
        d["topology"]["nodes"][1]["cpus"] = cpus1
        d["topology"].update(changes)
        d["vms"] = []  # the pins of hv1 are not the point here

    return apply


ADJACENT_SETS = [f"{2 * k}-{2 * k + 1}" for k in range(36)]

# (case, mutation, rule, path, fragment)
BROKEN: list[tuple[str, Mutation, str, str, str]] = [
    ("core spans two nodes", _nodes("0-16,36-53", "17-35,54-71"), "topology.core-nodes", "topology.sibling_layout",
     "core 17 (CPUs 17,53) spans nodes 0-1: CPU 17 node 1, CPU 53 node 0"),
    ("spread cores over adjacent nodes", _nodes("0-35", "36-71"),
     "topology.core-nodes", "topology.sibling_layout", "core 0 (CPUs 0,36) spans nodes 0-1"),
    ("CPU beyond the layout", _nodes("0-17,36-53", "18-35,54-70,72"), "topology.layout-cpus", "topology.nodes",
     "nodes list CPUs 72 that a 2x18x2 host does not have"),
    ("layout CPU in no node", _nodes("0-17,36-53", "18-35,54-70,72"), "topology.layout-node", "topology.nodes",
     "CPU 71 is in no NUMA node"),
    ("listed without sets", _topology(sibling_layout="listed"), "topology.sibling-sets", "topology.sibling_sets",
     "sibling_layout: listed needs sibling_sets"),
    ("sets with a named layout", _topology(sibling_sets=ADJACENT_SETS), "topology.sibling-sets",
     "topology.sibling_sets", "read only with sibling_layout: listed, but the layout is spread"),
    ("too few sets", _topology(sibling_layout="listed", sibling_sets=ADJACENT_SETS[:-1]), "topology.sibling-sets",
     "topology.sibling_sets", "35 sibling sets, but 2 sockets x 18 cores = 36 cores"),
    ("set of three threads", _topology(sibling_layout="listed", sibling_sets=["0-2", *ADJACENT_SETS[1:]]),
     "topology.sibling-sets", "topology.sibling_sets[0]", "core '0-2' has 3 threads, but threads_per_core is 2"),
    ("CPU in two sets", _topology(sibling_layout="listed", sibling_sets=["0-1", "1,3", *ADJACENT_SETS[2:]]),
     "topology.sibling-sets", "topology.sibling_sets[1]", "CPU 1 is in sibling set 0 and sibling set 1"),
    ("listed set spans nodes", _topology(sibling_layout="listed", sibling_sets=["0,18", "1,36", *[
        f"{k},{k + 36}" for k in range(2, 18)], *[f"{k},{k + 36}" for k in range(19, 36)], "37,54"]),
     "topology.core-nodes", "topology.sibling_sets", "core 0 (CPUs 0,18) spans nodes 0-1"),
]


@pytest.mark.parametrize(("mutate", "rule", "path", "fragment"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_layout_conflict_is_a_rule(tmp_path: Path, mutate: Mutation, rule: str, path: str, fragment: str) -> None:
    hosts = write_inventory(tmp_path, mutated(mutate))
    with pytest.raises(InventoryError) as err:
        load_inventory(hosts)
    hits = [p for p in err.value.problems if p.rule == rule and p.path == path]
    assert hits, f"no {rule} at {path} in:\n{err.value}"
    assert fragment in hits[0].message, str(err.value)
    assert err.value.exit_code == 2


def test_listed_sets_that_fit_are_the_planners_cores(tmp_path: Path) -> None:
    # hv1's own cores written out: listed gives the same cores (and the same pins) as spread.
    sets = [f"{k},{k + 36}" for k in range(36)]
    spread = load_inventory(write_inventory(tmp_path)).hosts["hv1"]
    listed = load_inventory(write_inventory(tmp_path, mutated(_topology(sibling_layout="listed",
                                                                         sibling_sets=sets)))).hosts["hv1"]
    assert listed.cores == spread.cores
    assert listed.cores[0].threads == (0, 36) and listed.cores[0].node == 0


def test_l3_may_be_left_out(tmp_path: Path) -> None:
    def no_l3(d: dict[str, Any]) -> None:
        del d["topology"]["l3_cache_mb"]

    assert load_inventory(write_inventory(tmp_path, mutated(no_l3))).hosts["hv1"].host.topology.l3_cache_mb is None


def _unplanned(d: dict[str, Any]) -> None:
    """Every VM from counts and nodesets; tasks (vms[3]) asks for 20 vCPUs where 12 threads are left."""
    for vm in d["vms"]:
        del vm["tuning"]["vcpu_pins"]
    d["vms"][3]["vcpu_count"] = 20


def test_refusal_names_only_the_vm_that_does_not_fit(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as err:
        load_inventory(write_inventory(tmp_path, mutated(_unplanned)))
    errors = [p for p in err.value.problems if p.severity == "error"]  # hv1's placeholder keys are warnings
    assert [(p.rule, p.path) for p in errors] == [("pins.plan", "vms[3].vcpu_count")]
    assert errors[0].message == "could not fit 20 vCPUs of k3s-server-tasks on node 1: 12 free threads"


def test_vm_after_a_refusal_is_still_planned_and_checked(tmp_path: Path) -> None:
    def unplanned_first(d: dict[str, Any]) -> None:
        _unplanned(d)
        d["vms"][1]["vcpu_count"] = 40  # data: more than node 1 has; slm and tasks after it still fit
        d["vms"][3]["vcpu_count"] = 12
        d["vms"][2]["memory_mb"] = 200000  # and slm's own rule still runs: memory.fit

    with pytest.raises(InventoryError) as err:
        load_inventory(write_inventory(tmp_path, mutated(unplanned_first)))
    rules = [(p.rule, p.path) for p in err.value.problems]
    assert ("pins.plan", "vms[1].vcpu_count") in rules
    assert not [r for r in rules if r[0] == "pins.count"]
    # hv1's VMs are hugepage-backed (#20): slm's memory is then checked against node 1's hugepages.
    assert {"memory.fit", "memory.hugepages"} & {rule for rule, _ in rules}


def test_layout_conflict_through_the_cli_is_exit_2_without_traceback(tmp_path: Path) -> None:
    hosts = write_inventory(tmp_path, mutated(_nodes("0-16,36-53", "17-35,54-71")))
    env = dict(os.environ, INVOKE_HOSTS_DIR=str(hosts))
    out = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), "inventory.check"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert f"ERROR [topology.core-nodes] {hosts}/hv1.yaml: topology.sibling_layout: core 17 (CPUs 17,53)" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sockets=st.integers(1, 3), cores=st.integers(1, 5), threads=st.integers(1, 3),
       layout=st.sampled_from(["spread", "adjacent", "listed"]), cuts=st.lists(st.integers(0, 50), max_size=3),
       sets=st.none() | st.lists(st.sets(st.integers(0, 50), min_size=1, max_size=3), max_size=16))
def test_any_topology_loads_or_is_exit_2(tmp_path: Path, sockets: int, cores: int, threads: int, layout: str,
                                         cuts: list[int], sets: list[set[int]] | None) -> None:
    """Any counts, layout, listed sets and node split: a loaded host or rule findings, never a traceback."""
    total = sockets * cores * threads
    bounds = sorted({0, total, *(c for c in cuts if c < total)})
    nodes = [{"id": i, "cpus": f"{lo}-{hi - 1}", "memory_mb": 8192}
             for i, (lo, hi) in enumerate(itertools.pairwise(bounds))]

    def apply(d: dict[str, Any]) -> None:
        d["topology"] = {"sockets": sockets, "cores_per_socket": cores, "threads_per_core": threads,
                         "sibling_layout": layout, "l3_cache_mb": 8, "nodes": nodes}
        if sets is not None:
            d["topology"]["sibling_sets"] = [",".join(map(str, sorted(s))) for s in sets]
        d["vms"] = []

    try:
        loaded = load_inventory(write_inventory(tmp_path, mutated(apply))).hosts["hv1"]
    except InventoryError as err:
        assert err.exit_code == 2 and err.problems
        return
    node_of = {cpu: i for i, (lo, hi) in enumerate(itertools.pairwise(bounds)) for cpu in range(lo, hi)}
    assert sorted(t for core in loaded.cores for t in core.threads) == list(range(total))
    assert all(node_of[t] == core.node for core in loaded.cores for t in core.threads)
