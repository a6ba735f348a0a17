"""#26, the inventory side: no inventory value reaches a system file, a device, a secret or another
host's data. Each hostile or careless input is refused with exit 2 and a message naming the file,
the field and the fix, before any host is touched: load_inventory raises, and through the real CLI
a real sshd host's login count stays 0 and decoy files keep their bytes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lib.errors import InventoryError, Problem
from lib.inventory.keys import check_key
from lib.inventory.load import load_inventory
from lib.inventory.report import lines as report_lines
from lib.shell import Secret, mask, printable, public, terminal
from lib.token import ENV, TokenError, cluster_token
from tests.harness.inventory import lock_path_for, small_vm, write_host
from tests.harness.sshd import SshHost, count_auths
from tests.inventory_helpers import REPO, Mutation, hv1, mutated, write_inventory

INVOKE = [sys.executable, "-m", "invoke", "--search-root", str(REPO)]
HV1 = "hv1.yaml"


def problems(tmp: Path, mutate: Mutation) -> list[Problem]:
    hosts = write_inventory(tmp, mutated(mutate))
    with pytest.raises(InventoryError) as err:
        load_inventory(hosts)
    return [p for p in err.value.problems if p.severity == "error"]


def only(found: list[Problem], rule: str, path: str) -> str:
    """The one message of rule at path (and no other error at all: one cause, one line)."""
    assert [(p.rule, p.path) for p in found] == [(rule, path)], "\n".join(map(str, found))
    return found[0].message


def cli(tmp: Path, *args: str, hosts: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k != ENV}  # the token only when the test gives one
    full = {**inherited, "INVOKE_HOSTS_DIR": str(hosts), "INVOKE_RUNS_DIR": str(tmp / "runs"), **(env or {})}
    # timeout: a safety net so a hang fails the test instead of the suite; nothing is timed
    return subprocess.run([*INVOKE, *args], check=False, capture_output=True, text=True, env=full, cwd=REPO,
                          timeout=120)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vm0(key: str, value: Any) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        d["vms"][0][key] = value
    return apply


# -- 1. paths: normal form, storage roots, system files, the base image ------------------------------------

@pytest.mark.parametrize(("mutate", "path", "shown"), [
    (vm0("disk_path", "/etc/passwd"), "vms[0].disk_path", "/etc/passwd"),
    (vm0("disk_path", "/dev/sda"), "vms[0].disk_path", "/dev/sda"),
    (vm0("cloud_init_iso_path", "/etc/shadow"), "vms[0].cloud_init_iso_path", "/etc/shadow"),
    (vm0("cloud_init_iso_path", "/etc//./shadow/"), "vms[0].cloud_init_iso_path", "/etc/shadow"),
], ids=["passwd", "sda", "shadow", "shadow-spelled-oddly"])
def test_a_system_file_is_never_a_vm_file(tmp_path: Path, mutate: Mutation, path: str, shown: str) -> None:
    message = only(problems(tmp_path, mutate), "path.system", path)
    assert message == (f"{shown} is in the host's system tree: the tool would create, overwrite and delete it; put it "
                       "under a storage root (/var/lib/libvirt/images, /srv)")


def test_a_data_disk_at_a_system_file_is_refused(tmp_path: Path) -> None:
    def bad(d: dict[str, Any]) -> None:
        d["vms"][1]["disks"][0]["path"] = "/etc/passwd"

    assert only(problems(tmp_path, bad), "path.system", "vms[1].disks[0].path").startswith(
        "/etc/passwd is in the host's system tree")


def test_a_path_outside_every_storage_root_is_refused(tmp_path: Path) -> None:
    message = only(problems(tmp_path, vm0("disk_path", "/home/op/vm.qcow2")), "path.outside-roots", "vms[0].disk_path")
    assert message == ("/home/op/vm.qcow2 is not under a storage root (/var/lib/libvirt/images, /srv): the tool "
                       "creates, replaces and deletes only there; move it under one, or add its directory to "
                       "storage_roots")


@pytest.mark.parametrize("spelling", ["/var/lib/libvirt/images/./base.qcow2", "/var/lib/libvirt/images//base.qcow2",
                                      "//var/lib/libvirt/images/base.qcow2"])
def test_the_base_image_is_recognised_however_it_is_spelled(tmp_path: Path, spelling: str) -> None:
    message = only(problems(tmp_path, vm0("disk_path", spelling)), "disk.base-image", "vms[0].disk_path")
    assert message == ("/var/lib/libvirt/images/base.qcow2 is the base image of vms[0] (k3s-worker-slm-heavy); it "
                       "must never be a VM's own disk or seed (compared normalised)")


def test_a_seed_at_another_spelling_of_the_base_image_is_refused(tmp_path: Path) -> None:
    def bad(d: dict[str, Any]) -> None:
        d["vms"][2]["base_image_path"] = "/var/lib/libvirt/images/golden.qcow2/"
        d["vms"][3]["cloud_init_iso_path"] = "/var/lib/libvirt/images/./golden.qcow2"

    message = only(problems(tmp_path, bad), "disk.base-image", "vms[3].cloud_init_iso_path")
    assert message.startswith("/var/lib/libvirt/images/golden.qcow2 is the base image of vms[2] (k3s-worker-slm)")


def test_two_vms_at_one_path_spelled_differently_are_refused_naming_both(tmp_path: Path) -> None:
    def bad(d: dict[str, Any]) -> None:
        d["vms"][0]["disk_path"] = "/var/lib/libvirt/images//shared.qcow2"
        d["vms"][2]["disk_path"] = "/var/lib/libvirt/images/./shared.qcow2/"

    message = only(problems(tmp_path, bad), "disk.duplicate", "vms[2].disk_path")
    assert message == ("/var/lib/libvirt/images/shared.qcow2 is also vms[0].disk_path (k3s-worker-slm-heavy), once "
                       "both are normalised; every VM file needs a path of its own")


def test_paths_are_kept_in_their_normal_form(tmp_path: Path) -> None:
    hosts = write_inventory(tmp_path, mutated(vm0("disk_path", "/var/lib/libvirt/images//./slm-heavy.qcow2/")))
    vm = load_inventory(hosts).hosts["hv1"].host.vms[0]
    assert vm.disk_path == "/var/lib/libvirt/images/slm-heavy.qcow2"  # what every step and command uses


@pytest.mark.parametrize(("root", "why"), [("/", "too wide"), ("/var", "too wide"), ("/etc", "a system directory"),
                                           ("/usr/local", "a system directory")])
def test_a_storage_root_is_never_the_system_or_everything(tmp_path: Path, root: str, why: str) -> None:
    def bad(d: dict[str, Any]) -> None:
        d["storage_roots"] = [root]
        for vm in d["vms"]:  # every file under the root, so only the root itself is wrong
            for key in ("disk_path", "cloud_init_iso_path", "base_image_path"):
                vm[key] = f"{root.rstrip('/')}/vms/{vm['name']}-{key}"
            for disk in vm.get("disks", []):
                disk["path"] = f"{root.rstrip('/')}/vms/{vm['name']}-{disk['name']}"

    found = problems(tmp_path, bad)
    roots = [p for p in found if p.rule == "path.storage-root"]
    assert [p.path for p in roots] == ["storage_roots[0]"]
    assert roots[0].message.startswith(f"{root} is {why}: a storage root holds only the tool's images")


def test_a_file_that_is_anothers_directory_is_refused(tmp_path: Path) -> None:
    def bad(d: dict[str, Any]) -> None:
        d["vms"][1]["disks"][1]["path"] = "/srv/hdd"
        d["vms"][0]["disk_path"] = "/srv/hdd/x.qcow2"

    message = only(problems(tmp_path, bad), "path.nested", "vms[1].disks[1].path")
    assert message.startswith("/srv/hdd is a directory of vms[0].disk_path (k3s-worker-slm-heavy)")


def test_a_data_disk_mounted_over_the_guests_system_is_refused(tmp_path: Path) -> None:
    def bad(d: dict[str, Any]) -> None:
        d["vms"][1]["disks"][0]["mount"] = "/etc"

    assert only(problems(tmp_path, bad), "disk.mount", "vms[1].disks[0].mount").startswith(
        "/etc is a system directory of the guest")


@pytest.mark.parametrize("args", [["teardown", "--host=hv1", "--yes", "--include-data"], ["provision", "--host=hv1"]])
def test_system_files_named_by_the_inventory_are_untouched_and_no_host_is_contacted(
        tmp_path: Path, ssh_host: SshHost, args: list[str]) -> None:
    """The real files on this machine (the sshd host is this machine) keep their bytes. (Not /etc/passwd:
    other tests on this machine add users while this one runs.)"""
    decoys = [Path("/etc/os-release"), Path("/etc/hostname")]
    before = [sha(p) for p in decoys]
    vm = small_vm("decoy-vm", 0, role="server") | {"disk_path": "/etc/os-release",
                                                   "cloud_init_iso_path": "/etc//hostname"}
    hosts = tmp_path / "hosts"
    write_host(hosts, "hv1", ssh_host, vms=[vm], storage_roots=["/var/lib/libvirt/images"])
    (hosts / "defaults.yaml").write_text((REPO / "hosts" / "defaults.yaml").read_text())
    out = cli(tmp_path, *args, hosts=hosts, env={ENV: "a-strong-enough-token-0001"})
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr
    assert (f"ERROR [path.system] {hosts / HV1}: vms[0] (decoy-vm).disk_path: /etc/os-release is in the host's system "
            "tree: the tool would create, overwrite and delete it; put it under a storage root "
            "(/var/lib/libvirt/images)") in out.stderr.splitlines()
    assert "vms[0] (decoy-vm).cloud_init_iso_path: /etc/hostname is in the host's system tree" in out.stderr
    assert [sha(p) for p in decoys] == before and count_auths(ssh_host) == 0 and not (tmp_path / "runs").exists()


# -- 2. block devices ---------------------------------------------------------------------------------------

def _device(vm: int, disk: int, device: str) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        d["vms"][vm].setdefault("disks", [])
        d["vms"][vm]["disks"][disk]["device"] = device
    return apply


def test_a_device_not_on_the_allow_list_is_refused(tmp_path: Path) -> None:
    message = only(problems(tmp_path, _device(1, 1, "/dev/sda")), "disk.device", "vms[1].disks[1].device")
    assert message == ("/dev/sda is not in block_devices (allowed: none); a VM gets a whole device only when the host "
                       "lists it: add it to block_devices if it is meant for this VM")


def test_two_disks_on_one_device_are_refused_naming_both(tmp_path: Path) -> None:
    def bad(d: dict[str, Any]) -> None:
        d["block_devices"] = ["/dev/disk/by-id/nvme-data"]
        _device(1, 0, "/dev/disk/by-id/nvme-data")(d)
        _device(1, 1, "/dev/disk/by-id//nvme-data")(d)  # one device, spelled two ways

    message = only(problems(tmp_path, bad), "disk.device-shared", "vms[1].disks[1].device")
    assert message == ("/dev/disk/by-id/nvme-data is also vms[1].disks[0].device (k3s-worker-data); two disks on one "
                       "device overwrite each other's data")


def test_an_allow_list_entry_outside_dev_is_refused(tmp_path: Path) -> None:
    def bad(d: dict[str, Any]) -> None:
        d["block_devices"] = ["/etc/passwd"]

    assert only(problems(tmp_path, bad), "disk.device", "block_devices[0]").startswith("/etc/passwd is not under /dev")


def test_an_offline_plan_shows_an_allowed_device_as_unknown(tmp_path: Path) -> None:
    def ok(d: dict[str, Any]) -> None:
        d["block_devices"] = ["/dev/sdb"]
        _device(1, 1, "/dev/sdb")(d)

    out = cli(tmp_path, "plan", "--host=hv1", "--offline", hosts=write_inventory(tmp_path, mutated(ok)))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert "    WARNING: cold disk /dev/sdb: a block device, unknown offline (read when the host is)" in out.stdout


# -- 3. authorized keys -------------------------------------------------------------------------------------

def _keypair(tmp: Path, kind: str = "ed25519") -> tuple[Path, Path]:
    private = tmp / f"id_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "op@box", "-f", str(private)], check=True)
    return private, Path(f"{private}.pub")


def _keys(vm: int, *keys: str, files: tuple[str, ...] = ()) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        d["vms"][vm]["user_configs"] = [{"username": "admin", "ssh_authorized_keys": list(keys),
                                         "ssh_authorized_key_files": list(files)}]
    return apply


def _real_keys(tmp: Path) -> Mutation:
    """hv1 with a real public key for every VM, so nothing but the case under test is wrong."""
    (tmp / "real").mkdir()
    _, pub = _keypair(tmp / "real")

    def apply(d: dict[str, Any]) -> None:
        for i in range(4):
            _keys(i, files=(str(pub),))(d)
    return apply


def _then(*steps: Mutation) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        for step in steps:
            step(d)
    return apply


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_real_public_keys_pass_as_ssh_keygen_reads_them(tmp_path: Path, kind: str) -> None:
    _, pub = _keypair(tmp_path, kind)
    line = pub.read_text().strip()
    assert subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, check=False).returncode == 0
    assert check_key(line).rule == ""
    assert check_key(f'from="10.0.0.0/24" {line}').rule == ""  # authorized_keys options, as sshd reads them


@pytest.mark.parametrize("text", ["hello world", "ssh-ed25519 AAAA", "ssh-ed25519", ""])
def test_what_ssh_keygen_cannot_read_is_refused(tmp_path: Path, text: str) -> None:
    oracle = tmp_path / "k.pub"
    oracle.write_text(text + "\n")
    assert subprocess.run(["ssh-keygen", "-l", "-f", str(oracle)], capture_output=True, check=False).returncode != 0
    assert check_key(text).rule == "key.invalid"


def test_hello_world_as_a_key_is_refused_without_quoting_it(tmp_path: Path) -> None:
    message = only(problems(tmp_path, _keys(0, "hello world")), "key.invalid",
                   "vms[0].user_configs[0].ssh_authorized_keys[0]")
    assert message == ("this key is not a public key (ssh-keygen -l cannot read it); give a line like "
                       "'ssh-ed25519 AAAAC3Nza... user@host', as in ~/.ssh/id_ed25519.pub")


def test_a_key_with_an_embedded_newline_is_refused(tmp_path: Path) -> None:
    _, pub = _keypair(tmp_path)
    smuggled = pub.read_text().strip() + "\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBadBadBadBadBadBadBadBad evil"
    message = only(problems(tmp_path, _keys(0, smuggled)), "key.multiline",
                   "vms[0].user_configs[0].ssh_authorized_keys[0]")
    assert message == ("this key holds 2 lines; cloud-init would write each line into authorized_keys as a key of its "
                       "own: give one key per list entry")


CLOUD_INIT_PARSE = """
import sys
from cloudinit import ssh_util
parser = ssh_util.AuthKeyLineParser()
text = ssh_util.update_authorized_keys([], [parser.parse(sys.argv[1])])
open(sys.argv[2], "w").write(text)
print(sum(1 for k in ssh_util.parse_authorized_keys([sys.argv[2]]) if k.valid()))
"""


def test_cloud_inits_own_parser_reads_a_newline_key_as_two_keys(tmp_path: Path) -> None:
    """Why key.multiline exists: cloud-init (the guest's, /usr/bin/python3's here) writes the entry
    as given, and authorized_keys read back holds two keys."""
    probe = subprocess.run(["/usr/bin/python3", "-c", "import cloudinit.ssh_util"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("cloud-init is not installed for /usr/bin/python3")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    _, first = _keypair(tmp_path / "a")
    _, second = _keypair(tmp_path / "b")
    smuggled = first.read_text().strip() + "\n" + second.read_text().strip()
    out = subprocess.run(["/usr/bin/python3", "-c", CLOUD_INIT_PARSE, smuggled, str(tmp_path / "authorized_keys")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"


def test_the_placeholder_key_is_a_warning_for_commands_that_read(tmp_path: Path) -> None:
    hosts = write_inventory(tmp_path)
    check = cli(tmp_path, "inventory.check", hosts=hosts)
    assert check.returncode == 0, check.stderr
    assert ("WARNING [key.placeholder] " + str(hosts / HV1) + ": 4 places (vms[0] (k3s-worker-slm-heavy).user_configs"
            "[0].ssh_authorized_keys[0];") in check.stderr
    for args in (["plan", "--host=hv1", "--offline"], ["topology", "--host=hv1"], ["pins", "--host=hv1"]):
        out = cli(tmp_path, *args, hosts=hosts)
        assert out.returncode == 0 and "[key.placeholder]" in out.stderr, (args, out.stderr)


@pytest.mark.parametrize("args", [["provision", "--host=hv1"], ["step", "images.clone", "--host=hv1"],
                                  ["teardown", "--host=hv1", "--yes"]])
def test_the_placeholder_key_is_refused_by_runs_that_apply(tmp_path: Path, ssh_host: SshHost,
                                                           args: list[str]) -> None:
    data = hv1()
    data["ssh"] = {"host": ssh_host.host, "port": ssh_host.port, "user": ssh_host.user,
                   "key_file": str(ssh_host.key_file), "known_hosts": str(ssh_host.known_hosts)}
    data["lock_path"] = str(lock_path_for(tmp_path / "hosts", "hv1"))  # in /run/lock (rule lock.path)
    out = cli(tmp_path, *args, hosts=write_inventory(tmp_path, data))
    assert out.returncode == 2, out.stdout + out.stderr
    assert ("ERROR [key.placeholder] " + str(tmp_path / "hosts" / HV1) + ": 4 places (vms[0] (k3s-worker-slm-heavy)"
            ".user_configs[0].ssh_authorized_keys[0];") in out.stderr
    assert "; a run that changes hosts refuses it (plan and inventory.check only warn)" in out.stderr
    assert count_auths(ssh_host) == 0 and not (tmp_path / "runs").exists()


def _private_key_bytes(private: Path) -> list[str]:
    """The lines of the private key's body: any of them anywhere is a leak."""
    return [line for line in private.read_text().splitlines() if line and not line.startswith("-----")]


