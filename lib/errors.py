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
