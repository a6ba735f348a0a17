"""k3s.server, k3s.agents, k3s.taints and their teardown: the product's own code over real sshd.

Each VM is a busybox chroot behind its own sshd, reached through the test hypervisor's sshd as a
jump host; k3s is the stand-in under tests/k3s_standin (the one allowed stand-in), installed
through the airgap path, so the upload and install code is the product's.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from lib import k3s
from lib.runner import Engine, failure_text
from lib.steps.registry import REGISTRY
from lib.token import ENV
from tests.harness.chroot import busybox_root, chroot_host, new_roots_dir, remove_root, root_pids
from tests.harness.guest import free_port
from tests.harness.inventory import ssh_of, write_host
from tests.harness.k3s_standin import standin_artifacts, stop_standin
from tests.harness.sshd import SshdFarm
from tests.harness.world import FAST, World
from tests.operator_views import invoke

V1, V2 = "v1.31.4+k3s1", "v1.32.0+k3s1"
SERVER, SLM, DATA = "k3s-server-tasks", "k3s-worker-slm", "k3s-worker-data"
WAIT = replace(FAST, converge=replace(FAST.converge, wait_initial=1, wait_max=2, deadline=60))



@dataclass
class K3sWorld:
    world: World
    roots: dict[str, Path]
    token_file: Path
    artifacts: Path

    def run(self, *steps: str, **kw: Any) -> Any:
        (run,) = self.world.run(*steps, **kw)
        return run

    def set_version(self, version: str) -> None:
        path = self.world.hosts / "lab.yaml"
        data = yaml.safe_load(path.read_text())
        data["k3s"]["version"] = version
        data["k3s"]["artifacts_dir"] = str(standin_artifacts(self.artifacts.parent / version, version))
        path.write_text(yaml.safe_dump(data))


def vm_entry(name: str, role: str, taints: list[str], ssh: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name, "vcpu_count": 1, "memory_mb": 256, "disk_path": f"/var/lib/x/{name}.qcow2", "disk_size_gb": 1,
        "base_image_path": "/var/lib/x/base.qcow2", "bridge_network_interface": "lab0",
        "cloud_init_iso_path": f"/var/lib/x/{name}.iso",
        "tuning": {"vcpu_pins": [1], "emulator_cpuset": "0", "numa_memory": {"nodeset": "0", "mode": "strict"}},
        "ssh": ssh, "k8s": {"role": role, "taints": taints},
    }


@pytest.fixture
def k3s_world(tmp_path: Path, sshd_farm: SshdFarm, monkeypatch: pytest.MonkeyPatch) -> Iterator[K3sWorld]:
    monkeypatch.delenv(ENV, raising=False)
    hv = sshd_farm.start(f"k3shv-{tmp_path.name[-8:]}")
    base = new_roots_dir("k3s-steps-")
    roots: dict[str, Path] = {}
    started: list[str] = []
    try:
        vms = []
        for name, role, taints in ((SERVER, "server", ["node-role.kubernetes.io/control-plane:NoSchedule",
                                                       "workload=tasks:NoSchedule"]),
                                   (SLM, "agent", ["workload=slm:NoSchedule"]),
                                   (DATA, "agent", ["workload=data:NoSchedule"])):
            roots[name] = busybox_root(base / name, hostname=name)
            guest = chroot_host(sshd_farm, f"{name}-{tmp_path.name[-8:]}", roots[name])
            started.append(guest.name)
            vms.append(vm_entry(name, role, taints, ssh_of(guest) | {"jump": True, "host_key": "strict"}))
        artifacts = standin_artifacts(tmp_path / "artifacts" / V1, V1)
        token_file = tmp_path / "operator" / "token"
        w = World(tmp_path, REGISTRY)
        write_host(w.hosts, "lab", hv, vms=vms, virt_type="qemu", pin_sharing="allow", host_reserved_memory_mb=512,
                   lab=True, storage_roots=["/var/lib/x"],
                   topology={"sockets": 1, "cores_per_socket": 2, "threads_per_core": 1, "l3_cache_mb": 32,
                             "nodes": [{"id": 0, "cpus": "0-1", "memory_mb": 4096}]},
                   k3s={"version": V1, "install": "airgap", "artifacts_dir": str(artifacts),
                        "token_file": str(token_file), "api_port": free_port()})
        yield K3sWorld(w, roots, token_file, artifacts)
    finally:
        for root in roots.values():
            stop_standin(root)
        for name in started:
            sshd_farm.stop(name)
        for root in roots.values():
            remove_root(root)
        base.rmdir()
        sshd_farm.stop(hv.name)


def records_text(world: World) -> str:
    return "".join(p.read_text(errors="replace") for p in world.runs.rglob("*") if p.is_file()) + world.out.getvalue()


def pid_of(root: Path) -> int:
    return int((root / "run/k3s-standin.pid").read_text())


def test_cluster_up_taints_exact_token_private_then_nothing_changes(k3s_world: K3sWorld) -> None:
    kw = k3s_world
    (plan,) = kw.world.run("k3s.server", "k3s.addons", mode="plan")  # no cluster yet: planned, not an error
    assert [(r.step, r.status) for r in plan.results] == [("k3s.server", "changed"), ("k3s.addons", "changed")]
    assert "does not answer yet" in plan.results[1].reason and "kube-system tolerates" in plan.results[1].reason
    run = kw.run("k3s.server", "k3s.addons", "k3s.agents", "k3s.taints", policies=WAIT, sleep=time.sleep)
    assert run.exit_code == 0, failure_text([run])
    assert [(r.step, r.status) for r in run.results if r.step != "k3s.taints"] == [
        ("k3s.server", "changed"), ("k3s.addons", "changed"), ("k3s.agents", "changed"), ("k3s.agents", "changed")]
    # Taints from config.yaml applied at registration: nothing left for k3s.taints to do.
    taints = next(r for r in run.results if r.step == "k3s.taints")
    assert taints.status == "ok", taints.reason
    checks = {c.name: (c.found, c.ok) for c in taints.checks}
    assert checks[f"{SERVER} taints"] == ("node-role.kubernetes.io/control-plane:NoSchedule, "
                                         "workload=tasks:NoSchedule", True)
    assert checks[f"{DATA} taints"] == ("workload=data:NoSchedule", True)
    assert checks[f"{SLM} Ready"] == ("True", True) and checks[f"{SERVER} role"] == ("control-plane", True)
    assert checks[f"{DATA} version"] == (V1, True)

    token = kw.token_file.read_text().strip()
    assert len(token) == 64 and stat.S_IMODE(kw.token_file.stat().st_mode) == 0o600
    for root in kw.roots.values():
        config = root / "etc/rancher/k3s/config.yaml"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        for rel, mode in (("etc/rancher/k3s/config.yaml", 0o600), ("usr/local/bin/k3s", 0o755),
                          ("var/lib/numa-k3s/install.sh", 0o755)):  # every upload: owner and mode
            st = (root / rel).stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, mode), rel
        assert yaml.safe_load(config.read_text())["token"] == token
    assert token not in records_text(kw.world)  # journal, report, junit, log, progress output

    pids = {name: pid_of(root) for name, root in kw.roots.items()}
    again = kw.run("k3s.server", "k3s.addons", "k3s.agents", "k3s.taints", policies=WAIT, sleep=time.sleep)
    assert again.exit_code == 0 and {r.status for r in again.results} == {"ok"}, failure_text([again])
    assert "no reinstall, no restart" in again.results[0].reason
    assert {name: pid_of(root) for name, root in kw.roots.items()} == pids  # no service restarted

    verify = kw.run("k3s.taints", mode="verify")
    assert kw.run("k3s.addons", mode="verify").results[0].status == "ok"
    # 3 nodes x Ready/role/taints/version/takes a pod tolerating its taints, then the add-ons' workloads.
    assert verify.exit_code == 0 and len(verify.results[0].checks) == 21
    rows = {c.name: c.found for c in verify.results[0].checks}
    assert rows[f"{SLM} takes a pod tolerating workload=slm:NoSchedule"] == "yes"
    # Every node is tainted: the add-ons run on the server, whose taints kube-system now tolerates.
    assert {rows[f"kube-system {w}"] for w in ("coredns", "local-path-provisioner", "metrics-server", "traefik")} == {
        f"Running on {SERVER}"}
    assert rows["kube-system helm-install-traefik"] == f"Completed on {SERVER}"
    server = yaml.safe_load((kw.roots[SERVER] / "etc/rancher/k3s/config.yaml").read_text())
    assert server["node-taint"] == ["node-role.kubernetes.io/control-plane:NoSchedule", "workload=tasks:NoSchedule"]
    assert server["kube-apiserver-arg"] == ["enable-admission-plugins=NodeRestriction,PodTolerationRestriction"]

    # Online, a changed config.yaml is a diff against the host's file; its token never leaves the host.
    config = kw.roots[DATA] / "etc/rancher/k3s/config.yaml"
    config.write_text(config.read_text().replace("workload=data:NoSchedule", "workload=old:NoSchedule"))
    (plan,) = kw.world.run("k3s.agents", mode="plan")
    shown = "\n".join(next(r for r in plan.results if r.target == DATA).planned)
    assert "/etc/rancher/k3s/config.yaml (mode 600): diff against the host" in shown, shown
    diff = [line.strip() for line in shown.splitlines() if line.strip()[:1] in "+-" and "config.yaml" not in line]
    assert diff == ["-- workload=old:NoSchedule", "+- workload=data:NoSchedule"], shown
    assert token not in records_text(kw.world)


def test_stale_taint_is_reconciled_and_foreign_taints_kept(k3s_world: K3sWorld) -> None:
    kw = k3s_world
    assert kw.run("k3s.server", "k3s.addons", "k3s.agents", policies=WAIT, sleep=time.sleep).exit_code == 0
    # Registered earlier with other taints: one stale under our key, one wrong value, one not ours.
    def on_server(*args: str) -> None:
        done = subprocess.run(["chroot", str(kw.roots[SERVER]), "/usr/local/bin/k3s", "kubectl", *args],
                              capture_output=True, text=True, check=False, timeout=30)
        assert done.returncode == 0, done.stderr

    on_server("taint", "nodes", DATA, "workload=old:NoSchedule", "--overwrite")
    on_server("taint", "nodes", DATA, "workload=data:NoExecute")
    on_server("taint", "nodes", DATA, "example.com/maintenance=yes:NoSchedule")
    drift = kw.run("k3s.taints", mode="verify")
    assert drift.exit_code == 5
    # `invoke status` shows the same: its k3s columns from one node-list read on the server.
    status = invoke(kw.world, "status", "--host=lab", "--json")
    cells = {r["vm"]: (r["k3s_ready"], r["taints"]) for r in json.loads(status.stdout)}
    assert cells == {SERVER: ("Ready", "ok"), SLM: ("Ready", "ok"),
                     DATA: ("Ready", "differ (have workload=data:NoExecute, workload=old:NoSchedule)")}, status.stderr
    fits = f"{DATA} takes a pod tolerating workload=data:NoSchedule"
    assert [(c.name, c.found) for c in drift.results[0].checks if not c.ok] == [
        (f"{DATA} taints", "workload=data:NoExecute, workload=old:NoSchedule"),
        (fits, "no: untolerated taint {example.com/maintenance: yes}, {workload: data}, {workload: old}")]

    fixed = kw.run("k3s.taints", policies=WAIT)
    assert fixed.exit_code == 0, failure_text([fixed])
    assert fixed.results[0].status == "changed"
    assert [c.split(" taint ")[1] for c in fixed.results[0].commands] == [
        f"nodes {DATA} workload=data:NoSchedule --overwrite", f"nodes {DATA} workload:NoExecute-"]
    node = kw.run("k3s.taints", mode="verify").results[0]
    assert node.status == "ok"
    # Someone else's NoSchedule taint still keeps our pods off the node: said, accepted, not ours to remove.
    (warned,) = [c for c in node.checks if c.kind == "warning"]
    assert (warned.name, warned.found) == (fits, "no: untolerated taint {example.com/maintenance: yes} "
                                                 "(not a taint this tool manages)")
    listing = (kw.roots[SERVER] / "var/lib/rancher/k3s/server/standin/nodes").rglob("*")
    assert any("example.com/maintenance" in p.read_text() for p in listing if p.is_file())  # not ours: kept


def test_agent_with_the_wrong_token_fails_naming_the_node(k3s_world: K3sWorld,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    kw = k3s_world
    monkeypatch.setenv(ENV, "the-cluster-token-0123456789")
    assert kw.run("k3s.server", policies=WAIT, sleep=time.sleep).exit_code == 0
    monkeypatch.setenv(ENV, "another-token-9876543210")  # the operator passed the wrong cluster's token
    run = kw.run("k3s.agents")  # FAST: 10 s convergence deadline on the injected sleep
    assert run.exit_code == 4
    failed = [r for r in run.results if r.status == "failed"]
    assert {r.target for r in failed} == {SLM, DATA}
    slm = next(r for r in failed if r.target == SLM)
    assert "did not converge" in slm.error
    rows = {c.name: c.found for c in slm.checks if not c.ok}
    assert rows[f"node {SLM} on the server"] == "not registered"
    assert "token" in rows["k3s-agent log"].lower()
    text = failure_text([run])
    assert f"step k3s.agents on {SLM}" in text and "resume: invoke provision --host=lab --resume" in text
    assert "another-token-9876543210" not in records_text(kw.world) + text
    assert not kw.token_file.exists()  # a token given by the environment is never written down


def test_server_not_ready_for_a_while_is_waited_for(k3s_world: K3sWorld) -> None:
    kw = k3s_world
    ready_after = kw.roots[SERVER] / "etc/rancher/k3s/standin-ready-after"
    ready_after.parent.mkdir(parents=True, exist_ok=True)
    ready_after.write_text("3\n")
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    run = kw.run("k3s.server", policies=WAIT, sleep=sleep)
    assert run.exit_code == 0, failure_text([run])
    assert waits, "the API answered at once: the convergence policy was never exercised"


def test_upgrade_goes_server_first_one_node_at_a_time(k3s_world: K3sWorld) -> None:
    kw = k3s_world
    assert kw.run("k3s.server", "k3s.addons", "k3s.agents", policies=WAIT, sleep=time.sleep).exit_code == 0
    pods = kw.roots[SERVER] / "var/lib/rancher/k3s/server/standin/pods"
    before = {p.name for p in pods.iterdir()}
    kw.set_version(V2)
    (plan,) = kw.world.run("k3s.server", "k3s.agents", mode="plan")
    reasons = [(r.step, r.reason) for r in plan.results]
    assert reasons[0] == ("k3s.server", f"upgrade k3s {V1} -> {V2} (server; the server before the agents, "
                                        "one node at a time: drain, upgrade, uncordon)")
    assert all("upgrade" in reason for _, reason in reasons)
    for result in plan.results:  # each node drained first and uncordoned last, on the server
        assert result.planned[0].startswith(f"on the k3s server: k3s kubectl annotate node {result.target} "), result
        assert f"k3s kubectl drain {result.target} --ignore-daemonsets" in result.planned[1]
        assert result.planned[-1].startswith("on the k3s server: timeout ") and (
            f"k3s kubectl uncordon {result.target}" in result.planned[-1])
    run = kw.run("k3s.server", "k3s.addons", "k3s.agents", "k3s.taints", policies=WAIT, sleep=time.sleep)
    assert run.exit_code == 0, failure_text([run])
    # One at a time: in the run log, every upload to one agent comes before any upload to the other.
    log = next(kw.world.runs.rglob(f"{run.run_id}/run.log")).read_text().splitlines()
    puts = [line.split()[1].rstrip(":") for line in log if " put " in line and "/usr/local/bin/k3s" in line]
    assert puts[0] == SERVER and sorted(puts[1:]) == sorted([SLM, DATA]), puts
    order = [line.split()[1].rstrip(":") for line in log if " put " in line and line.split()[1].rstrip(":") != SERVER]
    assert order == sorted(order, key=order.index) and order[:3] == [order[0]] * 3, order  # no interleaving
    versions = {c.name: c.found for c in run.results[-1].checks if c.name.endswith("version")}
    assert set(versions.values()) == {V2}
    # The new release's manifests rolled the add-ons out: new pods, admitted with kube-system's
    # tolerations, so the resolution survives the upgrade with nothing to redo.
    assert before and not before & {p.name for p in pods.iterdir()}
    assert next(r for r in run.results if r.step == "k3s.addons").status == "ok"
    assert {c.name: c.found for c in run.results[-1].checks}["kube-system coredns"] == f"Running on {SERVER}"
    # The stand-in's record: each node cordoned and uncordoned in turn, the server first, never two at once.
    record = (kw.roots[SERVER] / "var/lib/rancher/k3s/server/standin/record").read_text().splitlines()
    turns = [tuple(line.split()[1:3]) for line in record if line.split()[1] in ("cordon", "uncordon")]
    agents = [node for op, node in turns[2::2]]
    assert turns == [("cordon", SERVER), ("uncordon", SERVER)] + [
        (op, node) for node in agents for op in ("cordon", "uncordon")], turns
    assert sorted(agents) == sorted([SLM, DATA])


def test_missing_airgap_artifacts_stop_before_anything_changes(k3s_world: K3sWorld) -> None:
    kw = k3s_world
    (kw.artifacts / "k3s").unlink()
    run = kw.run("k3s.server", "k3s.agents")
    assert run.exit_code == 2
    assert "lacks k3s" in run.error and str(kw.artifacts) in run.error
    assert not (kw.roots[SERVER] / "etc/rancher/k3s/config.yaml").exists()
    assert not kw.token_file.exists()


def test_teardown_uninstalls_agents_then_server(k3s_world: K3sWorld) -> None:
    kw = k3s_world
    assert kw.run("k3s.server", "k3s.agents", policies=WAIT, sleep=time.sleep).exit_code == 0
    refused = kw.run("k3s.agents.remove", "k3s.server.remove")
    assert refused.exit_code == 2 and (kw.roots[SLM] / "usr/local/bin/k3s").exists()
    gone = kw.run("k3s.agents.remove", "k3s.server.remove", flags={"yes": True})
    assert gone.exit_code == 0, failure_text([gone])
    assert [r.step for r in gone.results] == ["k3s.agents.remove", "k3s.agents.remove", "k3s.server.remove"]
    for root in kw.roots.values():
        assert not (root / "usr/local/bin/k3s").exists()
        assert not (root / "etc/rancher/k3s").exists()
        assert root_pids(root) == []


def interrupt_after_upload(monkeypatch: pytest.MonkeyPatch, path: str) -> Callable[[Engine], None]:
    """An engine hook: Ctrl-C right after the upload of `path`, before the step's next command."""
    from lib.remote import Session

    engines: list[Engine] = []
    upload = Session.put

    def put(self: Session, data: Any, remote_path: str, mode: int = 0o600, **owner: str) -> None:
        upload(self, data, remote_path, mode, **owner)
        if remote_path == path and engines:
            engines.pop().interrupt()

    monkeypatch.setattr(Session, "put", put)
    return engines.append


