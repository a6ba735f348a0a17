"""The registry of steps a runbook may name."""

from __future__ import annotations

from lib.steps.base import AnyStep
from lib.steps.bios import BiosCheck
from lib.steps.cloudinit import CloudinitBuild
from lib.steps.images import ImagesClone
from lib.steps.isolation import HostIsolation, HostReboot
from lib.steps.k3s import K3sAddons, K3sAgents, K3sAgentsRemove, K3sServer, K3sServerRemove, K3sTaints
from lib.steps.observe import Doctor, EmulatorCheck, MonitorSample, NumaCheck
from lib.steps.preflight import PreflightAccess
from lib.steps.restart import VmsRestartAgents, VmsRestartServer
from lib.steps.teardown import DisksOwned, DisksRemove, VmsRemove
from lib.steps.tuning import HostTune
from lib.steps.unmanaged import VmsUnmanaged
from lib.steps.virt import VmsDefine, VmsStart

STEPS: tuple[type[AnyStep], ...] = (PreflightAccess, BiosCheck, HostTune, HostIsolation, HostReboot, VmsUnmanaged,
                                   ImagesClone, CloudinitBuild, VmsRestartAgents, VmsRestartServer,
                                   VmsDefine, VmsStart, K3sServer, K3sAddons, K3sAgents, K3sTaints, K3sAgentsRemove,
                                   K3sServerRemove, DisksOwned, VmsRemove, DisksRemove, NumaCheck, EmulatorCheck,
                                   MonitorSample, Doctor)
REGISTRY: dict[str, type[AnyStep]] = {step.name: step for step in STEPS}