def test_a_private_key_file_is_refused_and_its_bytes_reach_no_output(tmp_path: Path, ssh_host: SshHost) -> None:
    private, _ = _keypair(tmp_path)
    body = _private_key_bytes(private)
    hosts = tmp_path / "hosts"
    vm = small_vm("pk-vm", 0, role="server") | {
        "user_configs": [{"username": "admin", "ssh_authorized_key_files": [str(private)]}]}
    write_host(hosts, "hv1", ssh_host, vms=[vm])
    (hosts / "defaults.yaml").write_text((REPO / "hosts" / "defaults.yaml").read_text())
    want = (f"ERROR [key.private] {hosts / HV1}: vms[0] (pk-vm).user_configs[0].ssh_authorized_key_files[0]: {private} "
            f"holds a PRIVATE key, not a public one: name its public half ({private}.pub); the private key was not "
            "copied anywhere")
    seen = ""
    for args in (["inventory.check"], ["plan", "--host=hv1", "--offline"], ["provision", "--host=hv1"]):
        out = cli(tmp_path, *args, hosts=hosts, env={ENV: "a-strong-enough-token-0001"})
        assert out.returncode == 2 and want in out.stderr.splitlines(), (args, out.stderr)
        seen += out.stdout + out.stderr
    records = "".join(p.read_text(errors="replace") for p in (tmp_path / "runs").rglob("*") if p.is_file()) \
        if (tmp_path / "runs").exists() else ""
    seeds = [p for p in tmp_path.rglob("*.iso")]
    assert body and not any(line in seen or line in records for line in body)
    assert seeds == [] and count_auths(ssh_host) == 0


