"""The k3s stand-in (tests/k3s_standin) tested on its own, over real sshd chroot hosts.

Not product code under test: these tests prove that the stand-in honours the installer's airgap
contract and answers kubectl like a k3s server, so that product tests built on it mean something.
Each "VM" is its own busybox chroot behind its own sshd (tests/harness/chroot.py); everything is
uploaded with SFTP and run over SSH, as the product does with real VMs. The cluster tests share one
module-scoped cluster and run in file order: the uninstall test comes last on purpose.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import paramiko
import pytest
import yaml

from tests.harness.chroot import busybox_root, chroot_host, new_roots_dir, remove_root, root_pids
from tests.harness.k3s_standin import IMAGES_NAME, standin_artifacts, stop_standin
from tests.harness.sshd import SshdFarm, paramiko_client

V1 = "v1.31.4+k3s1"
V2 = "v1.32.0+k3s1"
SERVER, SLM, DATA, INTRUDER = "k3s-server-tasks", "k3s-worker-slm", "k3s-worker-data", "intruder"
SERVER_TAINTS = {("workload", "tasks", "NoSchedule"), ("node-role.kubernetes.io/control-plane", None, "NoSchedule")}
SLM_TAINTS = {("workload", "slm", "NoSchedule")}
REFUSED = "The connection to the server 127.0.0.1:{port} was refused - did you specify the right host or port?"
WAIT_S = 15.0


class Result(NamedTuple):
    rc: int
    out: str
    err: str


@dataclass
class Vm:
    """One chroot host reached over SSH: the root (host side) and a connected client."""

    name: str
    root: Path
    client: paramiko.SSHClient

    def run(self, command: str, *, check: bool = True, **env: str) -> Result:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        _, stdout, stderr = self.client.exec_command(f"{prefix} {command}".strip(), timeout=60)
        out, err = stdout.read().decode(), stderr.read().decode()
        result = Result(stdout.channel.recv_exit_status(), out, err)
        if check and result.rc != 0:
            raise AssertionError(f"{self.name}: {command!r} exited {result.rc}\n{out}\n{err}")
        return result

    def put(self, local: Path, remote: str, mode: int) -> None:
        with self.client.open_sftp() as sftp:
            sftp.put(str(local), remote)
            sftp.chmod(remote, mode)

    def write(self, remote: str, text: str, mode: int) -> None:
        with self.client.open_sftp() as sftp:
            with sftp.open(remote, "w") as f:
                f.write(text)
            sftp.chmod(remote, mode)

    def upload_artifacts(self, artifacts: Path) -> None:
        """The airgap contract: binary at /usr/local/bin/k3s 0755, images where k3s imports them."""
        self.run("mkdir -p /var/lib/rancher/k3s/agent/images /etc/rancher/k3s")
        self.put(artifacts / "k3s", "/usr/local/bin/k3s", 0o755)
        self.put(artifacts / IMAGES_NAME, f"/var/lib/rancher/k3s/agent/images/{IMAGES_NAME}", 0o644)
        self.put(artifacts / "install.sh", "/tmp/install.sh", 0o755)

    def install(self, *, check: bool = True, **env: str) -> Result:
        return self.run("sh /tmp/install.sh", check=check, INSTALL_K3S_SKIP_DOWNLOAD="true", **env)

    def daemon_pid(self) -> int:
        return int((self.root / "run/k3s-standin.pid").read_text())

    def log(self) -> str:
        logs = [self.root / "var/log/k3s.log", self.root / "var/log/k3s-agent.log"]
        return "".join(p.read_text() for p in logs if p.exists())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connect(farm: SshdFarm, name: str, root: Path) -> paramiko.SSHClient:
    client = paramiko_client(chroot_host(farm, name, root))
    transport = client.get_transport()
    assert transport is not None
    transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    return client


@contextlib.contextmanager
def vms(farm: SshdFarm, *names: str) -> Iterator[dict[str, Vm]]:
    """Chroot hosts with their sshds; on the way out, even after a failure: daemons stopped by their
    pid files, anything left inside killed, sshds stopped, roots unmounted and deleted."""
    base = new_roots_dir("k3s-standin-")
    made: dict[str, Vm] = {}
    try:
        for name in names:
            root = busybox_root(base / name, hostname=name)
            made[name] = Vm(name, root, connect(farm, f"standin-{name}", root))
        yield made
    finally:
        for vm in made.values():
            vm.client.close()
            stop_standin(vm.root)
        for name in names:
            if f"standin-{name}" in farm.hosts:
                farm.stop(f"standin-{name}")
        for child in base.iterdir():
            remove_root(child)
        base.rmdir()


def nodes(vm: Vm) -> dict[str, Any]:
    listing = json.loads(vm.run("k3s kubectl get nodes -o json").out)
    assert (listing["apiVersion"], listing["kind"]) == ("v1", "List")
    return {item["metadata"]["name"]: item for item in listing["items"]}


def taints(node: dict[str, Any]) -> set[tuple[str, str | None, str]]:
    return {(t["key"], t.get("value"), t["effect"]) for t in node["spec"].get("taints", [])}


def ready(node: dict[str, Any]) -> str:
    return str(next(c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"))


def wait_for(what: str, probe: Any, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def standin_pids_on_host(roots: list[Path]) -> list[int]:
    """pgrep on the host side for stand-in daemons, kept to those running inside these roots."""
    pattern = r"/usr/local/bin/k3s (server|agent)"
    found = subprocess.run(["pgrep", "-f", pattern], check=False, capture_output=True, text=True)
    ours = {str(r.resolve()) for r in roots}
    pids = []
    for pid in map(int, found.stdout.split()):
        with contextlib.suppress(OSError):
            if str(Path(f"/proc/{pid}/root").readlink()) in ours:
                pids.append(pid)
    return pids


def test_chroot_hosts_confine_sessions_to_a_busybox_root(sshd_farm: SshdFarm, tmp_path: Path) -> None:
    """The harness itself: commands and SFTP land in the root; sshd refuses a root under /tmp."""
    with vms(sshd_farm, "confined") as hosts:
        vm = hosts["confined"]
        vm.write("/tmp/probe", "from sftp\n", 0o600)
        assert (vm.root / "tmp/probe").read_text() == "from sftp\n"
        out = vm.run("cat /etc/hostname /tmp/probe; ls /; readlink /bin/sh; test -e /proc/self || echo no-proc").out
        lines = out.splitlines()
        assert lines[:2] == ["confined", "from sftp"]
        assert "work" not in lines and "/bin/busybox" in lines and lines[-1] == "no-proc"
    unsafe = busybox_root(tmp_path / "unsafe", hostname="unsafe")
    with pytest.raises(RuntimeError, match="component /tmp is uid 0 mode 1777"):
        chroot_host(sshd_farm, "unsafe", unsafe)


@dataclass
class Cluster:
    server: Vm
    slm: Vm
    data: Vm
    intruder: Vm
    port: int
    token: str

    @property
    def all(self) -> list[Vm]:
        return [self.server, self.slm, self.data, self.intruder]


@pytest.fixture(scope="module")
def cluster(sshd_farm: SshdFarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A server and two agents installed from the artifacts, plus an agent with a wrong token."""
    artifacts = standin_artifacts(tmp_path_factory.mktemp("artifacts"), V1)
    port, token = free_port(), secrets.token_hex(16)
    url = f"https://127.0.0.1:{port}"
    with vms(sshd_farm, SERVER, SLM, DATA, INTRUDER) as hosts:
        c = Cluster(hosts[SERVER], hosts[SLM], hosts[DATA], hosts[INTRUDER], port, token)
        for vm in c.all:
            vm.upload_artifacts(artifacts)
        # The server's config as a YAML library writes it (block lists at the key's indentation).
        c.server.write("/etc/rancher/k3s/config.yaml", yaml.safe_dump({
            "token": token, "https-listen-port": port, "bind-address": "127.0.0.1",
            "write-kubeconfig-mode": "0644", "tls-san": ["127.0.0.1"],
            "node-taint": ["workload=tasks:NoSchedule", "node-role.kubernetes.io/control-plane:NoSchedule"]}), 0o600)
        c.server.install(INSTALL_K3S_VERSION=V1)
        # Hand-written configs: quoted scalars, indented block lists, flow lists, comments.
        c.slm.write("/etc/rancher/k3s/config.yaml", (
            f'# slm worker\nserver: "{url}"\ntoken: \'{token}\'\nnode-taint:\n  - "workload=slm:NoSchedule"  # spec\n'
            "node-label:\n  - workload=slm\n"), 0o600)
        c.slm.install(INSTALL_K3S_VERSION=V1, INSTALL_K3S_EXEC="agent")
        # The data worker joins the installer's other way: K3S_URL + K3S_TOKEN in its environment.
        c.data.write("/etc/rancher/k3s/config.yaml", 'node-label: ["workload=data"]\n', 0o600)
        c.data.install(INSTALL_K3S_VERSION=V1, K3S_URL=url, K3S_TOKEN=token)
        c.intruder.write("/etc/rancher/k3s/config.yaml", f"server: {url}\ntoken: {secrets.token_hex(16)}\n", 0o600)
        c.intruder.install(INSTALL_K3S_VERSION=V1, INSTALL_K3S_EXEC="agent")
        wait_for("both agents to register", lambda: {SLM, DATA} <= set(nodes(c.server)))
        yield c


