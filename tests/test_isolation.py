"""host.isolation and host.reboot over real sshd against a generated sysroot: the GRUB drop-in written
once, the running command line read from /proc/cmdline, the reboot only ever planned with --reboot."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lib.steps.isolation import DROPIN, UPDATE_GRUB
from lib.steps.registry import REGISTRY
from tests.harness.inventory import small_vm, write_host
from tests.harness.sshd import SshdFarm
from tests.harness.sysfs import HostShape, write_tree
from tests.harness.world import World

# small_vm(i) pins vCPUs to CPUs i+1 and i+37: with two VMs, CPUs 1-2 and 37-38.
ARGS = "isolcpus=managed_irq,domain,1-2,37-38 nohz_full=1-2,37-38 rcu_nocbs=1-2,37-38"


@pytest.fixture
def world(tmp_path: Path, sshd_farm: SshdFarm) -> Iterator[World]:
    host = sshd_farm.start(f"iso-{tmp_path.name[-12:]}")
    world = World(tmp_path, REGISTRY)
    world.host = host  # type: ignore[attr-defined]
    yield world
    sshd_farm.stop(host.name)


def sysroot(world: World, *, update_grub: bool = True) -> Path:
    root = write_tree(world.tmp / "sysroot", HostShape())
    (root / "proc/sys/kernel/random").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/kernel/random/boot_id").write_text("3f0c3b8e-1111-4d6e-9a0b-5f7c2d1e0a11\n")
    if update_grub:  # present, never run under a sysroot (the host's own grub.cfg is not this tree's)
        tool = root / UPDATE_GRUB.lstrip("/")
        tool.parent.mkdir(parents=True, exist_ok=True)
        tool.write_text("#!/bin/sh\necho must not run under a sysroot >&2; exit 1\n")
        tool.chmod(0o755)
    return root


def host_file(world: World, root: Path, *, isolation: bool) -> None:
    write_host(world.hosts, "hv1", world.host, sysroot=root,  # type: ignore[attr-defined]
               vms=[small_vm("vm1", 0, role="server"), small_vm("vm2", 1)], tuning={"kernel_isolation": isolation})


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_off_by_default_nothing_is_written_and_no_reboot_is_planned(world: World) -> None:
    root = sysroot(world)
    host_file(world, root, isolation=False)
    (run,) = world.run("host.isolation", "host.reboot")
    assert [(r.status, r.commands) for r in run.results] == [("ok", ()), ("ok", ())], run.results
    assert run.results[0].reason == "kernel isolation off: no drop-in"
    assert not (root / DROPIN.lstrip("/")).exists()


def test_the_dropin_is_written_once_and_the_running_kernel_is_a_warning_until_a_reboot(world: World) -> None:
    root = sysroot(world)
    host_file(world, root, isolation=True)
    (run,) = world.run("host.isolation", "host.reboot")
    assert run.exit_code == 0, [r.error for r in run.results]
    isolation, reboot = run.results
    assert isolation.status == "changed"
    dropin = root / DROPIN.lstrip("/")
    assert f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX {ARGS}"' in dropin.read_text()
    assert stat.S_IMODE(dropin.stat().st_mode) == 0o644
    rows = {c.name: (c.kind, c.found) for c in isolation.checks}
    assert rows[f"boot loader drop-in {DROPIN}"] == ("passed", "as the spec says")
    assert rows["kernel command line (running)"][0] == "warning"
    assert "invoke step host.reboot --host=hv1 --reboot" in rows["kernel command line (running)"][1]
    # Without --reboot nothing is rebooted: the step says why and how, and runs no command.
    assert reboot.status == "ok" and reboot.commands == ()
    assert any("nothing was rebooted: invoke step host.reboot --host=hv1 --reboot" in w for w in reboot.warnings)
    (again,) = world.run("host.isolation")
    assert again.results[0].status == "ok" and again.results[0].commands == ()
    # After the reboot the running kernel carries them: every row passes.
    cmdline = root / "proc/cmdline"
    cmdline.write_text(cmdline.read_text().strip() + f" {ARGS}\n")
    (check,) = world.run("host.isolation", "host.reboot", mode="verify")
    assert check.exit_code == 0 and all(c.kind == "passed" for r in check.results for c in r.checks), check.results


def test_the_reboot_is_planned_only_with_the_flag(world: World) -> None:
    root = sysroot(world)
    host_file(world, root, isolation=True)
    (plain,) = world.run("host.reboot", mode="plan")
    assert plain.results[0].planned == ()
    (flagged,) = world.run("host.reboot", mode="plan", flags={"reboot": True})
    shown = "\n".join(flagged.results[0].planned)
    assert "systemctl reboot" in shown and "wait until hv1 is back with the new command line" in shown
    assert flagged.results[0].reason.startswith("reboot hv1: its running kernel lacks isolcpus=")


def test_without_update_grub_it_is_refused_by_name_and_nothing_changes(world: World) -> None:
    root = sysroot(world, update_grub=False)
    host_file(world, root, isolation=True)
    before = snapshot(root)
    (run,) = world.run("host.isolation")
    (result,) = run.results
    assert (result.status, result.exit_code, result.commands) == ("failed", 4, ())
    assert "hv1: tuning.kernel_isolation needs GRUB's update-grub" in (result.error or "")
    assert "nothing was changed" in (result.error or "")
    assert snapshot(root) == before


def test_turned_off_the_dropin_is_removed(world: World) -> None:
    root = sysroot(world)
    host_file(world, root, isolation=True)
    world.run("host.isolation")
    host_file(world, root, isolation=False)
    (run,) = world.run("host.isolation")
    assert run.results[0].status == "changed" and not (root / DROPIN.lstrip("/")).exists()
    assert run.results[0].checks[0].kind == "passed"
