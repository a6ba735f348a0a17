"""Who a step runs against: endpoints and targets built from the inventory (pure)."""

from __future__ import annotations

from dataclasses import replace

from lib.errors import ToolError
from lib.inventory.load import LoadedHost
from lib.inventory.model import VM
from lib.options import HostInputs, RunFlags
from lib.steps.base import AnyStep, Mode, Target
from lib.transport import Endpoint


class TargetError(ToolError):
    exit_code = 2


def hypervisor_endpoint(loaded: LoadedHost) -> Endpoint:
    ssh = loaded.host.ssh
    return Endpoint(loaded.name, ssh.host, ssh.port, ssh.user, ssh.key_file, ssh.known_hosts,
                    accept_new=ssh.host_key == "accept-new",
                    host_key_opt_in=f"ssh.host_key: accept-new in {loaded.file}")


def vm_endpoint(loaded: LoadedHost, vm: VM, *, discover: bool = False) -> Endpoint:
    if vm.ssh is None or (vm.ssh.host is None and not discover):
        raise TargetError(f"{loaded.file}: vms[{loaded.host.vms.index(vm)}].ssh: {vm.name} has no SSH address; "
                          "steps that run inside VMs need vms[].ssh.host")
    hv = hypervisor_endpoint(loaded)
    # host "" when discovered at run time (vms.start asks virsh domifaddr).
    return Endpoint(vm.name, vm.ssh.host or "", vm.ssh.port, vm.ssh.user, vm.ssh.key_file or hv.key_file,
                    vm.ssh.known_hosts or hv.known_hosts, hv if vm.ssh.jump else None,
                    accept_new=vm.ssh.host_key == "accept-new",
                    host_key_opt_in=f"vms[{loaded.host.vms.index(vm)}].ssh.host_key: accept-new in {loaded.file}")


def targets_for(step: AnyStep, loaded: LoadedHost, flags: RunFlags | None = None, *, inputs: HostInputs | None = None,
                mode: Mode = "apply", run_id: str = "") -> list[Target]:
    """The step's targets; with the `vms` flag (--vm), per-VM steps only on those VMs."""
    run = Target(loaded.name, "hypervisor", hypervisor_endpoint(loaded), loaded, None, flags or RunFlags(),
                 mode=mode, inputs=inputs or HostInputs(), run_id=run_id)
    only = set(run.flags.vms)
    targets = _all_targets(step, loaded, run)
    return [t for t in targets if t.kind == "hypervisor" or t.name in only] if only else targets


def _all_targets(step: AnyStep, loaded: LoadedHost, hv: Target) -> list[Target]:
    """hv: the hypervisor's target, whose run-wide fields (flags, inputs, mode, run id) every target shares."""
    if step.targets == "hypervisor":
        return [hv]
    servers = [vm for vm in loaded.host.vms if vm.k8s and vm.k8s.role == "server"]
    if step.targets == "vms":  # one target per VM, commands run on the hypervisor (virsh, qemu-img)
        return _vm_targets(loaded, hv, servers)
    vms = list(loaded.host.vms)
    if step.targets == "server":
        vms = servers
    elif step.targets == "agents":
        vms = [vm for vm in vms if vm.k8s and vm.k8s.role == "agent"]
    peer = vm_endpoint(loaded, servers[0]) if step.targets == "agents" and servers else None
    return [replace(hv, name=vm.name, kind="vm", endpoint=vm_endpoint(loaded, vm), vm=vm, peer=peer) for vm in vms]


def _vm_targets(loaded: LoadedHost, hv: Target, servers: list[VM]) -> list[Target]:
    """One target per VM on the hypervisor's endpoint; the VM's guest where it answers SSH, and the k3s
    server as peer: where a VM's node is cordoned and drained before a restart."""
    server = vm_endpoint(loaded, servers[0]) if servers and servers[0].ssh and servers[0].ssh.host else None
    return [replace(hv, name=vm.name, kind="vm", vm=vm, peer=server,
                    guest=vm_endpoint(loaded, vm, discover=True) if vm.ssh else None) for vm in loaded.host.vms]
