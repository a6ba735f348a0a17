"""The step contract (DESIGN.md): facts in one batched read, a pure plan, apply, verify with fresh facts.

A step is a class with pure methods; the runner does all the I/O through the target's Shell
(lib/transport.py):

    facts  = step.parse(target, answers)      the answers to step.reads() (default: facts_command()),
                                              read by the engine (lib/gather.py)
    plan   = step.plan(target, facts)         PURE; facts is None in offline plan mode
    apply  = each of plan.actions: shell.run(cmd), shell.put for an Upload, the peer's shell for an
             OnPeer, the converge policy for an Await
    checks = step.verify(target, fresh facts) PURE; every Check is evidence in the report
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from lib.options import HostInputs, RunFlags
from lib.reads import FACTS, Answers, Reads, Run
from lib.results import Check
from lib.shell import Command, FileBody

if TYPE_CHECKING:
    from lib.inventory.load import LoadedHost
    from lib.inventory.model import VM
    from lib.transport import Endpoint

# hypervisor: the host itself. vms: one target per VM, commands on the hypervisor (virsh, qemu-img).
# guests / server / agents: inside the VMs (all, the k3s server(s), the k3s agents), over their own SSH.
TargetKind = Literal["hypervisor", "vms", "guests", "server", "agents"]
# How a run treats hosts: apply changes them; plan and offline plan only (offline reads nothing);
# verify only reads and checks.
Mode = Literal["apply", "plan", "offline", "verify"]


@dataclass(frozen=True)
class Upload:
    """Write bytes to a remote file (mode set before content lands). `data` never appears in output."""

    path: str
    data: bytes = field(repr=False)
    mode: int = 0o600
    why: str = ""
    what: str = ""  # how plans name the content, e.g. "seed ISO sha256 1a2b..."
    source: Path | None = None  # a local file to stream instead of data (large artifacts)
    # Set explicitly in place: under sudo the file would otherwise keep the SSH user as its owner.
    owner: str = "root"
    group: str = "root"
    # The text files this upload carries, as plans show them (secrets ***): the seed ISO's
    # user-data, meta-data and network-config. Left empty, a small text `data` is shown itself.
    shows: tuple[FileBody, ...] = field(default=(), repr=False)

    @property
    def shown(self) -> str:
        return (f"upload {self.what or f'{len(self.data)} bytes'} to {self.path} "
                f"({self.owner}:{self.group} mode {self.mode:o})")


@dataclass(frozen=True)
class OnPeer:
    """A command for the target's peer (the k3s server: where kubectl cordons and drains the node of a
    VM whose other commands run on the hypervisor); the target's own endpoint when it has no peer."""

    command: Command

    @property
    def shown(self) -> str:
        return f"on the k3s server: {self.command.shown}"


@dataclass(frozen=True)
class Await:
    """Wait, with the converge policy, until another step's verification holds for this target: a
    sequence that must not go on before something is true (a restarted VM back and pinned)."""

    step: AnyStep
    why: str

    @property
    def shown(self) -> str:
        return f"wait until {self.why}"


Action = Command | Upload | OnPeer | Await


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    reason: str = ""  # with no actions: why nothing needs doing; otherwise what will change
    warnings: tuple[str, ...] = ()
    # Apply and verify this target alone, not alongside the step's other targets (rolling upgrades).
    exclusive: bool = False

    @property
    def empty(self) -> bool:
        return not self.actions


@dataclass(frozen=True)
class Target:
    """What one step runs against: the hypervisor or one of its VMs, with the spec it must match."""

    name: str
    kind: Literal["hypervisor", "vm"]
    endpoint: Endpoint
    loaded: LoadedHost
    vm: VM | None = None
    flags: RunFlags = field(default_factory=RunFlags)  # the run's flags a step may honour (e.g. redefine)
    # For a VM target run from the hypervisor: where the VM itself answers SSH (None: no vms[].ssh).
    guest: Endpoint | None = None
    # For a k3s agent: the server VM's endpoint, where the agent's node must show up.
    peer: Endpoint | None = None
    mode: Mode = "apply"  # the run's mode: a plan may word itself for a plan run, never read the engine
    inputs: HostInputs = field(default_factory=HostInputs)  # local inputs (Step.host_inputs), e.g. the token
    run_id: str = ""  # the run's id, for the ownership records a plan writes


class StepMismatch(Exception):
    """Raised by a step's plan when the host differs from the spec in a way it must never fix itself."""

    def __init__(self, checks: list[Check], exit_code: int = 5,
                 message: str = "the host differs from the spec and this step never changes that by itself") -> None:
        super().__init__(message)
        self.checks, self.exit_code, self.message = checks, exit_code, message


F = TypeVar("F")  # a step's facts: what its parse gives, its plan and verify take


class Step(ABC, Generic[F]):
    name: ClassVar[str]
    summary: ClassVar[str]
    targets: ClassVar[TargetKind] = "hypervisor"
    # Exit code when verification fails: 5, or 3 for preflight checks that guard everything after.
    mismatch_exit: ClassVar[int] = 5
    # Verification waits (convergence policy) for the host to reach the state, instead of failing at once.
    converge: ClassVar[bool] = False
    # Deletes things (teardown): the runner applies its plan only with the `yes` flag.
    destructive: ClassVar[bool] = False
    # Its facts_command may be read ahead, at the run's first contact with the host (lib/recorded.py);
    # False for reads that sample over an interval beside the step's other targets (observe.py).
    read_ahead: ClassVar[bool] = True

    def host_inputs(self, loaded: LoadedHost, mode: Mode) -> HostInputs:
        """Local inputs a step needs once per host and run (e.g. the cluster token), in Target.inputs.

        The only place a step touches the operator's machine, so plan() stays pure.
        """
        return HostInputs()

    def facts_command(self, target: Target) -> Command | None:
        """The one batched read this step's facts come from (None: the step needs no remote facts)."""
        return None

    def reads(self, target: Target, got: Answers) -> Reads:
        """What the facts are read from (lib/reads.py), performed by the engine in this order; by
        default facts_command() as the read named FACTS. got holds the answers so far: a read that
        needs another's answer is declared once that answer is there (the engine asks again until
        nothing new is named). Pure, as parse is."""
        cmd = self.facts_command(target)
        return (Run(FACTS, cmd),) if cmd else ()

    @abstractmethod
    def parse(self, target: Target, answers: Answers) -> F:
        """Pure: the reads' answers -> typed facts (answers.stdout(): facts_command's output). A
        ValueError, KeyError, IndexError or TypeError here is reported as a FactError."""

    @abstractmethod
    def plan(self, target: Target, facts: F | None) -> Plan:
        """Pure: spec + facts -> actions. facts is None when planning offline (assume nothing is done)."""

    @abstractmethod
    def verify(self, target: Target, facts: F) -> list[Check]:
        """Pure: spec + fresh facts -> evidence. Any Check with ok=False fails the step."""


# A step of any facts type: what runbooks, the engine and Await hold (each step's own F stays its own).
AnyStep = Step[Any]
