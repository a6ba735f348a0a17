"""A fleet of N sshd hypervisors, each with its own tuned sysroot, and one fan-out run over all of them.

The run is what `invoke verify.bios` and `invoke verify.tuning` do, as one verify-mode run: inventory
loaded and validated, then bios.check and host.tune (their read-only verification) on every host at
once, one SSH session per host, run records under runs_dir. tests/reliability/test_scale.py asserts
on it; bench/fanout.py times it against the paramiko floor doing the same remote reads.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib.inventory.load import load_inventory
from lib.output import Output
from lib.results import HostRun
from lib.runbook import Runbook
from lib.runner import Engine, RunOptions
from lib.steps.registry import REGISTRY
from lib.steps.tuning import SYSCTL_FILE, TMPFILES_FILE, sysctl_content, tmpfiles_content
from lib.targets import targets_for
from tests.harness.inventory import write_host
from tests.harness.sshd import SshHost
from tests.harness.sysfs import HostShape, write_tree

STEPS = ("bios.check", "host.tune")
# The spec host, already tuned as the inventory's defaults ask (HostTuning): host.tune verifies clean.
TUNED = HostShape(governor="performance", numa_balancing=0, thp_enabled="always", thp_defrag="always")


def fanout_book() -> Runbook:
    return Runbook("fanout", "", "bios.check and host.tune, verified", tuple(REGISTRY[s]() for s in STEPS))


def write_fleet(hosts: list[SshHost], hosts_dir: Path, sysroots_dir: Path, names: list[str],
                shape_of: Callable[[str], HostShape] = lambda _name: TUNED) -> dict[str, Path]:
    """hosts/<name>.yaml per host, each over its own generated sysroot with host.tune's files persisted."""
    sysroots: dict[str, Path] = {}
    for name, ssh in zip(names, hosts, strict=True):
        sysroots[name] = write_tree(sysroots_dir / name, shape_of(name))
        write_host(hosts_dir, name, ssh, sysroot=sysroots[name])
    for name, loaded in load_inventory(hosts_dir, names).hosts.items():
        persisted = ((SYSCTL_FILE, sysctl_content(loaded.host)), (TMPFILES_FILE, tmpfiles_content(loaded.host)))
        for path, content in persisted:
            target = sysroots[name] / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
    return sysroots


def run_fanout(hosts_dir: Path, runs_dir: Path, **options: Any) -> list[HostRun]:
    """Load every host in hosts_dir and run the fan-out book over all of them in one Engine run."""
    hosts = list(load_inventory(hosts_dir).hosts.values())
    again = options.pop("resume_command", lambda h: f"invoke verify.bios --host={h}; invoke verify.tuning --host={h}")
    opts = RunOptions(mode=options.pop("mode", "verify"), runs_dir=runs_dir, resume_command=again, **options)
    return Engine(fanout_book(), opts, Output(io.StringIO(), tty=False)).run(hosts)


def floor_hosts(hosts_dir: Path) -> list[dict[str, Any]]:
    """bench/floor.py's host list: each host's SSH settings and the same facts commands the engine runs,
    batched into one script, so the floor does the engine's remote work in one exec."""
    book = fanout_book()
    out: list[dict[str, Any]] = []
    for loaded in load_inventory(hosts_dir).hosts.values():
        commands = [cmd.real for step in book.steps for t in targets_for(step, loaded)
                    if (cmd := step.facts_command(t)) is not None]
        ssh = loaded.host.ssh
        out.append({"host": ssh.host, "port": ssh.port, "user": ssh.user, "key": ssh.key_file,
                    "known_hosts": ssh.known_hosts, "script": "; ".join(f"( {c} )" for c in commands)})
    return out


def first_hosts(fleet_dir: Path, names: list[str], n: int, work: Path) -> Path:
    """The first n host files of a written fleet in work/hosts, and the floor's host list beside them
    (work/floor.json): one measured size of bench/fanout.py and bench/fleet.py."""
    (work / "hosts").mkdir(parents=True)
    for name in names[:n]:
        shutil.copy(fleet_dir / f"{name}.yaml", work / "hosts")
    (work / "floor.json").write_text(json.dumps(floor_hosts(work / "hosts")))
    return work


def journal(runs_dir: Path, run: HostRun) -> list[dict[str, Any]]:
    path = runs_dir / run.host / run.run_id / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]

