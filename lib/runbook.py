"""Runbooks are data: an ordered list of step names in runbooks/<name>.yaml, checked when loaded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from lib.errors import ToolError
from lib.steps.base import AnyStep


class RunbookError(ToolError):
    exit_code = 2


@dataclass(frozen=True)
class Runbook:
    name: str
    file: str
    description: str
    steps: tuple[AnyStep, ...]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]


def load_runbook(path: Path, registry: Mapping[str, type[AnyStep]]) -> Runbook:
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise RunbookError(f"{path}: runbook not found (known: {', '.join(known) or 'none'})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RunbookError(f"{path}: could not parse YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise RunbookError(f"{path}: a runbook is a mapping with a `steps:` list of step names")
    names: list[str] = [str(s) for s in data["steps"]]
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise RunbookError(f"{path}: unknown step(s) {', '.join(map(repr, unknown))}; known steps: "
                           f"{', '.join(sorted(registry))}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RunbookError(f"{path}: step(s) listed twice: {', '.join(dupes)}")
    return Runbook(path.stem, str(path), str(data.get("description", "")), tuple(registry[n]() for n in names))


def select(runbook: Runbook, *, from_step: str | None = None, only: Sequence[str] = (),
           skip: Sequence[str] = ()) -> tuple[list[AnyStep], dict[str, str]]:
    """The steps to run, and for each left out, why (journalled as skipped)."""
    names = runbook.names
    for flag, given in (("--from", [from_step] if from_step else []), ("--only", only), ("--skip", skip)):
        bad = [n for n in given if n not in names]
        if bad:
            raise RunbookError(f"{flag}: {', '.join(map(repr, bad))} not in runbook {runbook.name} "
                               f"(steps: {', '.join(names)})")
    start = names.index(from_step) if from_step else 0
    chosen: list[AnyStep] = []
    left_out: dict[str, str] = {}
    for i, step in enumerate(runbook.steps):
        if i < start:
            left_out[step.name] = f"before --from {from_step}"
        elif only and step.name not in only:
            left_out[step.name] = "not in --only"
        elif step.name in skip:
            left_out[step.name] = "--skip"
        else:
            chosen.append(step)
    return chosen, left_out