def test_three_nodes_ready_with_their_taints_labels_and_version(cluster: Cluster) -> None:
    found = nodes(cluster.server)
    assert set(found) == {SERVER, SLM, DATA}
    for name, node in found.items():
        assert node["kind"] == "Node" and node["apiVersion"] == "v1"
        assert ready(node) == "True", name
        assert node["status"]["nodeInfo"]["kubeletVersion"] == V1
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == name
    assert taints(found[SERVER]) == SERVER_TAINTS
    assert taints(found[SLM]) == SLM_TAINTS
    assert "taints" not in found[DATA]["spec"]  # kubectl omits an empty list
    cp = "node-role.kubernetes.io/control-plane"
    assert found[SERVER]["metadata"]["labels"][cp] == "true"
    assert cp not in found[SLM]["metadata"]["labels"]
    assert found[SLM]["metadata"]["labels"]["workload"] == "slm"
    assert found[DATA]["metadata"]["labels"]["workload"] == "data"
    # A taint without a value has no "value" key at all, as the API server returns it.
    server_taints = found[SERVER]["spec"]["taints"]
    assert {"key": cp, "effect": "NoSchedule"} in server_taints


def test_install_wrote_what_the_real_installer_writes(cluster: Cluster) -> None:
    root = cluster.server.root
    for link in ("kubectl", "crictl", "ctr"):
        assert (root / "usr/local/bin" / link).readlink() == Path("k3s")
    assert (root / "usr/local/bin/k3s-uninstall.sh").exists()
    assert (cluster.slm.root / "usr/local/bin/k3s-agent-uninstall.sh").exists()
    assert (root / "var/lib/rancher/k3s/server/token").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/rancher/k3s/k3s.yaml").stat().st_mode & 0o777 == 0o644
    kubeconfig = yaml.safe_load((root / "etc/rancher/k3s/k3s.yaml").read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"] == f"https://127.0.0.1:{cluster.port}"
    assert (root / "var/lib/rancher/k3s/server/token").read_text().strip().endswith(f"::server:{cluster.token}")
    # K3S_* from the installer's environment land in the service's env file, 0600, as with systemd.
    env = cluster.data.root / "etc/systemd/system/k3s-agent.service.env"
    assert env.stat().st_mode & 0o777 == 0o600
    assert f"K3S_TOKEN='{cluster.token}'" in env.read_text()
    assert "Imported images from /var/lib/rancher/k3s/agent/images/" in cluster.slm.log()
    version = cluster.server.run("k3s --version").out.splitlines()
    assert version == [f"k3s version {V1} (standin)", "go version go1.22 (k3s stand-in, tests only)"]
    assert cluster.server.run("kubectl get nodes").out.splitlines()[0].split() == \
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]


