"""A step's facts, read: its declared reads (lib/reads.py) performed on the target's Shell, in order,
then its pure parse. The engine's one way of reading a target; no step does I/O itself.

A parser's error (ValueError, KeyError, IndexError, TypeError, in reads() or parse()) becomes a
FactError naming the target and the file (a `path:value` line of grep -H) or the command it came from.
"""

from __future__ import annotations

import re
from typing import TypeVar

from lib.errors import FactError, ToolError
from lib.reads import Answer, Answers, Ask, Fetch, Live, Read, Run, Unreached
from lib.shell import Command
from lib.steps.base import Step, Target
from lib.transport import CmdResult, CommandError, ConnectError, Endpoint, Shell

F = TypeVar("F")
PARSER_ERRORS = (ValueError, KeyError, IndexError, TypeError)
# Rounds of reads that wait on earlier answers (vms.start: domain, then address, then the guest).
MAX_ROUNDS = 8


class ReadsError(ToolError):
    """A step that keeps naming new reads: a bug in the step, never the host's doing."""

    exit_code = 4


def gather(step: Step[F], target: Target, shell: Shell) -> F:
    got: dict[str, Answer] = {}
    done: list[Read] = []
    for _ in range(MAX_ROUNDS):
        try:
            new = [r for r in step.reads(target, Answers(dict(got))) if r.name not in got]
        except PARSER_ERRORS as exc:
            raise unreadable(target, done, Answers(got), exc) from exc
        if not new:
            break
        for read in new:
            got[read.name] = perform(read, shell)
            done.append(read)
    else:
        raise ReadsError(f"{target.name}: {step.name} still names new reads after {MAX_ROUNDS} rounds")
    answers = Answers(got)
    try:
        return step.parse(target, answers)
    except PARSER_ERRORS as exc:
        raise unreadable(target, done, answers, exc) from exc


def first_commands(step: Step[F], target: Target) -> list[tuple[Endpoint, Command]]:
    """The commands the target's first round of reads sends, each with the endpoint it goes to (a
    Run to the target, an Ask to its peer): what can be read before any answer is in."""
    out: list[tuple[Endpoint, Command]] = []
    for read in step.reads(target, Answers()):
        if isinstance(read, Run):
            out.append((target.endpoint, read.command))
        elif isinstance(read, Ask):
            out.append((read.endpoint, read.command))
    return out


def perform(read: Read, shell: Shell) -> Answer:
    if isinstance(read, Run):
        return shell.run(read.command)
    if isinstance(read, Live):
        return shell.live_domain(read.uri, read.domain)
    if isinstance(read, Fetch):
        return shell.get(read.path)
    try:  # the run's shell for the peer (Shell.peer): a peer that does not answer is an answer
        return shell.peer(read.endpoint, once=read.once).run(read.command)
    except (CommandError, ConnectError) as exc:
        return Unreached(str(exc).splitlines()[0])


def unreadable(target: Target, reads: list[Read], answers: Answers, exc: Exception) -> FactError:
    """The parser's error as a FactError naming the file (a `path:value` line of grep -H) or the read."""
    text = str(exc)
    quoted = re.search(r"'([^']*)'\s*$", text)
    value = quoted[1] if quoted else text
    outputs = [(r, a.stdout) for r in reads if isinstance(a := answers.got.get(r.name), CmdResult)]
    source = (_file_of(value, outputs) if quoted else None) or _shown(_read_of(value, outputs, reads))
    return FactError(target.name, source, value, f"{type(exc).__name__}: {text}")


def _file_of(value: str, outputs: list[tuple[Read, str]]) -> str | None:
    files = [line.rsplit(":", 1)[0] for _read, out in outputs for line in out.splitlines()
             if line.endswith(f":{value}") and "/" in line]
    return files[0] if files else None


def _read_of(value: str, outputs: list[tuple[Read, str]], reads: list[Read]) -> Read | None:
    """The read whose answer holds the value; else the first command, else the first read of any kind."""
    first = outputs[0][0] if outputs else (reads[0] if reads else None)
    return next((read for read, out in outputs if value and value in out), first)


def _shown(read: Read | None) -> str:
    if isinstance(read, (Run, Ask)):
        where = f" on {read.endpoint.name}" if isinstance(read, Ask) else ""
        return f"the output of `{read.command.shown}`{where}"
    if isinstance(read, Live):
        return f"libvirt's live view of domain {read.domain}"
    if isinstance(read, Fetch):
        return f"the file {read.path}"
    return "the output of `(no command)`"
