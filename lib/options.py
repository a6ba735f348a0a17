"""What a step may honour besides the inventory: the run's flags and the host's local inputs.

Both are frozen values the engine hands every target (Target.flags, Target.inputs); no step indexes
a dict or changes them. RunFlags comes from the operator's command line (tasks.py builds it);
HostInputs is what steps read on this machine once per host and run (Step.host_inputs: the cluster
token, the airgap folder, the seed checksums, the local tools), merged by the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from lib.shell import Secret


@dataclass(frozen=True)
class RunFlags:
    """The run's flags a step may honour; each default is "not given"."""

    redefine: bool = False  # vms.define: replace a drifted, shut-off domain
    yes: bool = False  # destructive steps: really delete
    include_data: bool = False  # teardown: the data disks too
    restart: bool = False  # vms.restart.*: restart a VM for a change only a restart applies
    force_off: bool = False  # with restart: power off past the shutdown deadline
    drain_timeout: int = 0  # with restart: seconds kubectl drain may take (0: the step's default)
    shutdown_timeout: int = 0  # with restart: seconds the ACPI shutdown may take (0: the step's default)
    reboot: bool = False  # host.reboot: reboot a hypervisor whose kernel lacks the isolation arguments
    interval: float | None = None  # observation steps: seconds between two samples (None: the step's default)
    max_remote: float | None = None  # numa.check: the largest remote-memory share (None: the spec's 1 %)
    prometheus: bool = False  # monitor.sample: carry the numbers as one machine-readable row
    vms: tuple[str, ...] = ()  # --vm: the per-VM steps run only on these VMs (empty: all)


@dataclass(frozen=True)
class HostInputs:
    """Local inputs of one host's run, read on this machine (Step.host_inputs); empty: not read."""

    # The cluster token: a Secret (*** in any text), and never in this value's repr either.
    k3s_token: Secret | None = field(default=None, repr=False)
    k3s_artifacts: Path | None = None  # the checked airgap folder
    seed_sha256: Mapping[str, str] = field(default_factory=dict)  # VM -> the seed ISO this machine builds
    local_tools: Mapping[str, str] = field(default_factory=dict)  # tool -> its path here ("" missing)

    def merged(self, other: HostInputs) -> HostInputs:
        """These inputs with every one the other sets (two steps reading one input read the same value)."""
        return replace(self, **{f.name: getattr(other, f.name) for f in fields(other) if getattr(other, f.name)})
