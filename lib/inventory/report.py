"""How inventory problems reach the operator: VMs named beside their index, one line per root cause.

One wrong nodeset makes every pin of that VM break the same rule; 32 lines saying so hide the one
thing to fix. Problems of one rule on the entries of one list (vcpu_pins[0], [1], ...) become one
line with their count and the first as the example. Problem values themselves stay as the rules
made them (tests and --json read those); this only shapes the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from lib.cpuset import format_cpulist
from lib.errors import Problem
from lib.shell import printable

_VM = re.compile(r"^vms\[(\d+)\]")
_ENTRY = re.compile(r"^(.*)\[(\d+)\]$")
GROUP_AT = 3  # this many problems of one rule on one list are one root cause


def vm_names(file: str) -> list[str]:
    """The VM names of a host file, in order, read with the loader's own guarded reader (size, depth,
    aliases); [] when it cannot be read: the problems already say why."""
    from lib.inventory.load import _read_yaml

    data = _read_yaml(Path(file), [])
    vms = data.get("vms") if isinstance(data, dict) else None
    if not isinstance(vms, list):
        return []
    return [str(vm.get("name", "?")) if isinstance(vm, dict) else "?" for vm in vms]


def named(path: str, names: list[str]) -> str:
    """vms[2].tuning -> vms[2] (k3s-worker-slm).tuning."""
    match = _VM.match(path)
    if not match or int(match.group(1)) >= len(names):
        return path
    name = names[int(match.group(1))]
    shown = name if name.isprintable() else repr(name)  # a name of "\n" must not break the line it is on
    return f"{match.group(0)} ({shown}){path[match.end():]}"


def lines(problems: Iterable[Problem]) -> list[str]:
    """One line per problem, or per group with one root cause, in the rules' order.

    Grouped: the same rule and message in several places (one shared CPU, three VMs), and one rule
    on GROUP_AT or more entries of one list (every pin of a VM with the wrong nodeset).
    """
    problems = list(problems)
    # Only files with VM paths are read again: most problems (a YAML error, a bad file) have none.
    names = {p.file: vm_names(p.file) if any(q.file == p.file and q.path.startswith("vms[") for q in problems)
             else [] for p in problems}
    groups: dict[tuple[str, ...], list[Problem]] = {}
    for p in problems:
        same = [q for q in problems if (q.severity, q.rule, q.file, q.message) ==
                (p.severity, p.rule, p.file, p.message)]
        entry = _ENTRY.match(p.path)
        key: tuple[str, ...] = ("message", p.severity, p.rule, p.file, p.message) if len(same) > 1 else \
            ("list", p.severity, p.rule, p.file, entry.group(1) if entry else p.path)
        groups.setdefault(key, []).append(p)
    # Every line escaped here: a file name or value may carry control characters (ESC [2J ...).
    return [printable(line) for key, members in groups.items() for line in _group_lines(key, members, names)]


def _group_lines(key: tuple[str, ...], members: list[Problem], names: dict[str, list[str]]) -> list[str]:
    first = members[0]
    head = f"{first.severity.upper()} [{first.rule}] {first.file}: "
    if key[0] == "message":
        where = "; ".join(named(p.path, names[p.file]) for p in members)
        return [f"{head}{len(members)} places ({where}): {first.message}"]
    if len(members) >= GROUP_AT:
        indexes = [_ENTRY.match(p.path) for p in members]
        shown = format_cpulist(int(m.group(2)) for m in indexes if m) if all(indexes) else ""
        where = named(key[4], names[first.file])
        return [f"{head}{where}: {len(members)} entries{f' ([{shown}])' if shown else ''} break this rule; "
                f"the first: {first.message}"]
    return [str(Problem(p.rule, p.file, named(p.path, names[p.file]), p.message, p.severity)) for p in members]
