"""An inventory host as written, even when its rules fail: for a picture of what is wrong (pure but for
reading the files). `invoke topology` draws it with the conflicting CPUs marked, then exits 2: a
picture of an overlap is most useful exactly when the inventory is refused (#30). Nothing else may
use a host loaded this way; every other task refuses an invalid inventory before it starts.
"""

from __future__ import annotations

from pathlib import Path

from lib.errors import Problem
from lib.inventory.load import DEFAULTS, LoadedHost, _load_host, _read_yaml
from lib.inventory.model import Host


def load_despite_rules(hosts_dir: Path, name: str) -> LoadedHost | None:
    """The host with its pins, when its file parses and its topology holds; None otherwise."""
    problems: list[Problem] = []
    defaults_file = hosts_dir / DEFAULTS
    defaults = (_read_yaml(defaults_file, problems) or {}) if defaults_file.exists() else {}
    file = hosts_dir / f"{name}.yaml"
    return _load_host(name, file, defaults, str(defaults_file), problems) if file.exists() else None


def conflict_cpus(host: Host) -> frozenset[int]:
    """CPUs the rules refuse to share: two VMs' vCPUs (unless pin_sharing: allow), a vCPU and an
    emulator, a vCPU and the host's reserved CPUs."""
    seen: dict[int, int] = {}
    shared: set[int] = set()
    for i, vm in enumerate(host.vms):
        for cpu in set(vm.pins):
            if cpu in seen and seen[cpu] != i:
                shared.add(cpu)
            seen.setdefault(cpu, i)
    vcpus = frozenset(seen)
    emulators = frozenset().union(*(vm.tuning.emulator_cpus for vm in host.vms))
    clashes = (vcpus & emulators) | (vcpus & host.reserved_cpus)
    return frozenset(clashes | (shared if host.pin_sharing != "allow" else set()))