def test_a_run_stopped_between_the_uploads_and_the_installer_installs_next_time(
        k3s_world: K3sWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    # The binary and config.yaml are in place but install.sh never ran: the next run must not take
    # the binary's version for an installed, running k3s.
    kw = k3s_world
    stopped = kw.run("k3s.server", policies=WAIT, sleep=time.sleep,
                     started=interrupt_after_upload(monkeypatch, k3s.INSTALL_SCRIPT))
    assert stopped.exit_code == 130, failure_text([stopped])
    assert (kw.roots[SERVER] / "usr/local/bin/k3s").exists()
    assert not (kw.roots[SERVER] / "run/k3s-standin.pid").exists()  # never started

    again = kw.run("k3s.server", policies=WAIT, sleep=time.sleep)
    assert again.exit_code == 0, failure_text([again])
    assert any("install.sh" in c for c in again.results[0].commands), again.results[0].commands
    assert pid_of(kw.roots[SERVER])


def test_a_run_stopped_between_config_and_restart_restarts_next_time(
        k3s_world: K3sWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    kw = k3s_world
    assert kw.run("k3s.server", policies=WAIT, sleep=time.sleep).exit_code == 0
    before = pid_of(kw.roots[SERVER])
    path = kw.world.hosts / "lab.yaml"
    data = yaml.safe_load(path.read_text())
    data["vms"][0]["k8s"]["taints"].append("extra=yes:NoSchedule")  # config.yaml changes
    path.write_text(yaml.safe_dump(data))
    stopped = kw.run("k3s.server", policies=WAIT, sleep=time.sleep,
                     started=interrupt_after_upload(monkeypatch, k3s.CONFIG))
    assert stopped.exit_code == 130 and pid_of(kw.roots[SERVER]) == before  # new file, old service

    again = kw.run("k3s.server", policies=WAIT, sleep=time.sleep)
    assert again.exit_code == 0, failure_text([again])
    assert pid_of(kw.roots[SERVER]) != before  # restarted to read the new config.yaml


def test_add_ons_stay_pending_with_the_schedulers_reason_when_nothing_tolerates_the_taints(
        k3s_world: K3sWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the resolution (kube-system tolerating the server's taints), the spec's taints leave
    # the packaged add-ons no node: the step must fail and say what the scheduler said.
    kw = k3s_world
    monkeypatch.setattr(k3s, "addon_tolerations", lambda host: ())
    assert kw.run("k3s.server", "k3s.agents", policies=WAIT, sleep=time.sleep).exit_code == 0
    run = kw.run("k3s.taints")  # FAST: the convergence deadline passes on the injected sleep
    assert run.exit_code == 4
    (taints,) = run.results
    rows = {c.name: c.found for c in taints.checks if not c.ok}
    assert rows["kube-system coredns"] == (
        "Pending: 0/3 nodes are available: 1 node(s) had untolerated taint {workload: data}, "
        "1 node(s) had untolerated taint {workload: slm}, 1 node(s) had untolerated taint {workload: tasks}. "
        "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.")
    assert set(rows) == {f"kube-system {w}" for w in ("coredns", "local-path-provisioner", "metrics-server",
                                                        "helm-install-traefik-crd", "helm-install-traefik",
                                                        "traefik")}
    assert "did not converge" in taints.error and f"step k3s.taints on {SERVER}" in failure_text([run])

    monkeypatch.undo()  # the resolution, on the same cluster: the Pending pods are started again
    fixed = kw.run("k3s.server", "k3s.addons", "k3s.taints", policies=WAIT, sleep=time.sleep)
    assert fixed.exit_code == 0, failure_text([fixed])
    assert fixed.results[0].status == "changed"  # config.yaml gained the admission plugin: restarted
    assert [c.split("&& ")[-1] for c in fixed.results[1].commands] == [
        "k3s kubectl delete pods -n kube-system --field-selector=status.phase=Pending"]
    assert all(c.ok for c in fixed.results[-1].checks)


class ReleaseMirror:
    """install.sh and k3s releases over HTTP on 127.0.0.1, laid out as get.k3s.io and GitHub serve them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: list[str] = []
        root.mkdir(parents=True)
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                mirror.paths.append(self.path)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def publish(self, version: str) -> None:
        artifacts = standin_artifacts(self.root / "src" / version, version)
        (self.root / "install.sh").write_bytes((artifacts / "install.sh").read_bytes())
        release = self.root / "download" / version
        release.mkdir(parents=True)
        for name in ("k3s", k3s.IMAGES):
            (release / name).write_bytes((artifacts / name).read_bytes())
        digest = hashlib.sha256((release / "k3s").read_bytes()).hexdigest()
        (release / "sha256sum-amd64.txt").write_text(f"{digest}  k3s\n")


def test_online_install_from_a_mirror_pins_the_version_and_upgrades(k3s_world: K3sWorld, tmp_path: Path) -> None:
    kw = k3s_world
    mirror = ReleaseMirror(tmp_path / "mirror")
    try:
        mirror.publish(V1)
        mirror.publish(V2)  # the newest release is there too: the pin, not "latest", decides
        path = kw.world.hosts / "lab.yaml"
        data = yaml.safe_load(path.read_text())
        data["k3s"] |= {"install": "online", "install_script_url": f"{mirror.url}/install.sh",
                        "download_url": mirror.url, "allow_http_mirror": True}  # a local plain-http mirror
        del data["k3s"]["artifacts_dir"]
        path.write_text(yaml.safe_dump(data))
        steps = ("k3s.server", "k3s.addons", "k3s.agents", "k3s.taints")
        run = kw.run(*steps, policies=WAIT, sleep=time.sleep)
        assert run.exit_code == 0, failure_text([run])
        assert {c.found for c in run.results[-1].checks if c.name.endswith(" version")} == {V1}
        assert mirror.paths.count(f"/download/{V1}/k3s") == 3 and f"/download/{V2}/k3s" not in mirror.paths
        assert mirror.paths.count(f"/download/{V1}/{k3s.IMAGES}") == 3
        assert (kw.roots[DATA] / "var/lib/rancher/k3s/agent/images" / k3s.IMAGES).is_file()

        data["k3s"]["version"] = V2
        path.write_text(yaml.safe_dump(data))
        upgrade = kw.run(*steps, policies=WAIT, sleep=time.sleep)
        assert upgrade.exit_code == 0, failure_text([upgrade])
        assert {c.found for c in upgrade.results[-1].checks if c.name.endswith(" version")} == {V2}
        assert mirror.paths.count(f"/download/{V2}/k3s") == 3
        assert all(c.ok for c in upgrade.results[-1].checks)  # add-ons still available after the upgrade
    finally:
        mirror.server.shutdown()
