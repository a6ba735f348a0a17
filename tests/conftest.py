"""Shared fixtures; the logic lives in tests/harness (see tests/README.md)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import pytest

from lib.steps.registry import REGISTRY
from tests.harness.inventory import LOCKS_HANDED_OUT
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.sysfs import HostShape, fast_tmp_dir, write_tree
from tests.harness.world import World


@pytest.fixture(autouse=True, scope="session")
def test_lock_files() -> Iterator[None]:
    """The hosts' lock files live in /run/lock (rule lock.path): those a test left (a refused run's
    decoy, a held lock it wrote) go when the session ends."""
    yield
    for path in LOCKS_HANDED_OUT:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def secrets_of_this_test_only() -> Iterator[None]:
    """lib/shell.py keeps the secrets to mask and the public names for the whole process, as a run
    needs. Across tests that would leak: a test's weak token 'k3s' would mask every later test's
    'k3s'. Each test starts from what was known before it and leaves nothing behind."""
    from lib import shell

    with shell._known_lock:
        known, public = set(shell._known), set(shell._public)
    yield
    with shell._known_lock:
        shell._known.clear()
        shell._known.update(known)
        shell._public.clear()
        shell._public.update(public)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME per test, so the operator's ~/.ssh/config, keys and ~/.fabric.yaml never leak in.

    Fabric expands "~/.ssh/config" each time a Config is built, and paramiko's look_for_keys expands
    "~/.ssh/id_*" at connect time, so setting HOME is enough. The agent is cut off for the same reason.
    /etc/ssh/ssh_config is still read by Fabric (system level); it only holds Debian defaults here.
    """
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@pytest.fixture(scope="session")
def sshd_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdFarm]:
    with SshdFarm(tmp_path_factory.mktemp("sshd")) as farm:
        yield farm


@pytest.fixture
def make_sysroot() -> Iterator[Callable[[HostShape], Path]]:
    """make_sysroot(HostShape(...)) -> a fresh sysroot for this test, on tmpfs when there is one."""
    base = Path(tempfile.mkdtemp(prefix="sysroot-", dir=fast_tmp_dir()))
    seq = count(1)
    yield lambda shape: write_tree(base / f"sysroot{next(seq)}", shape)
    shutil.rmtree(base, ignore_errors=True)  # tmpfs is RAM: never leave trees behind


@pytest.fixture
def spec_sysroot(make_sysroot: Callable[[HostShape], Path]) -> Path:
    """The spec host: 2 sockets x 18 cores x 2 threads, node0 = 0-17,36-53, node1 = 18-35,54-71."""
    return make_sysroot(HostShape())


@pytest.fixture
def ssh_host(sshd_farm: SshdFarm, spec_sysroot: Path) -> Iterator[SshHost]:
    """One running sshd host for this test, carrying the spec sysroot; stopped afterwards."""
    host = sshd_farm.start("hv1", sysroot=spec_sysroot)
    yield host
    sshd_farm.stop(host.name)


@pytest.fixture
def world(tmp_path: Path) -> World:
    """This test's hosts/, runbooks/, state and records dirs, running the product's steps (a module
    whose world differs, such as tests/engine_steps.py's test steps, defines its own `world`)."""
    return World(tmp_path, REGISTRY)


@pytest.fixture
def hv(sshd_farm: SshdFarm, world: World) -> Iterator[SshHost]:
    """A running sshd for this test's world; writing hosts/hv1.yaml for it is the test's (or its
    module's `hv`, which can take this one: `def hv(hv, world)`)."""
    host = sshd_farm.start(f"hv-{world.tmp.name[-12:]}")
    yield host
    sshd_farm.stop(host.name)
