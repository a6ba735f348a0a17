"""The registry of steps a runbook may name.

Each name maps to where its class lives, and the module is imported only when a runbook names it:
a command pays for its own steps' imports, not all 25 (start-up, issue #30). A new step adds one
line here; tests/test_step_registry.py checks every line against the class's own `name`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module

from lib.steps.base import AnyStep, Step

# The order is the registry's order (listings, did-you-mean), the order runbooks usually run in.
WHERE: dict[str, tuple[str, str]] = {
    "preflight.access": ("lib.steps.preflight", "PreflightAccess"),
    "bios.check": ("lib.steps.bios", "BiosCheck"),
    "host.tune": ("lib.steps.tuning", "HostTune"),
    "host.isolation": ("lib.steps.isolation", "HostIsolation"),
    "host.reboot": ("lib.steps.isolation", "HostReboot"),
    "vms.unmanaged": ("lib.steps.unmanaged", "VmsUnmanaged"),
    "images.clone": ("lib.steps.images", "ImagesClone"),
    "cloudinit.build": ("lib.steps.cloudinit", "CloudinitBuild"),
    "vms.restart.agents": ("lib.steps.restart", "VmsRestartAgents"),
    "vms.restart.server": ("lib.steps.restart", "VmsRestartServer"),
    "vms.define": ("lib.steps.virt", "VmsDefine"),
    "vms.start": ("lib.steps.virt", "VmsStart"),
    "k3s.server": ("lib.steps.k3s", "K3sServer"),
    "k3s.addons": ("lib.steps.k3s", "K3sAddons"),
    "k3s.agents": ("lib.steps.k3s", "K3sAgents"),
    "k3s.taints": ("lib.steps.k3s", "K3sTaints"),
    "k3s.agents.remove": ("lib.steps.k3s", "K3sAgentsRemove"),
    "k3s.server.remove": ("lib.steps.k3s", "K3sServerRemove"),
    "disks.owned": ("lib.steps.teardown", "DisksOwned"),
    "vms.remove": ("lib.steps.teardown", "VmsRemove"),
    "disks.remove": ("lib.steps.teardown", "DisksRemove"),
    "numa.check": ("lib.steps.observe", "NumaCheck"),
    "emulator.check": ("lib.steps.observe", "EmulatorCheck"),
    "monitor.sample": ("lib.steps.observe", "MonitorSample"),
    "doctor": ("lib.steps.observe", "Doctor"),
}


class _Registry(Mapping[str, type[AnyStep]]):
    """Step name -> step class, importing the class's module on first use."""

    def __getitem__(self, name: str) -> type[AnyStep]:
        module, attr = WHERE[name]
        found = getattr(import_module(module), attr)
        if not (isinstance(found, type) and issubclass(found, Step)):
            raise TypeError(f"lib/steps/registry.py: {module}.{attr} (for {name!r}) is not a Step")
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(WHERE)

    def __len__(self) -> int:
        return len(WHERE)


REGISTRY: Mapping[str, type[AnyStep]] = _Registry()
