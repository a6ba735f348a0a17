"""The topology picture: every core of every socket, who owns each thread, memory per node.

Pure: builds rich renderables from a loaded host; tasks.py decides where they go (terminal, SVG,
HTML). Tags (VM1, E, H) carry the meaning so the picture reads without colour too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lib.cpuset import format_cpulist
from lib.fit import Fit, stacked
from lib.inventory.load import LoadedHost

# 256-colour names, not the 16 ANSI ones: terminal and SVG themes remap those (blue came out pale,
# under white text). Each pairs a dark background with white text or a light one with black, checked
# in a real browser (lab/topology-screenshot.sh).
_VM_STYLES = ("bold white on navy_blue", "bold white on dark_green", "bold black on gold3", "bold white on purple4",
              "bold white on dark_red", "bold black on dark_cyan", "bold black on orange3", "bold white on grey35")
_EMU = "bold black on yellow1"
_HOST = "bold white on grey23"
_FREE = "dim"
_COLUMNS = 6


@dataclass(frozen=True)
class Owner:
    tag: str  # short label shown in the cell: VM1, E, H, or '.'
    style: str
    what: str  # long form for the legend


def _vm_tag(indexes: list[int]) -> str:
    """VM2, or VM2,3,4 for a CPU several VMs share (pin_sharing: allow): every VM on it, not the last."""
    return "VM" + ",".join(str(i + 1) for i in indexes)


def thread_owners(loaded: LoadedHost) -> dict[int, Owner]:
    """CPU -> who runs there: every VM pinned to it, and whose emulator threads it holds (E2,3,4)."""
    host = loaded.host
    emulators: dict[int, list[int]] = defaultdict(list)
    vcpus: dict[int, list[int]] = defaultdict(list)
    for i, vm in enumerate(host.vms):
        for cpu in sorted(vm.tuning.emulator_cpus):
            emulators[cpu].append(i)
        for cpu in dict.fromkeys(vm.pins):
            vcpus[cpu].append(i)
    owners: dict[int, Owner] = {}
    for cpu, vms in emulators.items():
        owners[cpu] = Owner("E" + ",".join(str(i + 1) for i in vms), _EMU,
                            "emulator threads of " + ", ".join(f"VM{i + 1}" for i in vms))
    for cpu in host.reserved_cpus:
        owners.setdefault(cpu, Owner("H", _HOST, "host"))
    for cpu, vms in vcpus.items():
        also = f"+{owners[cpu].tag}" if cpu in emulators else ""  # an overlap is an inventory error: show both
        names = ", ".join(host.vms[i].name for i in vms)
        owners[cpu] = Owner(_vm_tag(vms) + also, _VM_STYLES[vms[0] % len(_VM_STYLES)],
                            names if len(vms) == 1 else "shared: " + ", ".join(f"VM{i + 1}" for i in vms))
    return owners


def _size(mb: float) -> str:
    """Exact, so the parts add up to the total: whole GiB as GiB, anything else in MiB."""
    return f"{mb / 1024:g} GiB" if mb % 1024 == 0 else f"{mb:g} MiB"


def _memory_line(loaded: LoadedHost, node_id: int, node_mb: int) -> Fit:
    host = loaded.host
    parts: list[tuple[str, float, str]] = []
    for i, vm in enumerate(host.vms):
        nodes = vm.tuning.numa_memory.nodes
        if node_id in nodes:
            parts.append((f"VM{i + 1}", vm.memory_mb / len(nodes), _VM_STYLES[i % len(_VM_STYLES)]))
    reserve = host.host_reserved_memory_mb
    used = sum(mb for _, mb, _ in parts) + reserve
    free = node_mb - used
    width = 40
    bar = Text()
    # Block characters keep the bar readable without colour; the colour is each VM's background.
    for _, mb, style in parts:
        bar.append("█" * max(1, round(width * mb / node_mb)), style=style.split(" on ")[-1])
    bar.append("▒" * max(1, round(width * reserve / node_mb)), style="grey50")
    bar.append("·" * max(0, width - len(bar.plain)), style=_FREE)
    vms = " + ".join(f"{tag} {_size(mb)}" for tag, mb, _ in parts) or "no VMs"
    free_style = "bold red" if free < 0 else "green"

    def line(sum_break: str) -> Text:  # the sum on one line, or its total on the next (never "128⏎GiB")
        text = Text("memory ")
        text.append_text(bar.copy())
        text.append(f"\n       {vms} + host {_size(reserve)}{sum_break}= {_size(used)} of {_size(node_mb)}, ")
        text.append(f"free {_size(free)}", style=free_style)
        return text

    return Fit(line(" "), line("\n       "))


_CONFLICT = "bold white on red"


def _core_cell(index: int, threads: tuple[int, ...], owners: dict[int, Owner],
               conflicts: frozenset[int] = frozenset()) -> Text:
    cell = Text(f"core {index}\n", style="bold")
    for n, cpu in enumerate(threads):
        owner = owners.get(cpu, Owner(".", _FREE, "free"))
        cell.append(f"{cpu:>3} ")
        if cpu in conflicts:  # "!" marks it without colour too
            cell.append(f"{owner.tag}!", style=_CONFLICT)
            cell.append(" " * max(0, 3 - len(owner.tag)))
        else:
            cell.append(f"{owner.tag:<4}", style=owner.style)
        if n < len(threads) - 1:
            cell.append("\n")
    return cell


def topology_picture(loaded: LoadedHost, conflicts: frozenset[int] = frozenset()) -> RenderableType:
    """The picture; `conflicts` (an invalid inventory's clashing CPUs) are marked `!` and listed."""
    host, topo = loaded.host, loaded.host.topology
    owners = thread_owners(loaded)
    per_socket = topo.cores_per_socket
    panels: list[RenderableType] = []
    nodes = {n.id: n for n in topo.nodes}
    for socket in range(topo.sockets):
        cores = list(enumerate(loaded.cores))[socket * per_socket:(socket + 1) * per_socket]
        for node_id in sorted({core.node for _, core in cores}):
            node = nodes[node_id]
            grid = Table.grid(padding=(0, 2))
            here = [(k - socket * per_socket, core) for k, core in cores if core.node == node_id]
            for row in range(0, len(here), _COLUMNS):
                grid.add_row(*(_core_cell(k, core.threads, owners, conflicts)
                               for k, core in here[row:row + _COLUMNS]))
            title = (f"socket {socket} · NUMA node {node_id} · CPUs {node.cpus} · "
                     + (f"L3 {topo.l3_cache_mb} MB" if topo.l3_cache_mb else "no L3 reported"))
            panels.append(Panel(Group(grid, Text(), _memory_line(loaded, node_id, node.memory_mb)),
                                title=title, title_align="left", expand=False))
    heading = Text(f"{loaded.name}: {topo.sockets} sockets x {topo.cores_per_socket} cores x "
                 f"{topo.threads_per_core} threads, {topo.cpu_count} CPUs", style="bold")
    # Lines, not a table: at 80 columns a table squeezes names to "k3s-worke…". A line that does not
    # fit puts each phrase on a line of its own, so no phrase breaks ("60⏎GiB").
    width = max([len(o.tag) for o in owners.values()] + [3])
    vm_lines: list[RenderableType] = []
    for i, vm in enumerate(host.vms):
        numa = vm.tuning.numa_memory
        said = (f"{vm.name}: {vm.vcpu_count} vCPUs on {format_cpulist(vm.pins)},", f"emulator on "
                f"{vm.tuning.emulator_cpuset},", f"{_size(vm.memory_mb)} on node {numa.nodeset} ({numa.mode})")
        lines = []
        for sep in (" ", "\n" + " " * (width + 2)):
            text = Text(f"{f'VM{i + 1}':<{width}}", style=_VM_STYLES[i % len(_VM_STYLES)])
            text.append("  " + sep.join(said))
            lines.append(text)
        vm_lines.append(Fit(*lines))
    legend = Text()
    shown = {o.tag: o for o in owners.values()}
    for tag, owner in shown.items():  # the shared and emulator cells, each with whose it is
        if "," in tag or tag.startswith("E") or "+" in tag:
            cpus = format_cpulist(cpu for cpu, o in owners.items() if o.tag == tag)
            legend.append(f"{tag:<{width}}", style=owner.style)
            legend.append(f"  {owner.what}: CPUs {cpus}\n")
    if host.reserved_cpus:
        legend.append(f"{'H':<{width}}", style=_HOST)
        legend.append(f"  host reserved: CPUs {format_cpulist(host.reserved_cpus)}\n")
    free = topo.all_cpus - owners.keys()
    legend.append(f"{'.':<{width}}", style=_FREE)
    legend.append(f"  free: CPUs {format_cpulist(free) or 'none'}")
    if conflicts:
        legend.append(f"\n{'!':<{width}}", style=_CONFLICT)
        legend.append(f"  conflict: CPUs {format_cpulist(conflicts)} (the inventory's errors say which fields)")
    return Group(heading, *vm_lines, legend, *panels)


def pins_table(loaded: LoadedHost, replanned: dict[str, tuple[int, ...]] | None = None) -> RenderableType:
    """Per VM: its pins vCPU by vCPU, where they came from, and (with replanned) what the planner picks.
    A table where every cell fits whole; else one block per VM (the pins never squeezed away)."""
    title = f"{loaded.name}: vCPU pins"
    headers = ["VM", "vCPUs", "nodeset", "source", "pins (vCPU 0, 1, ...)", "cpulist", "emulator"]
    if replanned is not None:
        headers.append("planner")
    table = Table(title=title, title_justify="left")
    for col in headers:
        table.add_column(col, no_wrap=col != "pins (vCPU 0, 1, ...)", ratio=3 if col.startswith("pins") else None)
    rows: list[list[str | Text]] = []
    for vm in loaded.host.vms:
        source = "planned" if vm.name in loaded.planned else "given"
        row: list[str | Text] = [
            vm.name, str(vm.vcpu_count), f"{vm.tuning.numa_memory.nodeset} {vm.tuning.numa_memory.mode}", source,
            " ".join(map(str, vm.pins)), format_cpulist(vm.pins), vm.tuning.emulator_cpuset,
        ]
        if replanned is not None:
            same = replanned.get(vm.name) == vm.pins
            row.append(Text("same", style="green") if same
                       else Text(",".join(map(str, replanned.get(vm.name, ()))), style="yellow"))
        table.add_row(*row)
        rows.append(row)
    return Fit(table, stacked(headers, rows, title), wrap=True)
