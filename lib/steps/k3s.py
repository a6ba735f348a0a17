"""k3s.server, k3s.addons, k3s.agents, k3s.taints, and their teardown: inside the VMs, over each VM's own SSH.

Idempotent by evidence: the installed version (`k3s --version`) and the sha256 of config.yaml.
Same version and config: nothing runs, no restart. A version change upgrades (server step first
in the runbook, then agents one at a time). The token only travels inside config.yaml's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from lib import daytwo, k3s
from lib.errors import ToolError
from lib.facts.sysfs import section, split_sections
from lib.inventory.load import LoadedHost
from lib.inventory.model import VM, Host
from lib.options import HostInputs
from lib.reads import Answers, Ask, Reads, Unreached
from lib.results import Check
from lib.shell import MASK, Command, FileBody, Secret, mask, seq, sh
from lib.steps.base import Action, Mode, OnPeer, Plan, Step, StepMismatch, Target, Upload
from lib.token import cluster_token


class ArtifactsError(ToolError):
    exit_code = 2


def k3s_inputs(loaded: LoadedHost, mode: Mode) -> HostInputs:
    """The cluster token (created only by a run that changes hosts) and the checked airgap folder."""
    settings = loaded.host.k3s
    if not any(vm.k8s for vm in loaded.host.vms):
        return HostInputs()
    artifacts = None
    if settings.install == "airgap" and mode != "verify":  # checked first: a refused run creates nothing
        folder = Path(settings.artifacts_dir or "").expanduser()
        missing = [name for name in k3s.ARTIFACTS if not (folder / name).is_file()]
        if not settings.artifacts_dir or missing:
            raise ArtifactsError(
                f"{loaded.name}: k3s.install is airgap but the artifacts folder {settings.artifacts_dir or '(unset)'} "
                f"lacks {', '.join(missing or k3s.ARTIFACTS)}; put the files of k3s {settings.version} there "
                "(install.sh from get.k3s.io, the k3s binary, k3s-airgap-images-amd64.tar.zst)")
        artifacts = folder
    return HostInputs(k3s_token=cluster_token(settings.token_file, loaded.name, create=mode == "apply"),
                      k3s_artifacts=artifacts)


@dataclass(frozen=True)
class NodeFacts:
    version: str
    config_sha: str
    config_mode: str
    last_error: str
    nodes: dict[str, k3s.Node] | None  # as the server sees them; None: the API did not answer
    api_error: str = ""
    started: tuple[str, str] = ("", "")  # version and config.yaml digest the service was last started with
    drained: frozenset[str] = frozenset()  # nodes cordoned by numa-k3s (daytwo.ANNOTATION), e.g. for an upgrade
    config_body: str | None = None  # the host's config.yaml, its token values *** (None: no file there)


def nodes_section() -> str:
    return f"{section('nodes')}; k3s kubectl get nodes -o json 2>&1 || true"


def _pods_section() -> str:
    return f"{section('pods')}; k3s kubectl get pods -n kube-system -o json 2>&1 || true"


def _kube_system_section() -> str:
    return f"{section('namespace')}; k3s kubectl get namespace kube-system -o json 2>&1 || true"


def parse_pods_output(text: str) -> list[k3s.Pod] | None:
    try:
        return k3s.parse_pods(text)
    except (ValueError, AttributeError, TypeError):
        return None


def node_facts_command(svc: str, with_nodes: bool) -> Command:
    # Composed (shell.seq), not formatted: the shell's own braces need no doubling.
    logs = (f"{{ journalctl -u {svc} -n 50 --no-pager 2>/dev/null; tail -n 50 /var/log/{svc}.log 2>/dev/null; }} "
            "| grep -E 'level=(error|fatal)' | tail -n 1")
    parts = [f"{section('version')}; k3s --version 2>/dev/null | head -n 1",
             f"{section('config')}; sha256sum {k3s.CONFIG} 2>/dev/null | cut -d' ' -f1; "
             f"stat -c %a {k3s.CONFIG} 2>/dev/null",
             f"{section('errors')}; {logs}",
             f"{section('started')}; cat {k3s.STARTED} 2>/dev/null",
             # For the plan's diff. Token values are masked on the host, so they never leave it,
             # known to this run or not.
             f"if [ -e {k3s.CONFIG} ]; then {section('config_body')}; "
             f"sed -E 's/^([[:space:]]*(agent-)?token:).*/\\1 {MASK}/' {k3s.CONFIG}; fi"]
    if with_nodes:
        parts.append(nodes_section())
    return seq(*parts, "true", sudo=True, timeout=60, why="k3s version, config digest, node state")


def drained_nodes(text: str) -> frozenset[str]:
    return frozenset(n.name for n in (daytwo.parse_node_states(text) or {}).values() if n.drained_for)


def parse_nodes_output(text: str) -> tuple[dict[str, k3s.Node] | None, str]:
    try:
        return k3s.parse_nodes(text), ""
    except (ValueError, KeyError, TypeError):
        return None, (text.strip().splitlines() or ["no answer"])[-1]


def parse_node_facts(stdout: str) -> NodeFacts:
    parts = split_sections(stdout)
    config = parts.get("config", "").split()
    nodes, api_error = parse_nodes_output(parts["nodes"]) if "nodes" in parts else (None, "")
    started = [*parts.get("started", "").split(), "", ""][:2]
    return NodeFacts(k3s.parse_version(parts.get("version", "")), config[0] if config else "",
                     config[1] if len(config) > 1 else "", parts.get("errors", "").strip(), nodes, api_error,
                     (started[0], started[1]), drained_nodes(parts.get("nodes", "")), parts.get("config_body"))


def _token(target: Target) -> Secret | None:
    return target.inputs.k3s_token


_NOT_YET = "numa-k3s-token-generated-at-apply-time"


def plan_node(target: Target, facts: NodeFacts | None) -> Plan:
    assert target.vm is not None and target.vm.k8s is not None
    vm, host = target.vm, target.loaded.host
    version, role = host.k3s.version, target.vm.k8s.role
    token = _token(target)
    actions: list[Action] = []
    if token is None:  # plan modes before the first apply: the token does not exist yet
        config_changed = True
        # The body as it will be, with the token that does not exist yet shown as *** (as any token).
        body = k3s.node_config(host, vm, Secret(_NOT_YET)).decode().replace(_NOT_YET, MASK)
        actions.append(Upload(k3s.CONFIG, b"", 0o600, what="config.yaml with a newly generated cluster token",
                              shows=(FileBody(k3s.CONFIG, body, None, 0o600),)))
    else:
        config = k3s.node_config(host, vm, token)
        want = k3s.digest(config)
        if facts is None or facts.config_sha != want or facts.config_mode != "600":
            shown = mask(config.decode())  # plans show the body, never the token (names stay whole)
            before = facts.config_body if facts else None  # online: a diff against the host's file
            actions.append(Upload(k3s.CONFIG, config, 0o600, what="config.yaml (token ***)",
                                  why="node-name, taints, labels, server and token",
                                  shows=(FileBody(k3s.CONFIG, shown, before, 0o600),)))
        # What the service runs with, not only what is on disk: a run stopped after writing
        # config.yaml but before the restart left the new file and the old service.
        config_changed = facts is None or facts.started[1] != want or bool(actions)
    # Installed: the binary's version, once our install command has recorded that install.sh ran.
    installed = facts.version if facts and facts.started[0] == facts.version else ""
    if installed != version:
        folder = target.inputs.k3s_artifacts
        if host.k3s.install == "airgap" and folder is not None:
            actions += [
                Upload(k3s.BINARY, b"", 0o755, source=folder / "k3s", what=f"k3s {version} binary"),
                Upload(f"{k3s.IMAGES_DIR}/{k3s.IMAGES}", b"", 0o644, source=folder / k3s.IMAGES,
                       what=f"k3s {version} airgap images"),
                Upload(k3s.INSTALL_SCRIPT, b"", 0o755, source=folder / "install.sh", what="install.sh"),
            ]
        actions.append(k3s.install_command(host, vm))
    elif config_changed:
        actions.append(k3s.restart_command(host, vm))
    marked = facts is not None and vm.name in facts.drained
    if not actions and marked:  # stopped after the upgrade, before the uncordon: finish it
        return Plan((OnPeer(daytwo.uncordon_command(vm.name)),), f"uncordon {vm.name} (cordoned by numa-k3s)")
    if not actions:
        return Plan(reason=f"k3s {version} ({role}) installed with the same config.yaml: no reinstall, no restart")
    if installed and installed != version:
        # The same path as a VM restart: drain, upgrade, uncordon (the converge waits for Ready).
        if facts is not None and facts.nodes is not None and vm.name in facts.nodes:
            drain = daytwo.drain_command(vm.name, target.flags.drain_timeout or daytwo.DRAIN_TIMEOUT_S)
            actions = [OnPeer(daytwo.mark_command(vm.name, f"k3s upgrade {installed} -> {version}")), OnPeer(drain),
                       *actions, OnPeer(daytwo.uncordon_command(vm.name))]
        return Plan(tuple(actions), f"upgrade k3s {installed} -> {version} ({role}; the server before the agents, "
                                    "one node at a time: drain, upgrade, uncordon)", exclusive=True)
    if marked:
        actions.append(OnPeer(daytwo.uncordon_command(vm.name)))
    if installed:
        return Plan(tuple(actions), f"config.yaml differs: write it and restart {k3s.service(vm)}")
    return Plan(tuple(actions), f"install k3s {version} as {role} ({host.k3s.install})",
                tuple(f"fetched over plain http (k3s.allow_http_mirror): {url}" for url in k3s.plain_http_urls(host)))


def node_checks(target: Target, facts: NodeFacts, nodes: dict[str, k3s.Node] | None, api_error: str) -> list[Check]:
    assert target.vm is not None
    vm, version = target.vm, target.loaded.host.k3s.version
    token = _token(target)
    checks = [Check("k3s version", version, facts.version or "not installed", facts.version == version)]
    if token is None:
        checks.append(Check.warn("config.yaml", "as rendered", "not compared: no local cluster token"))
    else:
        same = facts.config_sha == k3s.digest(k3s.node_config(target.loaded.host, vm, token))
        checks.append(Check("config.yaml", "as rendered", "as rendered" if same else
                            ("missing" if not facts.config_sha else "differs"), same))
    checks.append(Check("config.yaml mode", "600", facts.config_mode or "missing", facts.config_mode == "600"))
    if nodes is None:
        checks.append(Check(f"node {vm.name} on the server", "Ready", f"API: {api_error or 'no answer'}", False))
    else:
        node = nodes.get(vm.name)
        found = "not registered" if node is None else ("Ready" if node.ready else "NotReady")
        checks.append(Check(f"node {vm.name} on the server", "Ready", found, found == "Ready"))
    if facts.last_error and not any(c.ok for c in checks[-1:]):
        checks.append(Check(f"{k3s.service(vm)} log", "no errors", facts.last_error[-200:], False))
    return checks


class _K3sNode(Step[NodeFacts]):
    """One k3s node per target: the server and the agents differ in their service and in who sees the node."""

    converge = True
    service = "k3s"

    def host_inputs(self, loaded: LoadedHost, mode: Mode) -> HostInputs:
        return k3s_inputs(loaded, mode)

    def facts_command(self, target: Target) -> Command:
        return node_facts_command(self.service, with_nodes=self.service == "k3s")

    def parse(self, target: Target, answers: Answers) -> NodeFacts:
        return parse_node_facts(answers.stdout())

    def plan(self, target: Target, facts: NodeFacts | None) -> Plan:
        return plan_node(target, facts)

    def verify(self, target: Target, facts: NodeFacts) -> list[Check]:
        return node_checks(target, facts, facts.nodes, facts.api_error)


class K3sServer(_K3sNode):
    name = "k3s.server"
    summary = ("config.yaml (0600) + k3s server at the pinned version (online or airgap); wait for the API and Ready; "
               "with k3s.addon_node set, the PodTolerationRestriction admission plugin")
    targets = "server"


class K3sAgents(_K3sNode):
    name = "k3s.agents"
    summary = "config.yaml (server URL, token, taints) + k3s agent on every agent VM in parallel; each node Ready"
    targets = "agents"
    service = "k3s-agent"

    def reads(self, target: Target, got: Answers) -> Reads:
        if target.peer is None:
            return super().reads(target, got)
        # The node must show up on the server, so ask the server too (a session the run lends).
        # One read serves every agent (Command.shared): they would all ask the server at once.
        nodes = replace(sh(nodes_section(), sudo=True, timeout=60, why="nodes as the server sees them"), shared=True)
        return (*super().reads(target, got), Ask("server", target.peer, nodes))

    def parse(self, target: Target, answers: Answers) -> NodeFacts:
        facts = super().parse(target, answers)
        if "server" not in answers:
            return facts
        server = answers.peer("server")
        if isinstance(server, Unreached):
            return replace(facts, nodes=None, api_error=server.why, drained=frozenset())
        text = split_sections(server.stdout).get("nodes", "")
        nodes, error = parse_nodes_output(text)
        return replace(facts, nodes=nodes, api_error=error, drained=drained_nodes(text))


# -- add-ons: kube-system tolerates k3s.addon_node's taints ----------------------------------------

@dataclass(frozen=True)
class KubeSystemFacts:
    tolerations: tuple[k3s.Toleration, ...] | None  # None: the API did not answer
    pods: list[k3s.Pod] | None
    error: str


class K3sAddons(Step[KubeSystemFacts]):
    """The API half of the add-on resolution (k3s.server writes the admission plugin into config.yaml).

    A step of its own, right after k3s.server: it needs the API, which k3s.server's convergence
    waits for, and PodTolerationRestriction applies the annotation only to pods created after it.
    """

    name = "k3s.addons"
    summary = ("kube-system's default tolerations = k3s.addon_node's taints (PodTolerationRestriction); "
               "its Pending pods created before them started again")
    targets = "server"
    converge = True

    def facts_command(self, target: Target) -> Command:
        return sh(f"{_kube_system_section()}; {_pods_section()}", sudo=True, timeout=60,
                  why="kube-system's default tolerations and pods")

    def parse(self, target: Target, answers: Answers) -> KubeSystemFacts:
        parts = split_sections(answers.stdout())
        text = parts.get("namespace", "")
        return KubeSystemFacts(k3s.parse_namespace_tolerations(text), parse_pods_output(parts.get("pods", "")),
                               (text.strip().splitlines() or ["no answer"])[-1])

    def plan(self, target: Target, facts: KubeSystemFacts | None) -> Plan:
        wanted = k3s.addon_tolerations(target.loaded.host)
        if not wanted:
            return Plan(reason="k3s.addon_node unset or its taints tolerated as k3s ships: kube-system left as is")
        if facts is None:
            return Plan(reason="offline: kube-system is compared with the cluster when it answers")
        if facts.tolerations is None or facts.pods is None:  # a plan before k3s.server installed the cluster
            command = k3s.annotate_command(wanted)
            return Plan((command,), f"the k3s API does not answer yet ({facts.error}): {command.why}")
        if facts.tolerations != tuple(sorted(wanted)):
            command = k3s.annotate_command(wanted)
        elif k3s.stale_pending(facts.pods, wanted):
            command = k3s.restart_pending_command()
        else:
            return Plan(reason="kube-system tolerates k3s.addon_node's taints; no pod created before that")
        return Plan((command,), command.why)

    def verify(self, target: Target, facts: KubeSystemFacts) -> list[Check]:
        wanted = k3s.addon_tolerations(target.loaded.host)
        if not wanted:
            return []
        want = k3s.tolerations_annotation(sorted(wanted))
        found = f"API: {facts.error}" if facts.tolerations is None else k3s.tolerations_annotation(facts.tolerations)
        checks = [Check("kube-system default tolerations", want, found, found == want)]
        if facts.pods is not None:
            stale = k3s.stale_pending(facts.pods, wanted)
            checks.append(Check("kube-system Pending pods without them", "none",
                                ", ".join(p.name for p in stale) or "none", not stale))
        return checks


# -- taints ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterFacts:
    nodes: dict[str, k3s.Node] | None
    error: str
    pods: list[k3s.Pod] | None = None  # kube-system's; None: no answer


def addon_checks(host: Host, pods: list[k3s.Pod] | None) -> list[Check]:
    """Each enabled add-on's workloads available; a Pending pod shows the scheduler's reason."""
    if pods is None:
        return [Check("kube-system pods", "listed", "API: no answer", False)]
    return [Check(f"kube-system {name}", "Completed" if name.startswith("helm-install") else "Running", found, ok)
            for name, ok, found in k3s.addon_rows(host, pods)]


def fit_check(vm: VM, node: k3s.Node, managed: frozenset[str]) -> Check:
    """A pod that tolerates the node's inventory taints would schedule there: the taints the node
    really carries (someone else's, unreachable) and its readiness decide, as for the scheduler.
    Another operator's taint (kept on purpose, see taint_commands) is an accepted difference."""
    tolerating = [k3s.Toleration(t.key, "Equal", t.value, t.effect) for t in k3s.wanted_taints(vm)]
    blocking = k3s.untolerated(sorted(node.taints), tolerating)
    name = f"{vm.name} takes a pod tolerating {k3s.shown_taints(k3s.wanted_taints(vm))}"
    if node.ready and not blocking:
        return Check(name, "yes", "yes", True)
    found = ("no: untolerated taint " + ", ".join(f"{{{t.key}: {t.value}}}" for t in blocking)) if blocking else \
        "no: NotReady"
    if node.ready and all(t.key not in managed and not t.key.startswith("node.kubernetes.io/") for t in blocking):
        return Check.warn(name, "yes", found + " (not a taint this tool manages)")
    return Check(name, "yes", found, False)


class K3sTaints(Step[ClusterFacts]):
    name = "k3s.taints"
    summary = ("reconcile every node's taints to the inventory (kubectl taint --overwrite, stale ones removed); "
               "each node takes pods tolerating its taints; the packaged add-ons available")
    targets = "server"
    converge = True

    def facts_command(self, target: Target) -> Command:
        return sh(f"{nodes_section()}; {_pods_section()}", sudo=True, timeout=60,
                  why="every node's taints, readiness, version; the kube-system pods")

    def parse(self, target: Target, answers: Answers) -> ClusterFacts:
        parts = split_sections(answers.stdout())
        nodes, error = parse_nodes_output(parts.get("nodes", ""))
        return ClusterFacts(nodes, error, parse_pods_output(parts.get("pods", "")))

    def plan(self, target: Target, facts: ClusterFacts | None) -> Plan:
        host = target.loaded.host
        vms = [vm for vm in host.vms if vm.k8s]
        if facts is None:
            return Plan(reason="offline: taints are compared with the cluster when it answers")
        if facts.nodes is None:
            raise StepMismatch([Check("k3s API", "answers", facts.error, False)], exit_code=4,
                               message=f"the k3s API on {target.name} did not answer: {facts.error}")
        missing = [vm.name for vm in vms if vm.name not in facts.nodes]
        if missing:
            raise StepMismatch([Check(f"node {n}", "registered", "not registered", False) for n in missing],
                               exit_code=4, message=f"nodes not in the cluster: {', '.join(missing)}; run: "
                                                    f"invoke step k3s.agents --host={target.loaded.name}")
        managed = k3s.managed_keys(host)
        commands = [c for vm in vms for c in k3s.taint_commands(vm, facts.nodes[vm.name], managed)]
        if not commands:
            return Plan(reason="every node's taints are exactly the inventory's")
        return Plan(tuple(commands), "; ".join(c.why for c in commands))

    def verify(self, target: Target, facts: ClusterFacts) -> list[Check]:
        host = target.loaded.host
        if facts.nodes is None:
            return [Check("k3s API", "answers", facts.error or "no answer", False)]
        managed = k3s.managed_keys(host)
        checks: list[Check] = []
        for vm in (vm for vm in host.vms if vm.k8s):
            assert vm.k8s is not None
            node = facts.nodes.get(vm.name)
            if node is None:
                checks.append(Check(f"{vm.name}", "registered", "not registered", False))
                continue
            role = "control-plane" if vm.k8s.role == "server" else "agent"
            found_role = "control-plane" if "control-plane" in node.roles else "agent"
            ready, taints = ready_and_taints(vm, node, managed)
            checks += [
                ready,
                Check(f"{vm.name} role", role, found_role, role == found_role),
                taints,
                Check(f"{vm.name} version", host.k3s.version, node.version, node.version == host.k3s.version),
                fit_check(vm, node, managed),
            ]
        return checks + addon_checks(host, facts.pods)


def ready_and_taints(vm: VM, node: k3s.Node, managed: frozenset[str]) -> tuple[Check, Check]:
    """The node's Ready row and its taints row (the taints under the keys this tool manages)."""
    want = k3s.wanted_taints(vm)
    have = frozenset(t for t in node.taints if t.key in managed)
    return (Check(f"{vm.name} Ready", "True", str(node.ready), node.ready),
            Check(f"{vm.name} taints", k3s.shown_taints(want), k3s.shown_taints(have), want == have))


# -- teardown --------------------------------------------------------------------------------------

class _K3sRemove(Step[str]):
    destructive = True
    script = ""

    def facts_command(self, target: Target) -> Command:
        return sh("if [ -x /usr/local/bin/{s} ]; then echo installed; else echo absent; fi", s=self.script,
                  sudo=True, why="is k3s installed")

    def parse(self, target: Target, answers: Answers) -> str:
        return answers.stdout().strip() or "absent"

    def plan(self, target: Target, facts: str | None) -> Plan:
        if facts == "absent":
            return Plan(reason=f"k3s is not installed on {target.name}")
        return Plan((sh("/usr/local/bin/{s} && rm -f {started}", s=self.script, started=k3s.STARTED, sudo=True,
                        timeout=300, why=f"uninstall k3s from {target.name}"),), f"run {self.script} on {target.name}")

    def verify(self, target: Target, facts: str) -> list[Check]:
        return [Check(f"{self.script} on {target.name}", "absent", facts, facts == "absent")]


class K3sAgentsRemove(_K3sRemove):
    name = "k3s.agents.remove"
    summary = "k3s-agent-uninstall.sh on every agent (before the server) (--yes)"
    targets = "agents"
    script = "k3s-agent-uninstall.sh"


class K3sServerRemove(_K3sRemove):
    name = "k3s.server.remove"
    summary = "k3s-uninstall.sh on the server, after the agents (--yes)"
    targets = "server"
    script = "k3s-uninstall.sh"

