"""The non-root path for real: a hypervisor test host reached as a real non-root user with Debian's
sudo (a NOPASSWD drop-in), and one whose user has no passwordless sudo.

Owner and mode of what the steps write are read back with os.stat: uploads (the k3s step's config,
binary, images and installer, through Session.put under real sudo) and the tuning step's files.
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from lib.inventory.load import load_inventory
from lib.options import HostInputs
from lib.remote import Endpoint, Session
from lib.shell import Secret
from lib.steps.base import Target, Upload
from lib.steps.k3s import plan_node
from lib.sudo import SUDOERS_DROPIN
from tests.harness.inventory import write_host
from tests.harness.k3s_standin import standin_artifacts
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.sysfs import HostShape
from tests.harness.users import login_user, sudo_available
from tests.harness.world import FAST, World
from tests.inventory_helpers import REPO

pytestmark = pytest.mark.skipif(not sudo_available(), reason="needs root, useradd and Debian's sudo package")


def as_user(farm: SshdFarm, name: str, user: str) -> Iterator[SshHost]:
    """sshd reads authorized keys as the user, who cannot read the farm's: give it its own copy."""
    ssh_dir = Path(f"/home/{user}/.ssh")
    ssh_dir.mkdir(mode=0o700)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(Path(f"{farm.client_key}.pub").read_text())
    for p in (ssh_dir, keys):
        shutil.chown(p, user, user)
    host = farm.start(name, extra_config=[f"Match User {user}", f"    AuthorizedKeysFile {keys}"])
    yield replace(host, user=user)
    farm.stop(host.name)


@pytest.fixture
def sudo_hv(sshd_farm: SshdFarm, world: World) -> Iterator[SshHost]:
    with login_user("n17s", nopasswd=True) as user:
        yield from as_user(sshd_farm, f"sudo-{world.tmp.name[-10:]}", user)


@pytest.fixture
def nopw_hv(sshd_farm: SshdFarm, world: World) -> Iterator[SshHost]:
    with login_user("n17p", nopasswd=False) as user:
        yield from as_user(sshd_farm, f"nopw-{world.tmp.name[-10:]}", user)


def owner_mode(path: Path) -> tuple[int, int, str]:
    st = path.stat()
    return st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))


def snapshot(path: Path) -> dict[str, tuple[bytes, tuple[int, int, str]]]:
    return {str(p): (p.read_bytes(), owner_mode(p)) for p in sorted(path.rglob("*")) if p.is_file()}


def test_preflight_passes_for_a_user_with_passwordless_sudo(world: World, sudo_hv: SshHost) -> None:
    write_host(world.hosts, "hv1", sudo_hv)
    (run,) = world.run("preflight.access")
    (result,) = run.results
    rows = {c.name: c for c in result.checks}
    sudo = rows["root or passwordless sudo"]
    assert sudo.ok and sudo.found == f"sudo -n as {sudo_hv.user}"
    assert rows["control node tool xorriso"].ok and rows["hypervisor tool virt-install"].ok
    assert result.status == "ok", [c for c in result.checks if not c.ok]


def test_a_user_without_passwordless_sudo_fails_preflight_and_nothing_changes(
        world: World, nopw_hv: SshHost, make_sysroot: Callable[[HostShape], Path]) -> None:
    sysroot = make_sysroot(HostShape())
    write_host(world.hosts, "hv1", nopw_hv, sysroot=sysroot)
    before = snapshot(sysroot)
    (run,) = world.run("preflight.access", "host.tune")
    line = f"{nopw_hv.user} ALL=(ALL) NOPASSWD:ALL"
    # The host lock is the first command that needs sudo: the run stops there, as preflight says.
    # (#14: a failure before any target ran is journalled as that step's failed result.)
    assert run.exit_code == 3 and [(r.step, r.status, r.exit_code) for r in run.results] == [
        ("preflight.access", "failed", 3)]
    assert f"user {nopw_hv.user} on hv1 cannot run sudo without a password" in run.error
    assert f"add '{line}' to {SUDOERS_DROPIN}" in run.error and "nothing was changed" in run.error
    assert "preflight.access" in world.out.getvalue() or run.error.startswith("preflight.access")
    # preflight's own rows say the same where no lock is taken (verify is read-only)
    (plan,) = world.run("preflight.access", mode="verify")
    (bad,) = [c for r in plan.results for c in r.checks if not c.ok]
    assert bad.name == "root or passwordless sudo" and f"add '{line}'" in bad.found
    assert snapshot(sysroot) == before


def test_tuning_files_written_under_sudo_are_root_owned(world: World, sudo_hv: SshHost,
                                                        make_sysroot: Callable[[HostShape], Path]) -> None:
    sysroot = make_sysroot(HostShape())
    for d in (sysroot.parent, sysroot):  # world-readable like a real /sys and /etc (mkdtemp made it 0700)
        d.chmod(0o755)
    write_host(world.hosts, "hv1", sudo_hv, sysroot=sysroot)
    (run,) = world.run("host.tune")
    assert run.exit_code == 0, run.results[0].error
    for name in ("etc/sysctl.d/90-numa-k3s.conf", "etc/tmpfiles.d/numa-k3s.conf"):
        assert owner_mode(sysroot / name) == (0, 0, "0o644"), name


def test_k3s_uploads_land_root_owned_with_their_modes_under_real_sudo(tmp_path: Path, sudo_hv: SshHost) -> None:
    loaded = load_inventory(REPO / "hosts", ["hv1"]).hosts["hv1"]
    vm = next(v for v in loaded.host.vms if v.k8s and v.k8s.role == "server")
    artifacts = standin_artifacts(tmp_path / "artifacts", loaded.host.k3s.version)
    hv1 = loaded.host.model_copy(update={"k3s": loaded.host.k3s.model_copy(update={"install": "airgap"})})
    target = Target(vm.name, "vm", Endpoint(vm.name, "127.0.0.1"), replace(loaded, host=hv1), vm,
                    inputs=HostInputs(k3s_token=Secret("t" * 32), k3s_artifacts=artifacts))
    uploads = [a for a in plan_node(target, None).actions if isinstance(a, Upload)]
    want = {"/etc/rancher/k3s/config.yaml": "0o600", "/usr/local/bin/k3s": "0o755",
            "/var/lib/numa-k3s/install.sh": "0o755"}
    assert {u.path for u in uploads} >= set(want), [u.path for u in uploads]
    dest = tmp_path / "vm"  # the VM's / (sudo creates the directories below it)
    endpoint = Endpoint("hv-sudo", sudo_hv.host, sudo_hv.port, sudo_hv.user, str(sudo_hv.key_file),
                        str(sudo_hv.known_hosts))
    session = Session(endpoint, FAST)
    try:
        for u in uploads:
            session.put(u.source or u.data, f"{dest}{u.path}", u.mode, owner=u.owner, group=u.group)
    finally:
        session.close()
    for u in uploads:
        expected = want.get(u.path, oct(u.mode))
        assert owner_mode(Path(f"{dest}{u.path}")) == (0, 0, expected), u.path
