"""One probe's reads of a hypervisor: the very commands and parsers monitor, doctor and host.tune use.

Nothing here is a second copy: each VM is sampled by observe.sample_command / parse_sample (the
`monitor` read), the live pins come from libvirt as verify.vms reads them, the host's work on vCPU
CPUs from confine's read (doctor's), and governors, numa_balancing and THP from host.tune's read.
All reads are read-only, and the host lock is never taken: a probe must not wait behind a provision
(nor hold one up), and it changes nothing.

The reads of one host run side by side on its one SSH connection (paramiko multiplexes channels),
so a probe costs about one interval plus the slowest read, not their sum.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lib import confine
from lib.domain import LiveDomain, live_domain
from lib.inventory.model import Host
from lib.steps.observe import VmSample, parse_sample, sample_command
from lib.steps.tuning import TuneFacts, parse_tune_facts, tune_facts_command
from lib.transport import Shell


@dataclass(frozen=True)
class HostSample:
    samples: dict[str, VmSample]  # by VM name
    live: dict[str, LiveDomain | None]  # None: the domain is not defined
    tune: TuneFacts
    work: confine.ConfineFacts
    interval: float


def _vm(session: Shell, host: Host, name: str, interval: float) -> tuple[VmSample, LiveDomain | None]:
    vm = next(v for v in host.vms if v.name == name)
    live = live_domain(session.live_domain(host.libvirt_uri, vm.name))
    mode = live.numa_mode if live else ""
    out = session.run(sample_command(vm, host.sysroot, host.libvirt_uri, interval)).stdout
    return parse_sample(out, interval, mode), live


def sample_host(session: Shell, host: Host, interval: float) -> HostSample:
    """Every read a probe needs; any read's error (connection lost after retries, a command failing)
    propagates: a probe is whole or failed, never half a host reported as healthy."""
    with ThreadPoolExecutor(max_workers=len(host.vms) + 2, thread_name_prefix="probe-read") as pool:
        vms = {vm.name: pool.submit(_vm, session, host, vm.name, interval) for vm in host.vms}
        tune = pool.submit(lambda: parse_tune_facts(session.run(tune_facts_command(host.sysroot)).stdout,
                                                    host.sysroot))
        work = pool.submit(lambda: confine.parse_confine_facts(
            session.run(confine.confine_facts_command(host, interval)).stdout, interval))
        done = {name: future.result() for name, future in vms.items()}
        return HostSample(samples={n: s for n, (s, _) in done.items()}, live={n: lv for n, (_, lv) in done.items()},
                          tune=tune.result(), work=work.result(), interval=interval)
