"""lib/ imports flow one way: no cycle, read from the AST by tools/imports.py (which prints the layers);
and no class in lib/ is over 200 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from tools.imports import ROOT, cycle, graph, layers


def test_lib_has_no_import_cycle() -> None:
    edges = graph()
    assert "lib.runner" in edges and "lib.transport" in edges["lib.runner"]  # the graph is really read
    assert cycle(edges) == [], " -> ".join(cycle(edges))


def test_the_cycle_finder_finds_a_hidden_circle(tmp_path: Path) -> None:
    """A function-level import still counts: hiding an import does not remove the dependency."""
    pkg = tmp_path / "lib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from lib.b import x\n")
    (pkg / "b.py").write_text("def x() -> None:\n    from lib import a\n")
    (pkg / "c.py").write_text("import lib.a\n")
    edges = graph("lib", tmp_path)
    assert cycle(edges) == ["lib.a", "lib.b", "lib.a"]
    edges["lib.b"].clear()
    assert cycle(edges) == []
    assert layers(edges) == {"lib": 0, "lib.b": 0, "lib.a": 1, "lib.c": 2}


def test_the_transport_vocabulary_loads_no_ssh_stack() -> None:
    """Steps and the engine's vocabulary come from lib/transport.py, which never reaches paramiko."""
    edges = graph()
    reach = reaches(edges, "lib.transport")
    assert "lib.remote" not in reach and "lib.pool" not in reach
    assert "lib.remote" not in edges["lib.steps.base"]


def reaches(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += edges[module]
    return seen - {start}


def test_lower_layers_never_reach_up() -> None:
    """Shared facts sit where both sides see them (lib/cores.py, lib/monitor/prom.py's NUMBERS_ROW)."""
    edges = graph()
    for module in [m for m in edges if m.startswith("lib.monitor.")]:
        assert not {m for m in reaches(edges, module) if m.startswith("lib.steps")}, module
    for module in [m for m in edges if m.startswith("lib.inventory.")]:
        assert not reaches(edges, module) & {"lib.vmperf", "lib.k3s", "lib.domain"}, module
    for module in [m for m in edges if m.startswith("lib.steps.")]:
        assert not reaches(edges, module) & {"lib.runner", "lib.remote", "lib.gather", "lib.pool"}, module


def long_classes(limit: int = 200, root: Path = ROOT) -> list[str]:
    """lib/'s classes over `limit` lines (the #27 bar: a class that long does more than one job)."""
    found = []
    for path in sorted((root / "lib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and node.end_lineno and node.end_lineno - node.lineno + 1 > limit:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} "
                             f"({node.end_lineno - node.lineno + 1} lines)")
    return found


def test_no_class_in_lib_is_over_200_lines(tmp_path: Path) -> None:
    assert long_classes() == []
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "big.py").write_text("class Big:\n" + "    x = 1\n" * 200)  # the check really counts
    assert long_classes(root=tmp_path) == ["lib/big.py:1 Big (201 lines)"]
