"""What a step reads, as values: the step declares its reads, the engine performs them (lib/gather.py)
and hands the answers to the step's pure parse.

    Run(name, command)                  a command on the target's own shell
    Live(name, uri, domain)             libvirt's live view of a domain (None: not defined)
    Ask(name, endpoint, command, once)  a command on another target of the run (the k3s server, a VM's
                                        guest); its failure is an answer too (Unreached), since a peer
                                        that does not answer is a fact the step reports
    Fetch(name, path)                   a file's bytes from the target

A read that needs another read's answer first (the guest's address before its probe) is declared
once that answer is there: the engine asks Step.reads again with the answers so far, until it
names nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lib.shell import Command
from lib.transport import CmdResult, Endpoint, RawDomain

FACTS = "facts"  # the name of the one read a step's facts_command() declares


@dataclass(frozen=True)
class Run:
    name: str
    command: Command


@dataclass(frozen=True)
class Live:
    name: str
    uri: str
    domain: str


@dataclass(frozen=True)
class Ask:
    name: str
    endpoint: Endpoint
    command: Command
    once: bool = False  # not connected yet: try to connect now, once (a probe while the peer boots)


@dataclass(frozen=True)
class Fetch:
    name: str
    path: str


Read = Run | Live | Ask | Fetch
Reads = tuple[Read, ...]


@dataclass(frozen=True)
class Unreached:
    """An Ask the peer did not answer: the first line of why (connection refused, command failed)."""

    why: str


Answer = CmdResult | RawDomain | None | bytes | Unreached


@dataclass(frozen=True)
class Answers:
    """Each performed read's answer by its name. A parser asking for one not there raises KeyError,
    which the engine reports as a FactError (the step named a read it did not declare)."""

    got: dict[str, Answer] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.got

    def result(self, name: str = FACTS) -> CmdResult:
        answer = self.got[name]
        if not isinstance(answer, CmdResult):
            raise KeyError(f"{name} is not a command's answer")
        return answer

    def stdout(self, name: str = FACTS) -> str:
        return self.result(name).stdout

    def domain(self, name: str) -> RawDomain | None:
        answer = self.got[name]
        if answer is not None and not isinstance(answer, dict):
            raise KeyError(f"{name} is not a libvirt read")
        return answer

    def peer(self, name: str) -> CmdResult | Unreached:
        answer = self.got[name]
        if not isinstance(answer, (CmdResult, Unreached)):
            raise KeyError(f"{name} is not a peer's answer")
        return answer

    def file(self, name: str) -> bytes:
        answer = self.got[name]
        if not isinstance(answer, bytes):
            raise KeyError(f"{name} is not a file")
        return answer
