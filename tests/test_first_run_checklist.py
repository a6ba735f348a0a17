"""The README's first production run, followed step by step on a real sshd playing hv1 (issue #30):
the key and known_hosts the farm made (the hypervisor's key is checked), hv1's own four VMs with the
placeholder key replaced, the token in a 0600 file, inventory.check, topology, pins, the offline plan
and the online one. What the checklist says about the tool (the sudo line, the placeholder, the
commands) is checked against the tool itself, so the README cannot drift from it silently."""

from __future__ import annotations

import re

import yaml

from lib.sudo import SUDOERS_DROPIN
from tests.harness.sysfs import HostShape
from tests.inventory_helpers import HOSTS, REPO
from tests.test_cli_runbooks import Cli, cli  # noqa: F401  (the fixture)

PLACEHOLDER = "ssh-rsa AAAAB3NzaC1yc2E... user@host"


def _checklist() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("## The first production run: a checklist", 1)[1].split("\n## ", 1)[0]


def test_the_checklist_says_what_the_tool_does() -> None:
    checklist = _checklist()
    assert f"`USER ALL=(ALL) NOPASSWD:ALL` in `{SUDOERS_DROPIN}`" in checklist  # preflight's own line
    assert PLACEHOLDER in checklist and (HOSTS / "hv1.yaml").read_text().count(PLACEHOLDER) == 4
    defaults = yaml.safe_load((HOSTS / "defaults.yaml").read_text())
    assert f"(`{defaults['ssh']['key_file']}`)" in checklist and defaults["k3s"]["token_file"].startswith(
        "~/.config/numa-k3s/")
    order = [m.group(1) for m in re.finditer(r"`invoke (\S+ --host=hv1(?: --offline)?)`", checklist)]
    assert order.index("plan --host=hv1 --offline") < order.index("plan --host=hv1") < order.index(
        "provision --host=hv1")  # plan before provision


def test_the_checklist_on_a_real_sshd_hypervisor(cli: Cli) -> None:  # noqa: F811
    data = yaml.safe_load((HOSTS / "hv1.yaml").read_text())
    own_key = cli.host.key_file.with_suffix(".pub") if cli.host.key_file.with_suffix(".pub").exists() else None
    key = own_key.read_text().strip() if own_key else "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKey operator@desk"
    for vm in data["vms"]:  # "Replace the placeholder keys"
        for user in vm.get("user_configs", []):
            user["ssh_authorized_keys"] = [key if k == PLACEHOLDER else k for k in user["ssh_authorized_keys"]]
    token = cli.tmp / "hv1.token"  # "The k3s token": a 0600 file outside the repository
    token.write_text("0123456789abcdef0123456789abcdef\n")
    token.chmod(0o600)
    cli.hosts.mkdir(parents=True)
    (cli.hosts / "defaults.yaml").write_text((HOSTS / "defaults.yaml").read_text())
    # "SSH key" and "known_hosts": the farm's client key, and known_hosts holding the host's real key.
    own = {k: v for k, v in data.items() if k not in ("ssh", "topology")}  # hv1's file, reached at the sshd
    cli.write(HostShape(), **{**own, "k3s": {**data["k3s"], "token_file": str(token)}})
    for argv in (["inventory.check", "--host=hv1"], ["topology", "--host=hv1"], ["pins", "--host=hv1"],
                 ["plan", "--host=hv1", "--offline"],
                 # Online, the hypervisor's steps and the seeds: hv1's VMs (10.0.0.x) do not exist here.
                 ["plan", "--host=hv1", "--only=preflight.access,host.tune,cloudinit.build"]):
        out = cli(*argv)
        assert out.returncode == 0, (argv, out.stdout[-2000:], out.stderr[-2000:])
    assert PLACEHOLDER not in out.stdout and key.split()[1] in out.stdout  # the seed carries the real key
    assert "0123456789abcdef" not in out.stdout + out.stderr
    assert re.search(r"^plan: \d+ to change, \d+ unchanged, 0 unknown$", out.stdout, re.M), out.stdout[-800:]
