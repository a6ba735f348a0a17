"""A fact source that does not answer is reported as that, never as the absence of what it would have
shown, and nothing is planned from it: libvirt not answering (this test's own libvirt URI points at
an empty /run/libvirt: its sshd runs in a mount namespace of its own, so libvirtd is "down" for that
host only and the shared daemon is never touched) and an unreadable file."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.inventory import small_vm, write_host
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.sysfs import HostShape, write_tree
from tests.harness.world import World

# sshd (and every command and libvirt connection through it) sees an empty /run/libvirt: no socket.
NO_LIBVIRTD = ("unshare", "-m", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs -o size=1m tmpfs /run/libvirt && exec "$@"', "sh")


@pytest.fixture
def libvirtd_down(sshd_farm: SshdFarm, world: World) -> Iterator[SshHost]:
    host = sshd_farm.start(f"nolv-{world.tmp.name[-12:]}", wrap=NO_LIBVIRTD)
    yield host
    sshd_farm.stop(host.name)


def vm_named(name: str) -> dict[str, object]:
    return {**small_vm(name, 0, role="server"), "disk_path": f"/tmp/{name}.qcow2"}


def defined(name: str) -> bool:
    done = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", name], capture_output=True, text=True,
                          check=False, timeout=60)
    return done.returncode == 0


def test_libvirt_not_answering_is_never_read_as_a_missing_domain(world: World, libvirtd_down: SshHost) -> None:
    name = f"i14-{secrets.token_hex(3)}"  # defined nowhere, so nothing of anyone else's is touched
    write_host(world.hosts, "hv1", libvirtd_down, vms=[vm_named(name)], libvirt_uri="qemu:///system")

    (check,) = world.run("vms.define", "vms.start", mode="verify")
    by_step = {r.step: r for r in check.results}
    assert check.exit_code == 4  # could not read: not 5 (a verified difference)
    for step in ("vms.define", "vms.start"):
        result = by_step[step]
        assert (result.status, result.exit_code, result.checks) == ("failed", 4, ()), result
    assert "failed to connect to the hypervisor" in by_step["vms.define"].error
    assert "/var/run/libvirt/libvirt-sock" in by_step["vms.define"].error
    assert "libvirt at " in by_step["vms.start"].error and "did not answer" in by_step["vms.start"].error

    (apply,) = world.run("vms.define")
    (result,) = apply.results
    assert (result.status, result.exit_code) == ("failed", 4)
    assert result.commands == ()  # nothing was planned from the unanswered read, so nothing ran
    assert not defined(name)


def test_a_missing_domain_is_still_reported_as_not_defined(world: World, hv: SshHost) -> None:
    name = f"i14-{secrets.token_hex(3)}"
    write_host(world.hosts, "hv1", hv, vms=[vm_named(name)], libvirt_uri="qemu:///system")
    (check,) = world.run("vms.define", mode="verify")
    (result,) = check.results
    assert (result.status, result.exit_code) == ("failed", 5)
    assert [(c.name, c.found) for c in result.checks] == [(f"domain {name}", "not defined")]


def test_unreadable_fact_file_is_reported_with_its_path_and_nothing_is_planned(
        world: World, hv: SshHost, tmp_path: Path) -> None:
    root = write_tree(tmp_path / "sysroot", HostShape())
    persisted = root / "etc/sysctl.d/90-numa-k3s.conf"
    persisted.mkdir(parents=True)  # there, but not a readable file
    write_host(world.hosts, "hv1", hv, sysroot=root)
    (check,) = world.run("host.tune", mode="verify")
    (result,) = check.results
    assert (result.status, result.exit_code, result.checks) == ("failed", 4, ())
    assert f"unreadable: {persisted}" in result.error and "Is a directory" in result.error
    (apply,) = world.run("host.tune")
    (applied,) = apply.results
    assert applied.status == "failed" and applied.commands == ()
    assert persisted.is_dir() and not (root / "etc/tmpfiles.d/numa-k3s.conf").exists()