def test_a_key_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "keys.pub"
    os.mkfifo(fifo)
    message = only(problems(tmp_path, _keys(0, files=(str(fifo),))), "key.file",
                   "vms[0].user_configs[0].ssh_authorized_key_files[0]")
    assert message == f"{fifo} is a FIFO (named pipe), not a regular file: name a public key file (.pub)"


# -- 4. tokens and masking ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "why"), [
    ("   ", "is empty or only whitespace"), ("k3s", "is 3 characters, fewer than 16"),
    ("two words-0123456789", "holds whitespace or control characters inside it"),
])
def test_a_weak_token_from_the_environment_is_refused_naming_it(tmp_path: Path, value: str, why: str) -> None:
    with pytest.raises(TokenError) as err:
        cluster_token(str(tmp_path / "t"), "hv1", create=True, environ={ENV: value})
    assert err.value.exit_code == 2
    assert str(err.value).startswith(f"hv1: the cluster token in NUMA_K3S_TOKEN {why}")
    assert not (tmp_path / "t").exists()


def test_a_weak_token_file_is_refused_naming_the_file_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "hv1.token"
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(TokenError) as err:
        cluster_token(str(path), "hv1", create=True, environ={})
    assert str(err.value) == (f"hv1: the cluster token file {path} is 5 characters, fewer than 16: too weak to guard "
                              "the cluster's join; delete it to generate a new token, or put the cluster's token in it "
                              "(a new one: openssl rand -hex 32)")
    assert "short" not in str(err.value) and path.read_text() == "short\n"


