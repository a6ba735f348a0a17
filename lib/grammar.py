"""The command line's grammar errors in the operator's words (pure): what invoke's parser refused,
with a did-you-mean, and selections that select nothing.

invoke's parser raises ParseError ("No idea what '--restart' is!") and its Program exits 1 with that
text; every other bad flag exits 2 with the flag named. tasks.py routes the parser's errors through
parse_error() so a mistyped task or flag is one more bad flag: exit 2, a suggestion, the known names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from lib.flags import did_you_mean

_UNKNOWN = re.compile(r"No idea what '(?P<word>.*)' is!")
_NEEDS_VALUE = re.compile(r"Flag <Argument: (?P<name>[^>]*)> needed value")
_NO_VALUE = re.compile(r"Flag <Argument: (?P<name>[^>]*)> doesn't take any value")


def _flag(name: str) -> str:
    return "--" + name.split(" ", 1)[0].split(",", 1)[0].strip("-").rstrip("_").replace("_", "-")


def parse_error(message: str, task: str | None, flags: Iterable[str], tasks: Iterable[str]) -> str:
    """One line for a refused command line: the word refused, a suggestion, and what is known.

    task is the task whose flags were being read (None before any task), flags its flags as typed
    (--host, --no-x), tasks every task name the collection answers to.
    """
    unknown = _UNKNOWN.search(message)
    if unknown:
        word = unknown.group("word")
        if word.startswith("-") and task:
            known = sorted(f for f in flags if not f.startswith("--no-") and len(f) > 2)
            return (f"{task}: unknown flag {word}{did_you_mean(word, known)}; {task} takes: "
                    f"{', '.join(known) or 'no flags'} (invoke --help {task})")
        names = sorted(tasks)
        return f"unknown task {word!r}{did_you_mean(word, names)}; the tasks: invoke --list"
    needs = _NEEDS_VALUE.search(message)
    if needs:
        flag = _flag(needs.group("name"))
        return f"{task + ': ' if task else ''}{flag} needs a value ({flag}=VALUE)"
    no_value = _NO_VALUE.search(message)
    if no_value:
        flag = _flag(no_value.group("name"))
        return f"{task + ': ' if task else ''}{flag} takes no value (give {flag} alone)"
    return message


def empty_selection(order: Sequence[str], left_out: dict[str, str], only: Sequence[str], from_step: str | None,
                    skip: Sequence[str]) -> str:
    """Why --from/--only/--skip together select no step of a runbook (each given step's reason)."""
    given = [f"--from={from_step}"] if from_step else []
    given += [f"--only={','.join(only)}"] if only else []
    given += [f"--skip={','.join(skip)}"] if skip else []
    asked = [n for n in order if n in only] if only else list(order)
    reasons = [f"{n}: {left_out[n]}" for n in asked if n in left_out]
    return f"{' '.join(given)} selects no step ({'; '.join(reasons)}); nothing was done"
