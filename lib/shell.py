"""Commands as values: every interpolated value shell-quoted, secrets shown as *** everywhere.

Pure: planners build Commands here; only remote.py runs them. A Command carries two renderings,
`shown` (logs, plans, journals, reports, exceptions) and the real one, which only remote.py reads.
"""

from __future__ import annotations

import re
import shlex
import textwrap
import threading
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import NoReturn

MASK = "***"
_known: set[str] = set()
# Names the tool shows itself (steps, hosts, VMs, the inventory's paths): public, never a secret's
# hiding place. A secret that happens to be part of one (a token `k3s`, the step `k3s.agents`) is
# masked in values, but the name stays whole: `***.agents` is unreadable and points at the token.
_public: set[str] = set()
_known_lock = threading.Lock()


class Secret:
    """A value that prints as *** in str, repr, format, f-strings and exception messages."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value:
            raise ValueError("a secret must not be empty")
        self._value = value
        with _known_lock:  # so mask() can scrub it from any text that echoes it back
            _known.add(value)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("secret", self._value))

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")


def public(*words: str) -> None:
    """Register names the tool itself prints; mask() leaves a secret inside one of them alone."""
    with _known_lock:
        _public.update(w for w in words if w)


def mask(text: str) -> str:
    """Replace every known secret value in text with ***: the last line of defence for output.

    An occurrence that lies inside a public name longer than the secret is part of that name, not
    the secret, and stays; everywhere else (a value, an echoed config file, an error) it is ***."""
    if not _known:  # no secret in this process: a run's records mask ~800 strings per host, each for nothing
        return text
    with _known_lock:
        values = sorted(_known, key=len, reverse=True)
    for value in values:
        if value in text:
            # The public names are looked at only when a secret is there: most texts hold none, and
            # copying every host's names and paths for each string made a fleet record's save O(N^2).
            with _known_lock:
                names = [w for w in _public if value in w and w != value]
            text = _masked(text, value, names)
    return text


def _masked(text: str, value: str, names: list[str]) -> str:
    if not names:
        return text.replace(value, MASK)
    kept = [(m.start(), m.start() + len(name)) for name in names if name in text
            for m in re.finditer(re.escape(name), text)]
    out, at = [], 0
    for hit in re.finditer(re.escape(value), text):
        if any(start <= hit.start() and hit.end() <= end for start, end in kept):
            continue
        out += [text[at:hit.start()], MASK]
        at = hit.end()
    return "".join(out) + text[at:]


# What a terminal would act on instead of showing: C0 controls but newline and tab (ESC starts the
# sequences that clear the screen, move the cursor, retitle the window), DEL, C1 controls, and the
# zero-width and bidirectional marks that make a text read other than it is.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Control characters shown as escapes (ESC as \\x1b), so no value can drive the terminal."""
    return _UNPRINTABLE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def terminal(text: str) -> str:
    """What reaches the operator's terminal: secrets masked, control characters escaped. Records keep
    the raw bytes (masked): the evidence is what the host said, the screen is what is safe to show."""
    return printable(mask(text))


def wrapped(text: str, width: int) -> str:
    """A long message for an operator's terminal, broken between words at its width with the rest
    indented, instead of the terminal cutting a word ("vms[0].user_con⏎figs"). Paths and fields
    stay whole unless one alone is wider than the terminal."""
    if width < 20:
        return text
    return "\n".join(textwrap.wrap(text, width, subsequent_indent="  ", break_on_hyphens=False))


Value = str | int | float | PurePosixPath | Secret


def quote(value: Value, *, reveal: bool = False) -> str:
    if isinstance(value, Secret):
        return shlex.quote(value.reveal()) if reveal else MASK
    return shlex.quote(str(value))


@dataclass(frozen=True)
class FileBody:
    """A file an action writes, as plans show it: its text (secrets already ***) and, when the facts
    hold it, what the host has there now (None: not known, e.g. offline), for a unified diff."""

    path: str
    text: str
    before: str | None = None
    mode: int | None = None


