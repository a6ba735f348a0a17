"""lib/'s import graph, read from the AST: its cycles (there must be none) and its layers.

Every import counts, also one inside a function or under `if TYPE_CHECKING:`: hiding an import
in a function does not remove the dependency, it only hides the circle. A module's layer is one
more than the highest layer it imports, so layer 0 imports nothing of lib/ and nothing may import
from its own layer or above.

    .venv/bin/python tools/imports.py      # prints the layers; exit 1 and the cycle when there is one
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def graph(package: str = "lib", root: Path = ROOT) -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports (a package means its __init__)."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    edges: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from lib.steps import base` imports the module lib.steps.base; `from lib.x import f` lib.x.
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            edges[name] |= {t for t in targets if t in files and t != name}
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules (first == last), or [] when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return []


def layers(edges: dict[str, set[str]]) -> dict[str, int]:
    """Module -> its layer (0 imports nothing of the package). The graph must have no cycle."""
    done: dict[str, int] = {}

    def layer(node: str) -> int:
        if node not in done:
            done[node] = 1 + max((layer(n) for n in edges[node]), default=-1)
        return done[node]

    for node in edges:
        layer(node)
    return done


def main() -> int:
    edges = graph()
    found = cycle(edges)
    if found:
        print("import cycle: " + " -> ".join(found))
        return 1
    by_layer: dict[int, list[str]] = {}
    for name, n in layers(edges).items():
        by_layer.setdefault(n, []).append(name)
    for n in sorted(by_layer):
        print(f"layer {n}: {' '.join(sorted(by_layer[n]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
