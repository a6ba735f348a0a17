"""Day two, pure: which differences go on live and which need a restart, and the restart's plan in
every state a run can leave behind (hv1's inventory; no host contacted)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lib.cpuset import format_cpulist
from lib.daytwo import NodeState, live_commands, split_drift
from lib.domain import DomainDisk, DomainSpec, expected_disks
from lib.errors import InventoryError
from lib.inventory.load import LoadedHost, load_inventory
from lib.inventory.model import VM
from lib.options import RunFlags
from lib.steps.base import Await, Mode, OnPeer, StepMismatch
from lib.steps.restart import RestartFacts, VmsRestartAgents, VmsRestartServer
from lib.steps.virt import DomainFacts
from lib.targets import targets_for
from lib.vmperf import DomainTuning, domain_tuning
from tests.inventory_helpers import REPO, mutated, write_inventory

SLM, SERVER = "k3s-worker-slm", "k3s-server-tasks"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedHost:
    def ssh(data: dict[str, Any]) -> None:  # steps inside VMs need an address for the server
        for i, vm in enumerate(data["vms"]):
            vm["ssh"] = {"host": f"10.0.0.{11 + i}", "user": "admin"}

    hosts = write_inventory(tmp_path_factory.mktemp("inv"), mutated(ssh))
    return load_inventory(hosts, ["hv1"]).hosts["hv1"]


def vm_named(loaded: LoadedHost, name: str) -> VM:
    return next(vm for vm in loaded.host.vms if vm.name == name)


def tuning_of(vm: VM) -> DomainTuning:
    loaded = load_inventory(REPO / "hosts", ["hv1"]).hosts["hv1"]
    return domain_tuning(loaded.host, loaded.cores, vm)


def as_defined(vm: VM, **changes: Any) -> DomainSpec:
    """The domain exactly as vms.define writes it for vm (pins and #20's settings), then with some
    fields changed."""
    t = tuning_of(vm)

    def disk(d: DomainDisk) -> DomainDisk:
        if d.target not in t.iothreads:
            return d
        return replace(d, cache="none", io="native", discard="unmap", iothread=str(t.iothreads[d.target]))

    spec = DomainSpec(vm.name, "kvm", vm.vcpu_count, vm.memory_mb,
                      {i: frozenset({cpu}) for i, cpu in enumerate(vm.pins)}, vm.tuning.emulator_cpus, "strict",
                      vm.tuning.numa_memory.nodes, tuple(disk(DomainDisk(d.device, d.source, d.target))
                                                         for d in expected_disks(vm)),
                      topology=t.topology, cpu_mode="host-passthrough" if t.cache_passthrough else "",
                      cache_mode="passthrough" if t.cache_passthrough else "", nosharepages=True, locked=t.locked,
                      hugepage_kb=(t.hugepage_kb,) if t.hugepage_kb else (), memballoon="none",
                      iothreads=len(t.iothreads), iothread_pins={i: t.iothread_cpus for i in t.iothreads.values()},
                      cachetunes=(t.cachetune,) if t.cachetune else ())
    return replace(spec, **changes)


def test_pins_on_the_vm_node_and_the_emulator_are_live_the_rest_needs_a_restart(loaded: LoadedHost) -> None:
    host, slm = loaded.host, vm_named(loaded, SLM)  # node 1: CPUs 18-35,54-71
    tuning = tuning_of(slm)
    assert split_drift(host, slm, as_defined(slm), tuning) == split_drift(host, slm, as_defined(slm), tuning)
    assert not split_drift(host, slm, as_defined(slm), tuning_of(slm)).live
    emulator = split_drift(host, slm, as_defined(slm, emulator_cpus=frozenset({32})), tuning_of(slm))
    assert [c.name for c in emulator.live] == ["emulatorpin"] and not emulator.restart
    pins = dict(as_defined(slm).vcpu_pins)
    on_node = split_drift(host, slm, as_defined(slm, vcpu_pins={**pins, 0: frozenset({35})}), tuning_of(slm))
    assert [c.name for c in on_node.live] == ["vcpupin 0"] and not on_node.restart
    # The running domain's memory is on node 0: moving vCPU 0 to node 1 moves the VM across nodes,
    # which waits for a restart (the memory would stay remote until then).
    off_node = split_drift(host, slm, as_defined(slm, numa_nodes=frozenset({0}), vcpu_pins={**pins, 0: frozenset({5})}),
                           tuning)
    assert [c.name for c in off_node.live] == ["numatune"]
    assert [c.name for c in off_node.restart] == ["vcpupin 0"]
    memory = split_drift(host, slm, as_defined(slm, memory_mb=1024, vcpus=2), tuning_of(slm))
    assert [c.name for c in memory.restart][:2] == ["vcpus", "memory"] and not memory.live
    assert memory.restart_fields.startswith(f"vcpus 2 -> {slm.vcpu_count}, memory 1024 MiB -> {slm.memory_mb} MiB")
    mode = split_drift(host, slm, as_defined(slm, numa_mode="preferred"), tuning_of(slm))
    assert [c.name for c in mode.restart] == ["numatune"]
    disk = split_drift(host, slm, as_defined(slm, disks=as_defined(slm).disks[1:]), tuning_of(slm))
    assert [c.name for c in disk.restart] == [f"disk {slm.disk_path}"]


def test_live_commands_change_the_running_domain_and_its_definition(loaded: LoadedHost) -> None:
    slm = vm_named(loaded, SLM)
    dom = as_defined(slm, emulator_cpus=frozenset({32}), vcpu_pins={**as_defined(slm).vcpu_pins, 3: frozenset({35})})
    uri = loaded.host.libvirt_uri
    assert [c.shown for c in live_commands(slm, uri, dom, running=True, tuning=tuning_of(slm))] == [
        f"virsh -c {uri} emulatorpin {SLM} 34-35,70-71 --live --config",
        f"virsh -c {uri} vcpupin {SLM} 3 {slm.pins[3]} --live --config"]
    assert [c.shown.split()[-1] for c in live_commands(slm, uri, dom, running=False, tuning=tuning_of(slm))] == [
        "--config", "--config"]


def test_an_emulator_change_moves_the_io_threads_live_too(loaded: LoadedHost) -> None:
    # The data VM's I/O threads run on its emulator cpuset: a new emulator_cpuset in the inventory
    # leaves both the emulator and the I/O thread pins behind on the running domain.
    data = vm_named(loaded, "k3s-worker-data")
    old = frozenset({18})
    tuning = tuning_of(data)
    assert tuning.iothreads, "hv1's data VM has data disks served by I/O threads"
    dom = as_defined(data, emulator_cpus=old, iothread_pins={i: old for i in tuning.iothreads.values()})
    drift = split_drift(loaded.host, data, dom, tuning)
    assert not drift.restart
    ids = sorted(tuning.iothreads.values())
    assert [c.name for c in drift.live] == ["emulatorpin"] + [f"iothreadpin {i}" for i in ids]
    cpus = format_cpulist(tuning.iothread_cpus)
    uri = loaded.host.libvirt_uri
    assert [c.shown for c in live_commands(data, uri, dom, running=True, tuning=tuning)][1:] == [
        f"virsh -c {uri} iothreadpin k3s-worker-data {i} {cpus} --live --config" for i in ids]
    # An I/O thread the running domain does not have yet is no pin to move: it needs a restart.
    fewer = replace(dom, iothreads=1, iothread_pins={1: old})
    assert "iothreads" in [c.name for c in split_drift(loaded.host, data, fewer, tuning).restart]


def facts(vm: VM, *, state: str = "running", node: NodeState | None = None, **changes: Any) -> RestartFacts:
    nodes = {vm.name: node} if node else {}
    return RestartFacts(DomainFacts(as_defined(vm, **changes), state), nodes)


def ready(name: str, mark: str = "") -> NodeState:
    return NodeState(name, True, bool(mark), mark)


def target(loaded: LoadedHost, step: Any, name: str, mode: Mode = "apply", **flags: Any) -> Any:
    return next(t for t in targets_for(step, loaded, RunFlags(**flags), mode=mode) if t.name == name)


def kinds(actions: tuple[Any, ...]) -> list[str]:
    shown = []
    for a in actions:
        if isinstance(a, OnPeer):
            shown.append(next(w for w in ("drain", "uncordon", "annotate") if f"kubectl {w} " in a.command.shown))
        elif isinstance(a, Await):
            shown.append("await")
        else:
            shown.append(next(w for w in ("shutdown", "undefine", " start ", "autostart", "define")
                              if w in a.shown).strip())
    return shown


def test_a_restart_is_refused_without_the_flag_naming_the_fields(loaded: LoadedHost) -> None:
    step, slm = VmsRestartAgents(), vm_named(loaded, SLM)
    with pytest.raises(StepMismatch) as refused:
        step.plan(target(loaded, step, SLM), facts(slm, node=ready(SLM), memory_mb=1024))
    assert refused.value.exit_code == 5
    assert refused.value.message.startswith(f"{SLM} needs a restart to apply: memory 1024 MiB -> {slm.memory_mb} MiB;"
                                            " nothing was changed: rerun with --restart")
    # The plan shows it as a restart of that VM, and what the flag would do.
    shown = step.plan(target(loaded, step, SLM, mode="plan"), facts(slm, node=ready(SLM), memory_mb=1024))
    assert shown.reason.startswith(f"restart {SLM}, one VM at a time: memory") and "(needs --restart)" in shown.reason
    assert kinds(shown.actions) == ["annotate", "drain", "shutdown", "undefine", "start", "await", "uncordon"]
    # Live changes are not this step's business, nor the server (the other step's).
    assert step.plan(target(loaded, step, SLM), facts(slm, emulator_cpus=frozenset({32}))).empty
    assert step.plan(target(loaded, step, SERVER), None).empty


def test_with_the_flag_drain_shutdown_redefine_start_verify_uncordon(loaded: LoadedHost) -> None:
    step, slm = VmsRestartAgents(), vm_named(loaded, SLM)
    plan = step.plan(target(loaded, step, SLM, restart=True), facts(slm, node=ready(SLM), memory_mb=1024))
    assert plan.exclusive  # one VM at a time
    assert kinds(plan.actions) == ["annotate", "drain", "shutdown", "undefine", "start", "await", "uncordon"]
    mark, drain = plan.actions[:2]
    assert isinstance(drain, OnPeer) and "--timeout=300s" in drain.command.shown
    assert isinstance(mark, OnPeer) and "'numa-k3s.io/drained-for=restart: memory'" in mark.command.shown
    assert "virsh -c qemu:///system destroy" not in plan.actions[2].shown  # no forcing without --force-off
    forced = step.plan(target(loaded, step, SLM, restart=True, force_off=True, shutdown_timeout=30,
                              drain_timeout=60), facts(slm, node=ready(SLM), memory_mb=1024))
    assert "destroy" in forced.actions[2].shown and "-ge 30" in forced.actions[2].shown
    assert "--timeout=60s" in forced.actions[1].shown


@pytest.mark.parametrize(("where", "state", "changes", "expected"), [
    ("drained, still running", "running", {"memory_mb": 1024}, ["annotate", "drain", "shutdown", "undefine",
                                                                 "start", "await", "uncordon"]),
    ("shut down", "shut off", {"memory_mb": 1024}, ["undefine", "start", "await", "uncordon"]),
    ("redefined", "shut off", {}, ["start", "await", "uncordon"]),
    # Stopped between `virsh start` and `virsh autostart` (the redefine had dropped the autostart):
    # setting it again is part of finishing, or the wait for vms.start's checks would never end.
    ("started", "running", {}, ["autostart", "await", "uncordon"]),
])
def test_a_stopped_restart_resumes_from_what_the_host_shows(loaded: LoadedHost, where: str, state: str,
                                                            changes: dict[str, Any], expected: list[str]) -> None:
    step, slm = VmsRestartAgents(), vm_named(loaded, SLM)
    plan = step.plan(target(loaded, step, SLM, restart=True),
                     facts(slm, state=state, node=ready(SLM, "restart: memory"), **changes))
    assert kinds(plan.actions) == expected, where
    if not changes:  # nothing left that needs the flag: finishing never waits for the operator
        assert kinds(step.plan(target(loaded, step, SLM), facts(slm, state=state, node=ready(SLM, "restart: memory")))
                     .actions) == expected


def test_the_server_waits_for_every_agent_to_be_uncordoned(loaded: LoadedHost) -> None:
    step, server = VmsRestartServer(), vm_named(loaded, SERVER)
    state = facts(server, node=ready(SERVER), memory_mb=1024)
    state = replace(state, nodes={**(state.nodes or {}), SLM: ready(SLM, "restart: memory")})
    with pytest.raises(StepMismatch) as refused:
        step.plan(target(loaded, step, SERVER, restart=True), state)
    assert "never restarted while an agent is drained: k3s-worker-slm" in refused.value.message
    alone = step.plan(target(loaded, step, SERVER, restart=True), facts(server, node=ready(SERVER), memory_mb=1024))
    assert kinds(alone.actions)[:2] == ["annotate", "drain"]


def test_verify_fails_while_our_cordon_is_there(loaded: LoadedHost) -> None:
    step, slm = VmsRestartAgents(), vm_named(loaded, SLM)
    checks = step.verify(target(loaded, step, SLM), facts(slm, node=ready(SLM, "restart: memory")))
    bad = [(c.name, c.found) for c in checks if not c.ok]
    assert bad == [(f"node {SLM} schedulable", "cordoned by numa-k3s (restart: memory)")]
    assert all(c.ok for c in step.verify(target(loaded, step, SLM), facts(slm, node=ready(SLM))))


def test_restart_flags_need_restart(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), "provision", "--host=hv1",
                           "--force-off"], cwd=REPO, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 2 and "only go with --restart" in done.stderr, done.stderr


def test_an_emulator_set_growing_onto_another_vms_vcpus_is_refused_before_any_host(tmp_path: Path) -> None:
    # The spec's own day-two fix read literally ("cores 16-18 instead of 16-17"): CPU 18 and its
    # sibling 54 are vCPUs of the data VM. The inventory rules refuse it, as for any other change.
    def grow(data: dict[str, Any]) -> None:
        data["vms"][0]["tuning"]["emulator_cpuset"] = "16-18,52-54"

    with pytest.raises(InventoryError) as refused:
        load_inventory(write_inventory(tmp_path, mutated(grow)), ["hv1"])
    overlap = [p for p in refused.value.problems if p.rule == "pins.emulator-overlap"]
    assert [p.path for p in overlap] == ["vms[0].tuning.emulator_cpuset"]
    assert "CPUs 18,54 are vCPU pins of vms[1] (k3s-worker-data)" in overlap[0].message