def test_a_whitespace_token_is_exit_2_before_any_host_is_contacted(tmp_path: Path, ssh_host: SshHost) -> None:
    hosts = tmp_path / "hosts"
    write_host(hosts, "hv1", ssh_host, vms=[small_vm("tok-vm", 0, role="server")])
    (hosts / "defaults.yaml").write_text((REPO / "hosts" / "defaults.yaml").read_text())
    for args in (["plan", "--host=hv1", "--offline"], ["provision", "--host=hv1"]):
        out = cli(tmp_path, *args, hosts=hosts, env={ENV: "   "})
        assert out.returncode == 2, (args, out.stdout[-3000:], out.stderr)
        assert "hv1: the cluster token in NUMA_K3S_TOKEN is empty or only whitespace" in out.stderr
        assert "ValueError" not in out.stdout + out.stderr
    assert count_auths(ssh_host) == 0


def test_masking_replaces_a_secret_in_values_never_inside_a_name() -> None:
    secret = Secret("k3s")  # too weak for a token (refused above); the mechanism must hold all the same
    public("k3s.agents", "/var/lib/rancher/k3s/server")
    text = "k3s.agents | token: k3s | /var/lib/rancher/k3s/server | k3s"
    assert mask(text) == "k3s.agents | token: *** | /var/lib/rancher/k3s/server | ***"
    assert str(secret) == "***"


