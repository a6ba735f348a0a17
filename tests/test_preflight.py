"""preflight.access names every tool the steps run that is missing, with its package: on a busybox
chroot host (no libvirt, no QEMU) as the hypervisor, and with xorriso gone from this machine's PATH."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lib.steps.preflight import HYPERVISOR_TOOLS
from lib.steps.registry import REGISTRY
from tests.harness.chroot import busybox_root, chroot_host, new_roots_dir, remove_root
from tests.harness.inventory import write_host
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.world import World


@pytest.fixture
def bare_hv(sshd_farm: SshdFarm, tmp_path: Path) -> Iterator[SshHost]:
    base = new_roots_dir("preflight-")
    root = busybox_root(base / "hv", hostname="bare")
    host = chroot_host(sshd_farm, f"bare-{tmp_path.name[-10:]}", root)
    yield host
    sshd_farm.stop(host.name)
    remove_root(base)


def test_missing_tools_are_named_with_their_packages(tmp_path: Path, bare_hv: SshHost,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, REGISTRY)
    write_host(world.hosts, "hv1", bare_hv)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # this machine without xorriso
    (run,) = world.run("preflight.access", mode="verify")
    assert run.exit_code == 3
    rows = {c.name: c for r in run.results for c in r.checks}
    missing = {name: c.found for name, c in rows.items() if not c.ok}
    # busybox provides sha256sum; the rest the hypervisor lacks, each named with its package
    for tool in ("virsh", "virt-install", "virt-ssh-helper", "qemu-img", "numastat"):
        assert missing.pop(f"hypervisor tool {tool}") == f"missing (apt-get install {HYPERVISOR_TOOLS[tool]})"
    assert missing == {"control node tool xorriso": "missing (apt-get install xorriso)"}
    assert rows["hypervisor tool sha256sum"].ok and rows["root or passwordless sudo"].found == "root"
    assert "genisoimage" not in " ".join(rows)  # seeds are built locally; the hypervisor never runs it
