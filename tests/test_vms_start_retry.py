"""vms.start's start command is safe to retry: a start that timed out while libvirtd went on starting
the domain (seen on the NUMA lab's emulated host, tests/numa_lab) must not fail its retry with
"Domain is already active". Run against libvirt's test driver, whose domain `test` is always running.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from lib.inventory.load import load_inventory
from lib.steps.virt import start_command
from tests.inventory_helpers import hv1, write_inventory


def _run(name: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    data = hv1()
    data["vms"][0]["name"] = name
    vm = load_inventory(write_inventory(tmp, data)).hosts["hv1"].host.vms[0]
    command = start_command(vm, "test:///default")
    return subprocess.run(["bash", "-c", command.real], capture_output=True, text=True, timeout=60, check=False)


def test_a_retried_start_of_a_running_domain_succeeds(tmp_path: Path) -> None:
    plain = subprocess.run(["virsh", "-c", "test:///default", "start", "test"], capture_output=True, text=True,
                           timeout=60, check=False)
    assert plain.returncode != 0 and "already active" in plain.stderr  # what the retry used to fail on
    assert _run("test", tmp_path).returncode == 0


def test_a_start_of_a_missing_domain_still_fails(tmp_path: Path) -> None:
    done = _run("no-such-domain", tmp_path)
    assert done.returncode != 0 and "no-such-domain" in done.stderr