def test_a_token_inside_a_vm_name_masks_the_config_value_and_leaves_the_name(tmp_path: Path) -> None:
    token = "k3s-worker-slm-h"  # noqa: S105 - 16 characters, and the start of hv1's first VM's name
    out = cli(tmp_path, "plan", "--host=hv1", "--offline", hosts=write_inventory(tmp_path), env={ENV: token})
    assert out.returncode == 0, out.stderr
    assert "| k3s.agents | k3s-worker-slm-heavy:" in out.stdout and "***eavy" not in out.stdout
    assert "  | token: ***" in out.stdout
    assert token not in out.stdout.replace("k3s-worker-slm-heavy", "")
    journal = next((tmp_path / "runs").rglob("journal.jsonl")).read_text()
    assert '"step": "k3s.agents"' in journal and token not in journal.replace("k3s-worker-slm-heavy", "")


# -- 5. YAML hygiene ----------------------------------------------------------------------------------------

def _raw(tmp: Path, text: str) -> tuple[Path, list[Problem]]:
    hosts = write_inventory(tmp)
    (hosts / HV1).write_text(text)
    with pytest.raises(InventoryError) as err:
        load_inventory(hosts)
    return hosts, err.value.problems


def test_a_duplicate_key_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    text = (REPO / "hosts" / HV1).read_text()
    text = text.replace("    memory_mb: 120832\n", "    memory_mb: 120832\n    memory_mb: 1024\n", 1)
    first = text.splitlines().index("    memory_mb: 120832") + 1
    _, found = _raw(tmp_path, text)
    assert [(p.rule, p.path) for p in found] == [("yaml.duplicate-key", f"line {first + 1}")]
    assert found[0].message == (f"duplicate key 'memory_mb': it is also on line {first} of the same mapping, and YAML "
                                "keeps only one of them silently; remove or rename one")


