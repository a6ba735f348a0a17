"""Typed errors with the exit codes of DESIGN.md; only tasks.py turns them into invoke.Exit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One finding about an inventory file, named by rule id, file and field path."""

    rule: str
    file: str
    path: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}: " if self.path else f"{self.file}: "
        return f"{self.severity.upper()} [{self.rule}] {where}{self.message}"


class ToolError(Exception):
    """Base of every error an operator may see; carries the process exit code."""

    exit_code = 1


class InventoryError(ToolError):
    """Bad inventory: exit 2 before any host is touched."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class FactError(ToolError):
    """A fact source answered with something its parser cannot read: names the source and the value.

    Raised instead of the parser's own ValueError/KeyError, so the operator sees which file or
    command gave what, and the step fails (exit 4) instead of guessing.
    """

    exit_code = 4

    def __init__(self, target: str, source: str, value: str, why: str) -> None:
        self.target, self.source, self.value = target, source, value
        super().__init__(f"{target}: cannot read {source}: {why} (value {value!r})")