def test_agent_with_a_wrong_token_never_joins(cluster: Cluster) -> None:
    url = f"https://127.0.0.1:{cluster.port}"
    fatal = f'level=fatal msg="Failed to validate connection to cluster at {url}: token mismatch"'
    wait_for("the intruder's second attempt", lambda: cluster.intruder.log().count(fatal) >= 2, timeout=6)
    assert INTRUDER not in nodes(cluster.server)
    assert f'level=error msg="token mismatch" node="{INTRUDER}"' in cluster.server.log()
    assert cluster.intruder.run("kill -0 $(cat /run/k3s-standin.pid)").rc == 0  # still retrying


def test_a_second_node_with_a_taken_name_is_rejected(cluster: Cluster) -> None:
    """Another machine claiming a registered name (a cloned VM) fails on its node password."""
    url = f"https://127.0.0.1:{cluster.port}"
    clone = f"server: {url}\ntoken: {cluster.token}\nnode-name: {DATA}\n"
    cluster.intruder.write("/etc/rancher/k3s/config.yaml", clone, 0o600)
    cluster.intruder.install(INSTALL_K3S_VERSION=V1, INSTALL_K3S_EXEC="agent", INSTALL_K3S_FORCE_RESTART="true")
    rejected = 'level=error msg="Failed to retrieve agent config: Node password rejected, duplicate hostname'
    wait_for("the clone to be rejected", lambda: rejected in cluster.intruder.log(), timeout=6)
    assert set(nodes(cluster.server)) == {SERVER, SLM, DATA}
    assert nodes(cluster.server)[DATA]["status"]["addresses"][0]["address"] == "127.0.0.1"


