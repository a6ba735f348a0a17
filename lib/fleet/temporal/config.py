"""Where the Temporal service is and how long a step may take: invoke.yaml's `temporal:` or flags."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from lib.errors import ToolError
from lib.retry import ConfigError


class TemporalError(ToolError):
    """Temporal could not be reached or refused a request: named, with the address."""

    exit_code = 4


@dataclass(frozen=True)
class TemporalConfig:
    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    task_queue: str = "numa-k3s"  # workflows, and the steps of hosts without a site
    heartbeat: float = 30.0  # a worker silent this long is taken for dead: its step runs elsewhere
    step_timeout: float = 3600.0  # one step's whole run, its converge waits included

    def queue_of(self, site: str | None) -> str:
        """A site's hosts run their steps on the site's own queue (`fleet.worker --task-queue=SITE`)."""
        return site or self.task_queue


def temporal_config(values: Mapping[str, Any] | None, **flags: Any) -> TemporalConfig:
    """invoke.yaml's `temporal:` mapping, then the flags given; unknown keys are errors, not ignored."""
    known = {f.name for f in fields(TemporalConfig)}
    given = dict(values or {})
    bad = sorted(set(given) - known)
    if bad:
        raise ConfigError(f"invoke.yaml: temporal: unknown keys {bad} (known: {sorted(known)})")
    base = replace(TemporalConfig(), **given)
    return replace(base, **{k: v for k, v in flags.items() if v is not None})