def test_a_second_vms_at_the_top_is_an_error_not_an_empty_host(tmp_path: Path) -> None:
    text = (REPO / "hosts" / HV1).read_text() + "vms: []\n"
    hosts, found = _raw(tmp_path, text)
    assert [p.rule for p in found] == ["yaml.duplicate-key"] and "duplicate key 'vms'" in found[0].message
    out = cli(tmp_path, "inventory.check", hosts=hosts)
    assert out.returncode == 2 and "[yaml.duplicate-key]" in out.stderr and "ok" not in out.stdout


def test_merge_keys_may_override_and_aliases_still_load(tmp_path: Path) -> None:
    from lib.inventory.load import _read_yaml

    path = tmp_path / "x.yaml"
    path.write_text("base: &b {a: 1, b: 2}\nover:\n  <<: *b\n  b: 3\nsame: *b\n")
    found: list[Problem] = []
    assert _read_yaml(path, found) == {"base": {"a": 1, "b": 2}, "over": {"a": 1, "b": 3}, "same": {"a": 1, "b": 2}}
    assert found == []
    path.write_text("a:\n  b: 1\n  c: {d: 1, d: 2}\n")  # at any depth, in flow style too
    assert _read_yaml(path, found) is None and found[0].path == "line 3" and "line 3 of the same" in found[0].message


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "50mb", "directory"])
def test_a_hosts_file_that_is_not_a_small_regular_file_is_refused_unread(tmp_path: Path, kind: str) -> None:
    hosts = write_inventory(tmp_path)
    target = hosts / HV1
    target.unlink()
    if kind == "dev-zero":
        target.symlink_to("/dev/zero")
        why = "is a character device, not a regular file"
    elif kind == "fifo":
        os.mkfifo(target)
        why = "is a FIFO (named pipe), not a regular file"
    elif kind == "directory":
        target.mkdir()
        why = "is a directory, not a regular file"
    else:
        with target.open("wb") as handle:
            handle.truncate(50 * 1024 * 1024)  # sparse: its size is what stat() reads
        why = "is 52428800 bytes, more than the 1048576 bytes such a file can need"
    out = cli(tmp_path, "inventory.check", hosts=hosts)
    assert out.returncode == 2
    rule = "file.too-big" if kind == "50mb" else "file.not-regular"
    assert out.stderr.strip() == (f"ERROR [{rule}] {target}: {why}; a hosts file is a small regular YAML file (a "
                                  "symlink to one is followed)")


def test_a_symlink_to_a_regular_hosts_file_is_followed(tmp_path: Path) -> None:
    hosts = write_inventory(tmp_path)
    real = tmp_path / "elsewhere.yaml"
    (hosts / HV1).rename(real)
    (hosts / HV1).symlink_to(real)
    assert load_inventory(hosts).hosts["hv1"].host.vms[0].name == "k3s-worker-slm-heavy"


def test_a_defaults_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    hosts = write_inventory(tmp_path)
    (hosts / "defaults.yaml").unlink()
    os.mkfifo(hosts / "defaults.yaml")
    with pytest.raises(InventoryError) as err:
        load_inventory(hosts)
    assert next(p.rule for p in err.value.problems) == "file.not-regular"


def test_a_host_file_named_dotdot_is_refused(tmp_path: Path) -> None:
    hosts = write_inventory(tmp_path)
    (hosts / "...yaml").write_text((hosts / HV1).read_text())
    out = cli(tmp_path, "plan", "--host=..", "--offline", hosts=hosts)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"ERROR [file.name] {hosts / '...yaml'}: '..' is not a host name: name the file "
                                  "<host>.yaml with 1-63 lowercase letters, digits and '-' (RFC 1123)")
    assert not (tmp_path / "runs").exists()


# -- 6. lab-only settings -----------------------------------------------------------------------------------

