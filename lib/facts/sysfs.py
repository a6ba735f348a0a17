"""Batched reads of sysfs/procfs: one remote command, many files, split apart by pure parsers.

`grep -H . FILES` prints every non-empty line of every file as `path:line`: one round trip reads
hundreds of small sysfs files. Several such reads go in one script as sections marked `@@name@@`.
"""

from __future__ import annotations

import re

_MARK = re.compile(r"^@@([a-z0-9_]+)@@$")


def section(name: str) -> str:
    return f"echo @@{name}@@"


def split_sections(stdout: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stdout.splitlines():
        match = _MARK.match(line)
        if match:
            current = out.setdefault(match[1], [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in out.items()}


def grep_errors(text: str, sysroot: str) -> list[tuple[str, str]]:
    """grep's complaints, `grep: PATH: MESSAGE` -> [(path without the sysroot, message)]."""
    prefix = "" if sysroot in ("", "/") else sysroot.rstrip("/")
    found = []
    for line in text.splitlines():
        if not line.startswith("grep: "):
            continue
        path, _, message = line[len("grep: "):].rpartition(": ")
        if prefix and path.startswith(prefix):
            path = path[len(prefix):]
        found.append((path or line, message))
    return found


def grep_values(text: str, sysroot: str) -> dict[str, str]:
    """`path:value` lines -> {path without the sysroot: value}; a multi-line file joins with newlines."""
    prefix = "" if sysroot in ("", "/") else sysroot.rstrip("/")
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        path, sep, value = line.partition(":")
        if not sep:
            continue
        if prefix and path.startswith(prefix):
            path = path[len(prefix):]
        values.setdefault(path, []).append(value)
    return {path: "\n".join(lines) for path, lines in values.items()}


def kernel_choice(text: str) -> str:
    """The selected value of a bracketed sysfs file: 'always [madvise] never' -> 'madvise'."""
    match = re.search(r"\[([^\]]+)\]", text)
    return match[1] if match else text.strip()


def cpu_index(path: str) -> int | None:
    match = re.search(r"/cpu(\d+)/", path)
    return int(match[1]) if match else None