def test_a_silent_node_turns_unknown_and_unreachable(cluster: Cluster) -> None:
    """No heartbeat for 40 s: Ready Unknown plus the unreachable taints (a copy of a node, so that no
    agent heartbeat races the test)."""
    state = cluster.server.root / "var/lib/rancher/k3s/server/standin/nodes"
    ghost = state / "ghost"
    shutil.copytree(state / DATA, ghost)
    try:
        (ghost / "heartbeat").write_text(f"{int(time.time()) - 41}\n")
        node = nodes(cluster.server)["ghost"]
        assert ready(node) == "Unknown"
        assert taints(node) == {("node.kubernetes.io/unreachable", None, "NoSchedule"),
                                ("node.kubernetes.io/unreachable", None, "NoExecute")}
        table = cluster.server.run("kubectl get nodes --no-headers").out
        assert [line.split()[1] for line in table.splitlines() if line.startswith("ghost ")] == ["NotReady"]
    finally:
        shutil.rmtree(ghost)


def test_taints_overwrite_and_removal_follow_kubectl(cluster: Cluster) -> None:
    kubectl = cluster.server.run
    clash = kubectl(f"k3s kubectl taint nodes {SLM} workload=other:NoSchedule", check=False)
    assert clash.rc == 1
    assert clash.err.strip() == (f"error: node {SLM} already has workload taint(s) with same effect(s) "
                                 "and --overwrite is false")
    assert kubectl(f"kubectl taint nodes {SLM} workload=other:NoSchedule --overwrite").out == f"node/{SLM} modified\n"
    assert kubectl(f"kubectl taint nodes {SLM} extra=1:NoExecute").out == f"node/{SLM} tainted\n"
    assert taints(nodes(cluster.server)[SLM]) == {("workload", "other", "NoSchedule"), ("extra", "1", "NoExecute")}
    assert kubectl(f"kubectl taint nodes {SLM} extra:NoExecute-").out == f"node/{SLM} untainted\n"
    missing = kubectl(f"kubectl taint nodes {SLM} extra:NoExecute-", check=False)
    assert (missing.rc, missing.err) == (1, 'error: taint "extra:NoExecute" not found\n')
    assert kubectl(f"kubectl taint nodes {SLM} workload-").out == f"node/{SLM} untainted\n"
    assert "taints" not in nodes(cluster.server)[SLM]["spec"]
    assert kubectl(f"kubectl taint nodes {SLM} workload=slm:NoSchedule").out == f"node/{SLM} tainted\n"
    assert taints(nodes(cluster.server)[SLM]) == SLM_TAINTS
    unknown = kubectl("kubectl taint nodes nope a=b:NoSchedule", check=False)
    assert (unknown.rc, unknown.err) == (1, 'Error from server (NotFound): nodes "nope" not found\n')
    single = json.loads(kubectl(f"kubectl get node {SLM} -o json").out)
    assert (single["kind"], single["metadata"]["name"]) == ("Node", SLM)