LAB_BOOT = {"kernel": "/var/lib/libvirt/images/vmlinuz", "initrd": "/var/lib/libvirt/images/initrd.img"}


@pytest.mark.parametrize(("key", "value", "path", "start"), [
    ("boot", LAB_BOOT | {"host_root": True}, "vms[0].boot.host_root", "host_root shares the hypervisor's own /"),
    ("boot", LAB_BOOT, "vms[0].boot", "kernel/initrd boot is a lab setting"),
    ("user_nic", {"host_port": 22021}, "vms[0].user_nic", "a user-mode NIC is a lab setting and replaces the bridge"),
])
def test_lab_only_settings_are_refused_on_a_production_host(tmp_path: Path, key: str, value: Any, path: str,
                                                            start: str) -> None:
    message = only(problems(tmp_path, vm0(key, value)), "lab.only", path)
    assert message.startswith(start) and message.endswith("or mark the host as a lab with `lab: true` if it is one")
    lab = mutated(_then(vm0(key, value), lambda d: d.update(lab=True)))
    (tmp_path / "lab").mkdir()
    assert load_inventory(write_inventory(tmp_path / "lab", lab)).hosts["hv1"].host.lab


def test_a_user_nic_listening_beyond_loopback_is_refused_even_in_a_lab(tmp_path: Path) -> None:
    anywhere = "0.0.0.0"  # noqa: S104 - the hostile value under test
    bad = _then(vm0("user_nic", {"host_port": 22021, "listen": anywhere}), lambda d: d.update(lab=True))
    assert only(problems(tmp_path, bad), "lab.listen", "vms[0].user_nic.listen") == (
        "0.0.0.0 is not a loopback address: the VM's SSH (and forwards) would be open to the network; use 127.0.0.1")


# -- 7. network ---------------------------------------------------------------------------------------------

def _net(vm: int, **net: Any) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        d["vms"][vm]["network"] = {**d["vms"][vm]["network"], **net}
    return apply


def test_two_vms_with_one_address_are_refused_naming_both(tmp_path: Path) -> None:
    assert only(problems(tmp_path, _net(2, address="10.0.0.11/24")), "network.duplicate", "vms[2].network.address") \
        == "10.0.0.11 is also the address of vms[0] (k3s-worker-slm-heavy); give each VM its own"


def test_an_address_equal_to_the_gateway_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, _net(0, address="10.0.0.1/24"))
    assert [(p.rule, p.path) for p in found] == [("network.gateway", f"vms[{i}].network.gateway") for i in range(4)]
    assert found[0].message == ("the gateway 10.0.0.1 is the VM's own address (vms[0].network.address); use the "
                                "router's address")
    # and for the other three VMs, whose gateway it is: that address now belongs to a VM
    assert found[1].message == ("the gateway 10.0.0.1 is the address of vms[0] (k3s-worker-slm-heavy); use the "
                                "router's address")


def test_a_gateway_outside_the_subnet_is_refused(tmp_path: Path) -> None:
    assert only(problems(tmp_path, _net(0, gateway="10.9.0.1")), "network.gateway", "vms[0].network.gateway") == (
        "the gateway 10.9.0.1 is outside the VM's subnet 10.0.0.0/24 (vms[0].network.address); the VM could not "
        "reach it: use an address inside the subnet")


def test_another_vms_address_as_gateway_and_the_broadcast_address_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, _then(_net(0, gateway="10.0.0.12"), _net(2, address="10.0.0.255/24")))
    assert [(p.rule, p.path) for p in found] == [("network.address", "vms[2].network.address"),
                                                 ("network.gateway", "vms[0].network.gateway")]
    assert found[1].message == "the gateway 10.0.0.12 is the address of vms[1] (k3s-worker-data); use the router's " \
                               "address"


def test_two_vms_reached_at_one_ssh_endpoint_are_refused(tmp_path: Path) -> None:
    def bad(d: dict[str, Any]) -> None:
        d["vms"][3]["ssh"]["host"] = "10.0.0.11"

    assert only(problems(tmp_path, bad), "ssh.duplicate", "vms[3].ssh").startswith(
        "10.0.0.11:22 is also where vms[0] (k3s-worker-slm-heavy) is reached")


# -- 8. arguments, URLs, the terminal -----------------------------------------------------------------------

