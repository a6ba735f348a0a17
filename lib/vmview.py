"""Beside each VM's pins: what its domain carries (lib/vmperf.py), for `invoke topology` and `invoke pins`."""

from __future__ import annotations

from rich.text import Text

from lib.confine import host_cpus
from lib.cpuset import format_cpulist
from lib.fit import Fit, table_or_stack
from lib.inventory.load import LoadedHost
from lib.vmperf import domain_tuning


def _pages(kb: int | None) -> str:
    if not kb:
        return "normal pages"
    return f"{kb // 1048576} GiB hugepages, locked" if kb >= 1048576 else f"{kb // 1024} MiB hugepages, locked"


def vm_settings_table(loaded: LoadedHost) -> Fit:
    """A table where every cell fits whole, else one block per VM (lib/fit.py): never "k3s-worke…"."""
    host = loaded.host
    passthrough = False
    rows: list[list[str | Text]] = []
    for vm in host.vms:
        t = domain_tuning(host, loaded.cores, vm)
        passthrough |= t.cache_passthrough
        io = " ".join(f"{target}:{i}" for target, i in t.iothreads.items())
        rows.append([vm.name, str(t.topology), _pages(t.hugepage_kb),
                     f"{io} on {format_cpulist(t.iothread_cpus)}" if io else "-",
                     f"{t.cachetune.size_kb // 1024} MB exclusive" if t.cachetune else "shared"])
    c = host.tuning.confinement
    confined = [what for what, on in (("host processes", c.host_cpus), ("IRQs", c.irqs)) if on]
    pages = ", ".join(f"node {r.node} {r.count} x {r.size}" for r in host.hugepages)
    caption = "\n".join([
        "every VM: nosharepages, no balloon" + ("; CPU host-passthrough with cache passthrough" if passthrough else ""),
        f"host work: {' and '.join(confined)} on CPUs {format_cpulist(host_cpus(host))}" if confined
        else "host work: not confined (tuning.confinement)",
        f"hugepages reserved: {pages or 'none'}"])
    return table_or_stack(["VM", "guest topology", "memory", "I/O threads", "L3"], rows,
                          f"{loaded.name}: what each domain carries beyond its pins", caption)
