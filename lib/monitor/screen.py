"""monitor's screen: every VM of a host on one screen, whatever the pane (pure; rich renderables).

One table per host with a column per VM (a 100x30 pane shows all four of hv1's; one table per VM
showed VM1 and half of VM2), per-vCPU values summarised (lib/vcpu_summary.py), a value the same for
every VM shown once under the table, and each column headed. Where the VM columns do not fit (80
columns, long values), one table per VM instead: nothing is cut, it only takes more lines.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lib.fit import Fit
from lib.shell import mask
from lib.vcpu_summary import summarise
from lib.verdicts import row_state


def _value(row: dict[str, Any]) -> Text:
    text = mask(summarise(str(row["text"])))
    state = row_state(row)
    if state == "ok":
        return Text(text)
    if state == "not available":  # never "ok": it was not measured (lib/verdicts.py)
        return Text(f"{text}  N/A", style="yellow")
    return Text(f"{text}  BREACH", style="bold red")  # in words too: NO_COLOR, logs, colour-blind readers


_STATUS = {"ok": "ok", "breach": "BREACH", "not available": "N/A"}


def _per_vm(host: str, vms: dict[str, dict[str, dict[str, Any]]]) -> RenderableType:
    tables: list[RenderableType] = []
    for vm, rows in vms.items():
        table = Table(title=f"{host} / {vm}", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("metric", "value", "threshold", "status"):
            table.add_column(column)
        for name, row in rows.items():
            table.add_row(name, _value(row), str(row["threshold"]), _STATUS[row_state(row)])
        tables.append(table)
    return Group(*tables)


def _by_metric(host: str, vms: dict[str, dict[str, dict[str, Any]]]) -> RenderableType:
    names = list(dict.fromkeys(name for rows in vms.values() for name in rows))
    # Columns headed VM1, VM2, ... (the topology picture's tags), their names in full on the key line:
    # a 20-character name as a header would claim its width from the values.
    key = Text(f"{host}: " + "   ".join(f"VM{i + 1} {vm}" for i, vm in enumerate(vms)), style="bold")
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    # Widths below which a column reads as a list of fragments: the view is then one table per VM.
    table.add_column("metric", min_width=16)
    table.add_column("threshold", min_width=10)
    for i in range(len(vms)):
        table.add_column(f"VM{i + 1}", min_width=13)
    same: list[Text] = []
    for name in names:
        cells = [vms[vm].get(name) for vm in vms]
        present = [c for c in cells if c is not None]
        if len(present) == len(cells) > 1 and len({(c["text"], c["ok"], c["threshold"]) for c in present}) == 1:
            line = Text(f"every VM: {name}: ")  # a host-wide value: once, not once per VM
            line.append_text(_value(present[0]))
            line.append(f" (threshold: {present[0]['threshold']})" if present[0]["threshold"] else "")
            same.append(line)
            continue
        thresholds = {str(c["threshold"]) for c in present}
        if len(thresholds) == 1:
            table.add_row(name, thresholds.pop(), *(_value(c) if c is not None else Text("-") for c in cells))
        else:  # each VM's own threshold (emulator load: its own emulator CPUs) beside its value
            table.add_row(name, "each VM's", *(_value(c).append(f" ({c['threshold']})") if c is not None
                                              else Text("-") for c in cells))
    return Group(key, table, *same)


def host_view(host: str, vms: dict[str, dict[str, dict[str, Any]]]) -> RenderableType:
    """A column per VM where each column can keep its words whole, else one table per VM."""
    if len(vms) < 2:
        return _per_vm(host, vms)
    return Fit(_by_metric(host, vms), _per_vm(host, vms), wrap=True)


def breached(metrics: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> list[str]:
    """`hv1 k3s-worker-slm: vCPU wait` for each metric past its threshold in this sample."""
    return [f"{host} {vm}: {name}" for host, vms in metrics.items() for vm, rows in vms.items()
            for name, row in rows.items() if row_state(row) == "breach"]