@pytest.mark.parametrize(("mutate", "path"), [
    (lambda d: d["vms"][0]["k8s"].update(taints=["-x:NoSchedule"]), "vms[0].k8s.taints[0]"),
    (lambda d: d["vms"][0]["k8s"].update(labels={"-l": "x"}), "vms[0].k8s.labels.-l.[key]"),
    (lambda d: d["vms"][0]["k8s"].update(labels={"tier": "-x"}), "vms[0].k8s.labels.tier"),
    (vm0("packages", ["-oAPT::Get::AllowUnauthenticated=true"]), "vms[0].packages[0]"),
    (vm0("bridge_network_interface", "-br0"), "vms[0].bridge_network_interface"),
    (lambda d: d.update(libvirt_uri="--connect=x"), "libvirt_uri"),
], ids=["taint", "label-key", "label-value", "package", "bridge", "libvirt-uri"])
def test_a_value_that_becomes_an_argument_may_not_start_with_a_dash(tmp_path: Path, mutate: Mutation,
                                                                    path: str) -> None:
    found = problems(tmp_path, mutate)
    hits = [p for p in found if p.rule == "value.option-like"]
    assert [p.path for p in hits] == [path], "\n".join(map(str, found))
    assert hits[0].message.endswith("starts with '-', which the command it reaches would read as an option; remove "
                                    "the '-'")


def test_a_label_that_would_split_into_two_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, lambda d: d["vms"][0]["k8s"].update(labels={"a=b,c": "x"}))
    assert [p.rule for p in found] == ["k3s.label"]


@pytest.mark.parametrize(("key", "url"), [("install_script_url", "http://get.k3s.io"),
                                          ("download_url", "http://mirror.local/k3s"),
                                          ("server_url", "http://10.0.0.14:6443")])
def test_plain_http_is_refused_without_the_mirror_opt_in(tmp_path: Path, key: str, url: str) -> None:
    message = only(problems(tmp_path, lambda d: d["k3s"].update({key: url})), "url.plain-http", f"k3s.{key}")
    assert message.startswith(f"{url} is plain http: ")


def test_a_plain_http_mirror_allowed_is_named_in_the_plan(tmp_path: Path) -> None:
    data = mutated(lambda d: d["k3s"].update(download_url="http://mirror.local/k3s", allow_http_mirror=True))
    out = cli(tmp_path, "plan", "--host=hv1", "--offline", hosts=write_inventory(tmp_path, data),
              env={ENV: "a-strong-enough-token-0001"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("WARNING: fetched over plain http (k3s.allow_http_mirror): http://mirror.local/k3s") == 4
    (tmp_path / "s").mkdir()
    assert only(problems(tmp_path / "s", lambda d: d["k3s"].update(server_url="http://x:6443",
                                                                   allow_http_mirror=True)),
                "url.plain-http", "k3s.server_url").endswith("k3s serves its API over https only")


def test_a_remote_libvirt_uri_is_refused(tmp_path: Path) -> None:
    message = only(problems(tmp_path, lambda d: d.update(libvirt_uri="qemu+ssh://other.host/system")),
                   "libvirt.uri", "libvirt_uri")
    assert message.startswith("'qemu+ssh://other.host/system' is not a local libvirt URI")


def test_control_characters_are_escaped_on_the_terminal(tmp_path: Path) -> None:
    bad = _keys(0, files=("/nowhere/\x1b[2J\x1b]0;owned\x07.pub",))
    out = cli(tmp_path, "inventory.check", hosts=write_inventory(tmp_path, mutated(bad)))
    text = out.stdout + out.stderr
    assert "\x1b" not in text and "\x07" not in text
    assert "/nowhere/\\x1b[2J\\x1b]0;owned\\x07.pub" in text
    (tmp_path / "n").mkdir()
    name = cli(tmp_path, "inventory.check", hosts=write_inventory(tmp_path / "n", mutated(vm0("name", "a\x1b[2J"))))
    assert name.returncode == 2 and "\x1b" not in name.stderr and "'a\\x1b[2J' is not a valid name" in name.stderr


def test_terminal_escapes_what_a_terminal_would_act_on() -> None:
    assert printable("ok\tline\nnext") == "ok\tline\nnext"
    assert printable("\x1b[2J\r\x9b\u202e") == "\\x1b[2J\\r\\x9b\\u202e"
    secret = Secret("tok-\x1b-0123456789abc")
    assert terminal(f"x {secret.reveal()} \x1b[31m") == "x *** \\x1b[31m"


@pytest.mark.parametrize("name", ["\n", "vm\x1b[2Jx", "a\rb"])
def test_a_control_character_in_a_vm_name_stays_on_one_escaped_line(tmp_path: Path, name: str) -> None:
    """Found by the inventory fuzz: a VM named "\\n" broke its refusal over two lines (the name is in
    the field's path too), so the one-line-per-problem report lost its rule and file on the second."""
    found = problems(tmp_path, vm0("name", name))
    shown = report_lines([Problem(p.rule, str(tmp_path / "hosts" / "hv1.yaml"), p.path, p.message) for p in found])
    assert any(f"vms[0] ({name!r}).name" in line for line in shown), shown
    assert shown and all("\n" not in line and "\r" not in line and "\x1b" not in line for line in shown), shown
    assert any("[name.invalid]" in line for line in shown)