@dataclass(frozen=True)
class Command:
    """One remote command line. Build it with sh(); `shown` is safe to print anywhere."""

    shown: str
    real: str = field(repr=False)
    timeout: float = 120.0
    sudo: bool = True
    ok_codes: tuple[int, ...] = (0,)
    why: str = ""
    writes: tuple[FileBody, ...] = ()  # the files this command writes, for plans (lib/planview.py)
    # A read whose one answer serves every target of the step that asks it, until the run next
    # changes something (lib/runner.SharedReads): another target's state, such as the k3s node list.
    shared: bool = False

    def __str__(self) -> str:
        return self.shown


def sh(template: str, /, *, timeout: float = 120.0, sudo: bool = True, ok_codes: tuple[int, ...] = (0,),
       why: str = "", **values: Value | list[Value]) -> Command:
    """Format template with each value shell-quoted ({name}); lists become several quoted words.

    The template itself is code, never data: operators' values only ever enter through **values.
    A NUL byte cannot be part of any argv or command line (C strings end there), so a value holding
    one is refused here, by name, rather than cut short somewhere on the way to the host.
    """
    for key, val in values.items():
        for item in val if isinstance(val, list) else [val]:
            if "\0" in (item.reveal() if isinstance(item, Secret) else str(item)):
                raise ValueError(f"sh(): the value for {{{key}}} contains a NUL byte, which no command line can carry")

    def render(reveal: bool) -> str:
        words = {
            key: " ".join(quote(v, reveal=reveal) for v in val) if isinstance(val, list) else quote(val, reveal=reveal)
            for key, val in values.items()
        }
        return template.format(**words)

    return Command(render(False), render(True), timeout, sudo, ok_codes, why)


def wired(cmd: Command, user: str, *, reveal: bool) -> str:
    """The line a host's shell gets for cmd as `user`: under `sudo -n` when it needs root and the
    user is not root (-n: never prompt; a host that needs a password fails at once, clearly)."""
    text = cmd.real if reveal else cmd.shown
    return f"sudo -n -- sh -c {quote(text)}" if cmd.sudo and user != "root" else text


def root_prefix(sysroot: str) -> str:
    """The sysroot as a quoted prefix for paths in a command template ("" on a real host)."""
    return "" if sysroot in ("", "/") else shlex.quote(sysroot.rstrip("/"))


def write_file(root: str, path: str, content: str, *, before: str | None, why: str, then: str = "") -> Command:
    """Write a root-owned 0644 file on the host: beside it first, then renamed into place, so an
    interrupted write never leaves half a file; owner and mode explicit, so neither sudo's umask nor
    the SSH user decides them. root: root_prefix(sysroot). then: shell code run after the rename.
    Plans show the body, and a diff against `before` (what the host has; None: no such file)."""
    directory = path.rsplit("/", 1)[0]
    cmd = sh(f"mkdir -p {root}{directory} && printf %s {{content}} > {root}{path}.tmp && "
             f"chown 0:0 {root}{path}.tmp && chmod 644 {root}{path}.tmp && mv -f {root}{path}.tmp {root}{path}{then}",
             content=content, why=why)
    return replace(cmd, writes=(FileBody(path, content, before),))


def rooted(sysroot: str, path: str) -> str:
    """A sysfs/procfs path under the inventory's sysroot (tests point it at generated trees)."""
    if sysroot in ("", "/"):
        return path
    return str(PurePosixPath(sysroot) / path.lstrip("/"))


def seq(*parts: Command | str, timeout: float = 120.0, sudo: bool = True, ok_codes: tuple[int, ...] = (0,),
        why: str = "") -> Command:
    """Commands and literal shell code joined by `; ` into one command, by composition, not formatting.

    A Command part keeps its own quoting (and its shown/real renderings); a str part is code and is
    used as it is: no str.format pass, so shell braces (`{ ...; }`, `${v%x}`) need no doubling.
    """
    shown = "; ".join(p.shown if isinstance(p, Command) else p for p in parts)
    real = "; ".join(p.real if isinstance(p, Command) else p for p in parts)
    return Command(shown, real, timeout, sudo, ok_codes, why)
