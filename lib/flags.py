"""Flag values checked before any work starts (pure, apart from the path checks' stat calls).

invoke hands tasks strings (or converts them itself, with a traceback on a bad value), so every
number is declared as a string flag and parsed here with a message that names the flag, the value
and the range. Output paths and the runs directory are checked up front: a run must never do its
work and then fail to record it.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable
from pathlib import Path

from lib.errors import ToolError


class FlagError(ToolError):
    exit_code = 2


def number(flag: str, value: str | float, *, low: float, high: float, low_open: bool = False) -> float:
    """A finite number in [low, high] (or (low, high] with low_open), else a FlagError naming the flag."""
    text = str(value).strip()
    try:
        parsed = float(text)
    except ValueError:
        raise FlagError(f"--{flag}={value!r}: not a number (give e.g. --{flag}={high if high < 10 else 1:g})") from None
    bracket = "(" if low_open else "["
    if not math.isfinite(parsed) or parsed > high or parsed < low or (low_open and parsed == low):
        raise FlagError(f"--{flag}={text}: out of range; allowed: {bracket}{low:g}, {high:g}]")
    return parsed


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """' (did you mean host.tune?)' for a near miss, else ''."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def names(flag: str, value: str | None, known: Iterable[str], what: str, where: str) -> tuple[str, ...]:
    """A comma-separated list of names, each one of `known` (else a FlagError with a suggestion)."""
    given = tuple(v.strip() for v in (value or "").split(",") if v.strip())
    choices = list(known)
    for name in given:
        if name not in choices:
            raise FlagError(f"--{flag}: {name!r} not in {where}{did_you_mean(name, choices)}; {what}s: "
                            f"{', '.join(choices) or 'none'}")
    if value is not None and not given:
        raise FlagError(f"--{flag}: give at least one {what}")
    return given


def output_file(flag: str, value: str) -> Path:
    """A file this run will write: its directory exists and is writable, and it is not a directory."""
    path = Path(value).expanduser()
    if not value.strip():
        raise FlagError(f"--{flag}: give a file name")
    if path.is_dir():
        raise FlagError(f"--{flag}={value}: is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FlagError(f"--{flag}={value}: directory {parent} does not exist; nothing was done")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise FlagError(f"--{flag}={value}: not writable by this user; nothing was done")
    return path


def writable_dir(what: str, path: Path) -> Path:
    """A directory the run records go to: created if missing, and proved writable by writing there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise FlagError(f"{what} {path} is not writable ({exc.strerror or exc}); nothing was done: set "
                        "runs_dir in invoke.yaml or INVOKE_RUNS_DIR to a writable directory") from None
    return path