def test_kubectl_where_there_is_no_api(cluster: Cluster) -> None:
    on_agent = cluster.slm.run("kubectl get nodes", check=False)
    assert on_agent.rc == 1
    assert on_agent.err == REFUSED.replace("127.0.0.1:{port}", "localhost:8080") + "\n"


def test_reinstall_without_change_keeps_the_daemon(cluster: Cluster) -> None:
    before = {vm.name: vm.daemon_pid() for vm in (cluster.server, cluster.slm, cluster.data)}
    again = cluster.server.install(INSTALL_K3S_VERSION=V1)
    assert "[INFO]  No change detected so skipping service start" in again.out
    assert "No change detected" in cluster.slm.install(INSTALL_K3S_VERSION=V1, INSTALL_K3S_EXEC="agent").out
    url = f"https://127.0.0.1:{cluster.port}"
    data_again = cluster.data.install(INSTALL_K3S_VERSION=V1, K3S_URL=url, K3S_TOKEN=cluster.token)
    assert "No change detected" in data_again.out
    assert {vm.name: vm.daemon_pid() for vm in (cluster.server, cluster.slm, cluster.data)} == before
    # Taints apply at registration only: a restarted agent with other taints keeps the node's own.
    cluster.slm.write("/etc/rancher/k3s/config.yaml", (
        f"server: {url}\ntoken: {cluster.token}\nnode-taint:\n- workload=changed:NoExecute\n"), 0o600)
    restarted = cluster.slm.install(INSTALL_K3S_VERSION=V1, INSTALL_K3S_EXEC="agent", INSTALL_K3S_FORCE_RESTART="true")
    assert "No change detected" not in restarted.out
    assert cluster.slm.daemon_pid() != before[SLM]
    registered = 'msg="Successfully registered node"'
    wait_for("the restarted agent to register", lambda: cluster.slm.log().count(registered) >= 2)
    assert taints(nodes(cluster.server)[SLM]) == SLM_TAINTS


def test_installer_refuses_download_and_version_mismatch(cluster: Cluster) -> None:
    pid = cluster.server.daemon_pid()
    # Online, from a release mirror that does not answer (never the real GitHub from a test).
    online = cluster.server.run("sh /tmp/install.sh", check=False, INSTALL_K3S_VERSION=V1,
                                GITHUB_URL=f"http://127.0.0.1:{free_port()}")
    assert online.rc == 1
    assert online.err.strip().endswith("[ERROR]  Download failed")
    assert "[INFO]  Downloading hash http://127.0.0.1:" in online.out
    mismatch = cluster.server.install(check=False, INSTALL_K3S_VERSION=V2)
    assert mismatch.rc == 1
    assert "[ERROR]" in mismatch.err and "version mismatch" in mismatch.err
    assert cluster.server.daemon_pid() == pid


def pods(vm: Vm) -> dict[str, dict[str, Any]]:
    """kube-system's pods by controller (the ReplicaSet's Deployment, or the Job)."""
    out: dict[str, dict[str, Any]] = {}
    for pod in json.loads(vm.run("k3s kubectl get pods -A -o json").out)["items"]:
        ref = pod["metadata"]["ownerReferences"][0]
        out[ref["name"].rsplit("-", 1)[0] if ref["kind"] == "ReplicaSet" else ref["name"]] = pod
    return out


