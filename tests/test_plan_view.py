"""`invoke plan` shows what it writes: every file's body (secrets ***), a unified diff against the host
online, long commands cut with the pins as a table, per-step streaming and a summary line; and it takes
provision's selection flags. Through the real CLI, online against a real sshd host and its sysroot.
"""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from lib import k3s
from lib.cloudinit import seed_files
from lib.inventory.load import load_inventory
from lib.steps.tuning import sysctl_content, tmpfiles_content
from tests.harness.sysfs import HostShape
from tests.inventory_helpers import HOSTS
from tests.test_cli_runbooks import Cli, cli  # noqa: F401  (the fixture)

TOKEN = "4f1d0c0ffee5ecret5ecret5ecret5ecret0000000000000000000000000000"  # noqa: S105 (a test value)


def body(out: str, path: str) -> str:
    """The lines printed under `path` (mode):` as `  | line`, joined: the file as the plan shows it."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{path}") and line.endswith(":"))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip().startswith("|"):
            break
        rows.append(line.split("| ", 1)[1] if "| " in line else "")
    return "\n".join(rows) + "\n"


def hv1_cli(cli: Cli, token: str | None = None) -> Cli:  # noqa: F811
    """The repository's hv1 (four VMs, four taints) copied into the test's hosts dir."""
    cli.hosts.mkdir(parents=True, exist_ok=True)
    (cli.hosts / "defaults.yaml").write_text((HOSTS / "defaults.yaml").read_text())
    data = yaml.safe_load((HOSTS / "hv1.yaml").read_text())
    if token is not None:
        token_file = cli.tmp / "hv1.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        data["k3s"] = {**data.get("k3s", {}), "token_file": str(token_file)}
    (cli.hosts / "hv1.yaml").write_text(yaml.safe_dump(data))
    return cli


def test_offline_plan_of_hv1_shows_every_body_with_its_four_taints_and_never_the_token(cli: Cli) -> None:  # noqa: F811
    hv1_cli(cli, token=TOKEN)
    out = cli("plan", "--host=hv1", "--offline")
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    loaded = load_inventory(cli.hosts, ["hv1"]).hosts["hv1"]
    # config.yaml per node: each VM's taint is in the plan (hv1's spec has four).
    taints = re.findall(r"^\s+\|\s+- (\S+:(?:NoSchedule|PreferNoSchedule|NoExecute))$", out.stdout, re.M)
    assert sorted(taints) == sorted(t for vm in loaded.host.vms for t in (vm.k8s.taints if vm.k8s else ()))
    assert sum(t.startswith("workload=") for t in taints) == 4  # the spec's four workload taints
    assert out.stdout.count("| token: ***") == 4  # every node's config, its token masked
    # Not the token, anywhere: terminal, journal, report, log.
    assert TOKEN not in text
    for record in (cli.runs / "hv1").rglob("*"):
        if record.is_file():
            assert TOKEN not in record.read_text(errors="replace"), record
    # host.tune's two files, exactly as the step renders them.
    assert body(out.stdout, "/etc/sysctl.d/90-numa-k3s.conf") == sysctl_content(loaded.host)
    assert body(out.stdout, "/etc/tmpfiles.d/numa-k3s.conf") == tmpfiles_content(loaded.host)
    # The seed's three files per VM, as the ISO will carry them; user-data passes cloud-init's schema.
    for vm in loaded.host.vms:
        for name, content in seed_files(vm).items():
            assert body(out.stdout, f"{vm.cloud_init_iso_path}:{name}") == content, (vm.name, name)
    user_data = cli.tmp / "user-data"
    user_data.write_text(body(out.stdout, f"{loaded.host.vms[0].cloud_init_iso_path}:user-data"))
    schema = subprocess.run(["cloud-init", "schema", "--config-file", str(user_data)], capture_output=True, text=True,
                            check=False, timeout=120)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    # virt-install's 1 KB line: cut, with its pins as a table; the journal holds it whole.
    define = next(line for line in out.stdout.splitlines() if "virt-install" in line and "k3s-worker-slm " in line)
    assert "characters; the whole command is in the run's journal.jsonl" in define and len(define) < 400
    slm = next(vm for vm in loaded.host.vms if vm.name == "k3s-worker-slm")
    table = out.stdout.split(define, 1)[1].split("hv1 |", 1)[0]
    assert [line.split() for line in table.strip().splitlines()[1:1 + len(slm.pins)]] == \
        [[str(i), str(cpu)] for i, cpu in enumerate(slm.pins)]
    journal = [json.loads(line) for line in next((cli.runs / "hv1").glob("*/journal.jsonl")).read_text().splitlines()]
    whole = next(p for r in journal if r["step"] == "vms.define" and r["target"] == "k3s-worker-slm"
                 for p in r["planned"])
    assert whole.startswith(define.strip().split("…")[0]) and len(whole.split("\n")[0]) > 400
    assert out.stdout.rstrip().splitlines()[-2] == "plan: 21 to change, 15 unchanged, 0 unknown"


def test_online_plan_diffs_the_host_files_and_takes_the_selection_flags(cli: Cli) -> None:  # noqa: F811
    sysroot = cli.write(HostShape())
    sysctl = sysroot / "etc/sysctl.d/90-numa-k3s.conf"
    sysctl.parent.mkdir(parents=True)
    sysctl.write_text("# an older version\nkernel.numa_balancing = 1\n")
    before = sysctl.read_text()
    out = cli("plan", "--host=hv1", "--only=host.tune")
    assert out.returncode == 0, out.stderr
    diff = out.stdout.split("/etc/sysctl.d/90-numa-k3s.conf: diff against the host", 1)[1].split("write ", 1)[0]
    rows = [line.strip() for line in diff.strip().splitlines()]
    assert rows[:2] == ["--- /etc/sysctl.d/90-numa-k3s.conf (on hv1)", "+++ /etc/sysctl.d/90-numa-k3s.conf (spec)"]
    assert "-kernel.numa_balancing = 1" in rows and "+kernel.numa_balancing = 0" in rows
    assert "-# an older version" in rows
    # The tmpfiles.d file is not there: its whole body, no diff.
    assert "/etc/tmpfiles.d/numa-k3s.conf:\n" in out.stdout
    assert "hv1 | 2 steps skipped: not in --only: preflight.access, bios.check" in out.stdout  # folded (#30)
    assert "plan: 1 to change, 0 unchanged, 0 unknown" in out.stdout
    assert sysctl.read_text() == before  # a plan changes nothing
    # The rest of provision's selection flags are accepted too.
    for flags in (["--from=host.tune"], ["--skip=bios.check"], ["--redefine"], ["--runbook=provision"]):
        again = cli("plan", "--host=hv1", "--offline", *flags)
        assert again.returncode == 0, (flags, again.stderr)
        assert "plan: " in again.stdout


def test_config_yaml_body_masks_a_known_token_online(cli: Cli) -> None:  # noqa: F811
    """With the cluster token known (the second plan after a provision), the body shows the token as ***."""
    hv1_cli(cli, token=TOKEN)
    loaded = load_inventory(cli.hosts, ["hv1"]).hosts["hv1"]
    vm = next(v for v in loaded.host.vms if v.k8s and v.k8s.role == "server")
    from lib.options import HostInputs
    from lib.shell import Secret
    from lib.steps.base import Target
    from lib.steps.k3s import plan_node
    from lib.targets import hypervisor_endpoint

    target = Target(vm.name, "vm", hypervisor_endpoint(loaded), loaded, vm, inputs=HostInputs(k3s_token=Secret(TOKEN)))
    from lib.planview import describe

    shown = "\n".join(describe(a) for a in plan_node(target, None).actions)
    assert TOKEN not in shown and "| token: ***" in shown
    assert k3s.CONFIG in shown and "| - workload=tasks:NoSchedule" in shown


def test_domain_drift_is_shown_side_by_side_and_each_target_streams_as_it_is_planned() -> None:
    import io

    from lib.planview import PlanOutput
    from lib.results import Check, StepResult

    drift = StepResult("hv1", "vms.define", "k3s-worker-slm", "failed", 0.0, 0.1, exit_code=5,
                       error="hv1: vms.define on k3s-worker-slm: domain k3s-worker-slm differs from the spec (2 "
                             "field(s)); rerun with --redefine",
                       checks=(Check("vcpus", "8", "4", False), Check("memory", "32768 MiB", "16384 MiB", False),
                               Check("domain type", "kvm", "kvm", True)))
    stream = io.StringIO()
    out = PlanOutput(stream)
    out.step_done(drift)
    first = stream.getvalue()
    assert first.startswith("hv1 | vms.define | k3s-worker-slm: cannot plan: hv1: vms.define on k3s-worker-slm: "
                            "domain k3s-worker-slm differs")
    rows = [line.split() for line in first.splitlines()[1:]]
    assert rows[:3] == [["check", "expected", "found"], ["✗", "vcpus", "8", "4"],
                        ["✗", "memory", "32768", "MiB", "16384", "MiB"]]  # the differing fields first
    out.step_done(StepResult("hv1", "vms.start", "k3s-worker-slm", "ok", 0.1, 0.2, reason="running"))
    assert stream.getvalue().startswith(first)  # printed when planned, not held back for the end
    assert stream.getvalue()[len(first):] == "hv1 | vms.start | k3s-worker-slm: no change: running\n"
