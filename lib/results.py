"""What a run produces: per host, per step, per target results, and the run's summary.

Plain data shared by the runner, the run records (journal, report, JUnit) and the terminal output.
Nothing here holds a secret: commands are stored as shown (masked).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "changed", "failed", "skipped"]
STATUSES: tuple[Status, ...] = ("ok", "changed", "failed", "skipped")


# passed: found matches expected. failed: it does not (fails the step). warning: it differs in a way
# that is accepted (TCG instead of KVM, no cpufreq, a guest without cloud-init); it never fails the
# step but is never counted as passed. evidence: reported, not compared.
Outcome = Literal["passed", "failed", "warning", "evidence"]
OUTCOMES: tuple[Outcome, ...] = ("passed", "failed", "warning", "evidence")


@dataclass(frozen=True)
class Check:
    """One piece of evidence a verification compared: what the spec wants and what the host has.

    `ok` is False only for a failed check. `outcome` says which of the four kinds it is; left out, it
    follows `ok` (passed or failed). Build warnings and evidence with `Check.warn` and `Check.evidence`.
    """

    name: str
    expected: str
    found: str
    ok: bool
    outcome: Outcome | None = None

    def __post_init__(self) -> None:
        if self.outcome is None:
            object.__setattr__(self, "outcome", "passed" if self.ok else "failed")
        elif (self.outcome == "failed") == self.ok:
            raise ValueError(f"check {self.name!r}: outcome {self.outcome} contradicts ok={self.ok}")

    @property
    def kind(self) -> Outcome:
        assert self.outcome is not None  # set in __post_init__
        return self.outcome

    @classmethod
    def warn(cls, name: str, expected: str, found: str) -> Check:
        return cls(name, expected, found, True, "warning")

    @classmethod
    def evidence(cls, name: str, found: str, expected: str = "") -> Check:
        return cls(name, expected, found, True, "evidence")


@dataclass(frozen=True)
class StepResult:
    host: str  # the hypervisor whose run this is
    step: str
    target: str  # the hypervisor itself or a VM name
    status: Status
    started: float  # epoch seconds
    ended: float
    reason: str = ""  # why nothing was done, what changed, or why it was skipped
    commands: tuple[str, ...] = ()  # as shown, secrets masked
    checks: tuple[Check, ...] = ()
    error: str = ""  # operator-facing message of a failure
    exit_code: int = 0  # 3 mismatch, 4 step failed, 5 verification failed
    warnings: tuple[str, ...] = ()
    planned: tuple[str, ...] = ()  # plan mode: commands that would run
    # The run whose verification this result stands on: this run for a step that verified here, an
    # earlier run for a step --resume carried forward, "" for anything that did not verify (failed,
    # skipped, planned). Resume reads this field, never the reason text.
    verified_in: str = ""

    @property
    def duration(self) -> float:
        return self.ended - self.started

    @property
    def verified(self) -> bool:
        return bool(self.verified_in)

    def outcomes(self) -> dict[Outcome, int]:
        out: dict[Outcome, int] = dict.fromkeys(OUTCOMES, 0)
        for check in self.checks:
            out[check.kind] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration"] = round(self.duration, 4)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepResult:
        fields_ = {k: v for k, v in data.items() if k != "duration"}
        fields_["checks"] = tuple(Check(**c) for c in data.get("checks", ()))
        for key in ("commands", "warnings", "planned"):
            fields_[key] = tuple(data.get(key, ()))
        return cls(**fields_)


@dataclass
class HostRun:
    """Everything one hypervisor's run did, in order."""

    host: str
    run_id: str
    runbook: str
    mode: str
    started: float
    ended: float = 0.0
    results: list[StepResult] = field(default_factory=list)
    error: str = ""  # a failure outside any step (lock refused, cannot connect); also a failed result
    exit_code: int = 0
    resume_hint: str = ""  # only for a run that changes hosts
    records: str = ""  # absolute path of this run's records directory

    def counts(self) -> dict[str, int]:
        """Per step and target: ok, changed, failed, skipped."""
        out: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for r in self.results:
            out[r.status] += 1
        return out

    def check_counts(self) -> dict[Outcome, int]:
        """Per check: passed, failed, warning, evidence (a warning or evidence row is never a pass)."""
        out: dict[Outcome, int] = dict.fromkeys(OUTCOMES, 0)
        for r in self.results:
            for kind, n in r.outcomes().items():
                out[kind] += n
        return out
