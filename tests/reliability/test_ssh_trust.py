"""Issue #8 item 7: host keys are checked against known_hosts by default; an unknown or changed key
is refused before anything runs, with a message that says what to do; `host_key: accept-new` is the
documented opt-in for first contact and still refuses a changed key. Real sshd hosts only."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
import yaml

from lib.inventory.model import SshSettings, VmSsh
from lib.remote import ConnectError, Endpoint, Session, fingerprint
from lib.retry import Policies, Policy
from lib.runner import failure_text
from lib.shell import sh
from lib.virtclient import LibvirtClient
from tests.engine_steps import REGISTRY
from tests.harness.inventory import ssh_of, write_host
from tests.harness.sshd import SshdFarm, SshHost, count_auths
from tests.harness.world import World

ONCE = Policies(ssh_connect=Policy("ssh_connect", attempts=1, wait_initial=0.1, wait_max=0.1),
                transient=Policy("transient", attempts=1, wait_initial=0.1, wait_max=0.1))


@pytest.fixture
def host(sshd_farm: SshdFarm, tmp_path: Path) -> Iterator[SshHost]:
    h = sshd_farm.start(f"trust-{tmp_path.name[-12:]}")
    yield h
    sshd_farm.stop(h.name)


def libvirt_client(endpoint: Endpoint) -> LibvirtClient:
    """An endpoint's libvirt client, as a run's pool (lib/pool.py) makes it beside its session."""
    return LibvirtClient(endpoint, ONCE, time.sleep, lambda line: None)


def endpoint(host: SshHost, known: Path, *, accept_new: bool = False) -> Endpoint:
    return Endpoint("hv1", host.host, host.port, host.user, str(host.key_file), str(known), accept_new=accept_new,
                    host_key_opt_in="ssh.host_key: accept-new in hosts/hv1.yaml")


def key_line(host: SshHost) -> str:
    lines = host.known_hosts.read_text().splitlines()
    return next(line for line in lines if line.startswith(f"[127.0.0.1]:{host.port} "))


def offered_fingerprint(host: SshHost) -> str:
    """What ssh-keygen says about the host's key: the operator's way to check it."""
    kind, b64 = key_line(host).split()[1:3]
    key = paramiko.PKey.from_type_string(kind, base64.b64decode(b64))
    out = subprocess.run(["ssh-keygen", "-lf", "-"], input=key_line(host).split(None, 1)[1], text=True,
                         capture_output=True, check=True).stdout
    assert fingerprint(key) in out
    return fingerprint(key)


def marker_world(tmp_path: Path, host: SshHost, known: Path, **ssh: str) -> World:
    world = World(tmp_path, REGISTRY)
    path = write_host(world.hosts, "hv1", host)
    data = yaml.safe_load(path.read_text())
    data["ssh"] = ssh_of(host) | {"known_hosts": str(known)} | ssh
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return world


# -- defaults ----------------------------------------------------------------------------------

def test_strict_is_the_default_for_hypervisors_and_vms() -> None:
    assert SshSettings(host="h").host_key == "strict"
    assert VmSsh().host_key == "strict"


def test_the_client_policy_is_never_auto_add(host: SshHost, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    for accept_new in (False, True):
        conn = Session(endpoint(host, known, accept_new=accept_new), ONCE)._new_connection()
        policy = conn.client._policy
        assert not isinstance(policy, paramiko.AutoAddPolicy | paramiko.WarningPolicy), policy
        assert type(policy).__name__ == ("_AcceptNew" if accept_new else "_RejectUnknown")


# -- an unknown key ----------------------------------------------------------------------------

def test_unknown_host_key_is_refused_before_anything_runs(host: SshHost, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    world = marker_world(tmp_path, host, known)  # host_key not set: strict
    (run,) = world.run("test.a")
    assert run.exit_code == 4
    text = failure_text([run])
    assert text.startswith("hv1: FAILED (exit 4)")
    assert "hv1: before step test.a, taking the host lock: cannot connect to" in text  # host and step
    assert f"unknown host key: [127.0.0.1]:{host.port} is not in {known}" in text
    assert f"offered ssh-ed25519 {offered_fingerprint(host)}" in text
    assert "set `ssh.host_key: accept-new in " in text and "hosts/hv1.yaml` for first contact" in text
    assert f"ssh-keyscan -p {host.port} 127.0.0.1 >> {known}" in text
    assert "resume: invoke provision --host=hv1 --resume" in text
    assert count_auths(host) == 0  # refused before logging in
    assert not world.state_file("hv1", "ran").exists()  # nothing ran
    assert known.read_text() == ""  # nothing recorded


def test_accept_new_records_an_unknown_key_once(host: SshHost, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    world = marker_world(tmp_path, host, known, host_key="accept-new")
    (run,) = world.run("test.a")
    assert run.exit_code == 0, failure_text([run])
    assert known.read_text() == key_line(host) + "\n"
    (again,) = world.run("test.a", "test.b")  # known now: nothing is added again
    assert again.exit_code == 0
    assert known.read_text() == key_line(host) + "\n"
    assert world.state_file("hv1", "ran").read_text().split() == ["test.a", "test.b"]


# -- a changed key -----------------------------------------------------------------------------

@pytest.mark.parametrize("host_key", ["strict", "accept-new"])
def test_changed_host_key_is_refused_as_a_possible_impostor(sshd_farm: SshdFarm, host: SshHost, tmp_path: Path,
                                                            host_key: str) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(key_line(host) + "\n")  # the key we trusted
    sshd_farm.kill(host.name)
    rekeyed = sshd_farm.restart(host.name, new_host_key=True)  # same address, another key
    before = known.read_text()
    world = marker_world(tmp_path, rekeyed, known, host_key=host_key)
    (run,) = world.run("test.a")
    assert run.exit_code == 4
    text = failure_text([run])
    assert f"HOST KEY CHANGED: [127.0.0.1]:{host.port} offered ssh-ed25519 {offered_fingerprint(rekeyed)}" in text
    assert "this may be an impostor" in text and "nothing was sent" in text
    assert f"ssh-keygen -R '[127.0.0.1]:{host.port}' -f {known}" in text
    assert count_auths(rekeyed) == 0
    assert not world.state_file("hv1", "ran").exists()
    assert known.read_text() == before  # never overwritten, not even with accept-new


def test_session_refusal_is_a_connect_error_with_exit_4(host: SshHost, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    session = Session(endpoint(host, known), ONCE)
    with pytest.raises(ConnectError) as err:
        session.run(sh("touch {f}", f=str(tmp_path / "ran"), sudo=False, why="must never run"))
    assert err.value.exit_code == 4 and err.value.attempts == 1  # permanent: not retried
    assert "unknown host key" in str(err.value)
    assert not (tmp_path / "ran").exists()


# -- libvirt over libssh follows the same rule ---------------------------------------------------

def _libvirt_or_skip() -> None:
    pytest.importorskip("libvirt")
    if not Path("/run/libvirt/libvirt-sock").exists() and not Path("/var/run/libvirt/libvirt-sock").exists():
        pytest.skip("libvirtd is not running (bash lab/services.sh)")


def test_libvirt_over_ssh_refuses_an_unknown_key_and_accept_new_records_it(host: SshHost, tmp_path: Path) -> None:
    _libvirt_or_skip()
    known = tmp_path / "known_hosts"
    known.write_text("")
    strict = libvirt_client(endpoint(host, known))
    with pytest.raises(ConnectError) as err:
        strict.connect("qemu:///system")
    assert "libvirt at qemu+libssh://" in str(err.value)
    assert known.read_text() == ""
    assert count_auths(host) == 0
    opted = libvirt_client(endpoint(host, known, accept_new=True))
    try:
        assert opted.connect("qemu:///system").getVersion() > 0
    finally:
        opted.close()
    assert f"[127.0.0.1]:{host.port} " in known.read_text()
    assert count_auths(host) == 1


def test_libvirt_over_ssh_refuses_a_changed_key_even_with_accept_new(sshd_farm: SshdFarm, host: SshHost,
                                                                    tmp_path: Path) -> None:
    _libvirt_or_skip()
    known = tmp_path / "known_hosts"
    known.write_text(key_line(host) + "\n")
    sshd_farm.kill(host.name)
    rekeyed = sshd_farm.restart(host.name, new_host_key=True)
    before = known.read_text()
    for accept_new in (False, True):
        with pytest.raises(ConnectError):
            libvirt_client(endpoint(rekeyed, known, accept_new=accept_new)).connect("qemu:///system")
    assert known.read_text() == before
    assert count_auths(rekeyed) == 0
