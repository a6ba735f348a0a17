"""Retry policies as values (tenacity), named for what they wait on.

- ssh_connect: the host is not answering yet (connection refused, reset, timeout): back off.
- transient:   a command hit a dropped connection, its timeout, a listed exit code (apt/dpkg lock),
               or said one of the listed messages on stderr (libvirt's domain job lock).
- converge:    a verification waits for something to become true (a VM's SSH, a node Ready), with a deadline.

Everything else fails at once. Defaults can be overridden in invoke.yaml under `retries:`.
Tests inject `sleep` so nothing really waits; deadlines count waited time (tenacity's idle_for)
as well as wall time, so an injected sleep still reaches them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from lib.errors import ToolError

Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Policy:
    name: str
    attempts: int  # 0 = no limit (a deadline must then be set)
    wait_initial: float
    wait_max: float
    deadline: float | None = None  # seconds
    exit_codes: tuple[int, ...] = ()  # only the transient policy uses these
    stderr_marks: tuple[str, ...] = ()  # and these: a failed command whose stderr holds one is retried

    def describe(self) -> str:
        limit = f"{self.attempts} attempts" if self.attempts else f"up to {self.deadline:g} s"
        return f"{self.name}: {limit}, waits {self.wait_initial:g}-{self.wait_max:g} s"


@dataclass(frozen=True)
class Policies:
    ssh_connect: Policy = Policy("ssh_connect", attempts=5, wait_initial=1, wait_max=15)
    # 100: apt-get could not get the dpkg lock; 75: EX_TEMPFAIL. Both clear up by themselves. So does
    # libvirt's "Timed out during operation: cannot acquire state change lock": virsh exits 1 after
    # libvirtd waited 30 s for a job another call still holds on the domain (a `virsh start` that
    # outlived our timeout on a loaded host, for one: seen in the NUMA lab).
    transient: Policy = Policy("transient", attempts=3, wait_initial=2, wait_max=20, exit_codes=(75, 100),
                               stderr_marks=("cannot acquire state change lock",))
    converge: Policy = Policy("converge", attempts=0, wait_initial=2, wait_max=10, deadline=300)


class ConfigError(ToolError):
    exit_code = 2


def policies_from_config(overrides: Mapping[str, Any] | None) -> Policies:
    """Apply invoke.yaml's `retries:` mapping; unknown names or keys are errors, not ignored."""
    base = Policies()
    if not overrides:
        return base
    known = {f.name for f in fields(Policy)} - {"name"}
    changes: dict[str, Policy] = {}
    for name, values in dict(overrides).items():
        policy = getattr(base, name, None)
        if not isinstance(policy, Policy):
            raise ConfigError(f"invoke.yaml: retries.{name}: unknown policy (known: ssh_connect, transient, converge)")
        bad = set(values) - known
        if bad:
            raise ConfigError(f"invoke.yaml: retries.{name}: unknown keys {sorted(bad)} (known: {sorted(known)})")
        update: dict[str, Any] = {k: tuple(v) if k in ("exit_codes", "stderr_marks") else v
                                  for k, v in dict(values).items()}
        changes[name] = replace(policy, **update)
    return replace(base, **changes)


def retrying(policy: Policy, retry_on: Callable[[BaseException], bool], sleep: Sleep = time.sleep,
             on_retry: Callable[[RetryCallState], None] | None = None) -> Retrying:
    def stop(state: RetryCallState) -> bool:
        if policy.attempts and state.attempt_number >= policy.attempts:
            return True
        if policy.deadline is not None:
            elapsed = max(state.idle_for, state.seconds_since_start or 0.0)
            return elapsed >= policy.deadline
        return False

    return Retrying(
        stop=stop,
        wait=wait_exponential(multiplier=policy.wait_initial, min=policy.wait_initial, max=policy.wait_max),
        retry=retry_if_exception(retry_on),
        sleep=sleep,
        reraise=True,
        before_sleep=on_retry,
    )