def test_add_on_pods_follow_taints_and_tolerations(cluster: Cluster) -> None:
    server = cluster.server
    # The data worker is the only node without a custom taint: k3s's add-ons run there.
    found = pods(server)
    assert set(found) == {"coredns", "local-path-provisioner", "metrics-server", "helm-install-traefik-crd",
                          "helm-install-traefik", "traefik"}
    assert {p["spec"].get("nodeName") for p in found.values()} == {DATA}
    assert found["helm-install-traefik"]["status"]["phase"] == "Succeeded"
    coredns = found["coredns"]
    assert coredns["status"]["phase"] == "Running" and coredns["metadata"]["namespace"] == "kube-system"
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in coredns["spec"]["tolerations"]

    # A NoSchedule taint evicts nothing; a pod created afterwards finds no node.
    server.run(f"k3s kubectl taint nodes {DATA} workload=data:NoSchedule")
    assert pods(server)["coredns"]["spec"]["nodeName"] == DATA
    deleted = server.run(f"k3s kubectl delete pod {coredns['metadata']['name']} -n kube-system").out
    assert deleted == f'pod "{coredns["metadata"]["name"]}" deleted\n'
    again = pods(server)["coredns"]
    assert again["metadata"]["name"] != coredns["metadata"]["name"] and "nodeName" not in again["spec"]
    (condition,) = again["status"]["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("PodScheduled", "False", "Unschedulable")
    assert condition["message"] == (
        "0/3 nodes are available: 1 node(s) had untolerated taint {workload: data}, 1 node(s) had untolerated "
        "taint {workload: slm}, 1 node(s) had untolerated taint {workload: tasks}. preemption: 0/3 nodes are "
        "available: 3 Preemption is not helpful for scheduling.")

    # kube-system's default tolerations do nothing without the PodTolerationRestriction plugin.
    annotation = ('scheduler.alpha.kubernetes.io/defaultTolerations=[{"effect":"NoSchedule","key":"workload",'
                  '"operator":"Equal","value":"data"}]')
    assert server.run(f"k3s kubectl annotate namespace kube-system '{annotation}'").out == \
        "namespace/kube-system annotated\n"
    namespace = json.loads(server.run("k3s kubectl get namespace kube-system -o json").out)
    assert namespace["metadata"]["annotations"] == {annotation.split("=", 1)[0]: annotation.split("=", 1)[1]}
    refused = server.run(f"k3s kubectl annotate namespace kube-system '{annotation.replace('data', 'slm')}'",
                         check=False)
    assert refused.rc == 1 and "--overwrite is false" in refused.err
    server.run("k3s kubectl delete pods -n kube-system --field-selector=status.phase=Pending")
    assert "nodeName" not in pods(server)["coredns"]["spec"]

    server.run(f"k3s kubectl taint nodes {DATA} workload:NoSchedule-")
    assert pods(server)["coredns"]["spec"]["nodeName"] == DATA  # scheduled as soon as a node fits


def test_uninstall_removes_everything_and_stops_the_daemons(cluster: Cluster) -> None:
    roots = [vm.root for vm in cluster.all]
    assert len(standin_pids_on_host(roots)) == 4
    cluster.server.run("/usr/local/bin/k3s-uninstall.sh")
    for vm in (cluster.slm, cluster.data, cluster.intruder):
        vm.run("/usr/local/bin/k3s-agent-uninstall.sh")
    for vm in cluster.all:
        bin_dir = vm.root / "usr/local/bin"
        assert sorted(p.name for p in bin_dir.iterdir()) == [], vm.name
        for gone in ("etc/rancher/k3s", "var/lib/rancher/k3s", "run/k3s-standin.pid", "run/k3s-standin-agent.post"):
            assert not (vm.root / gone).exists(), f"{vm.name}: {gone}"
        assert list((vm.root / "etc/systemd/system").iterdir()) == [], vm.name
        wait_for(f"nothing left running in {vm.name}", lambda vm=vm: not root_pids(vm.root), timeout=5)
    assert standin_pids_on_host(roots) == []


@pytest.fixture
def slow_server(sshd_farm: SshdFarm, tmp_path: Path) -> Iterator[Vm]:
    with vms(sshd_farm, "slow-api") as hosts:
        yield hosts["slow-api"]


def test_ready_after_knob_refuses_the_api_then_answers(slow_server: Vm, tmp_path: Path) -> None:
    port = free_port()
    slow_server.upload_artifacts(standin_artifacts(tmp_path / "artifacts", V2))
    slow_server.write("/etc/rancher/k3s/config.yaml", f"https-listen-port: {port}\nbind-address: 127.0.0.1\n", 0o600)
    slow_server.write("/etc/rancher/k3s/standin-ready-after", "2\n", 0o644)
    started = time.monotonic()
    slow_server.install(INSTALL_K3S_VERSION=V2)
    early = slow_server.run("k3s kubectl get nodes -o json", check=False)
    assert (early.rc, early.err) == (1, REFUSED.format(port=port) + "\n")
    found = wait_for("the API", lambda: slow_server.run("kubectl get nodes -o json", check=False).rc == 0)
    assert found and time.monotonic() - started >= 1.5
    node = nodes(slow_server)["slow-api"]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == V2
    assert ready(node) == "True" and "taints" not in node["spec"]
