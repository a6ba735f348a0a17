"""The kernel's cpulist format ("0-15,36-51"), as sysfs, taskset and libvirt print it.

One parser and one canonical spelling, so a plan written into a domain XML and the list read back
from /sys/devices/system/node/node*/cpulist or `virsh emulatorpin` compare as equal strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import groupby

# ASCII digits only: int() would also take other Unicode digits, "_" and inner spaces, none of which
# the kernel ever prints, so accepting them would only hide a corrupted or hand-mangled value.
_PART = re.compile(r"([0-9]+)(?:-([0-9]+))?", re.ASCII)

# Far above any kernel's NR_CPUS (8192 at most today); it stops a typo like "0-4000000000" from
# building a set of billions of ints before anything gets to say the value is wrong.
MAX_CPU = 65535


def parse_cpulist(text: str) -> frozenset[int]:
    """Parse "0-15,36-51" into a set of CPU ids; ValueError naming the bad part otherwise.

    Surrounding whitespace (sysfs files end in a newline) is allowed; an empty list is the empty set,
    which is what a memory-only NUMA node prints. The stride form "0-31:2" is not supported.
    """
    stripped = text.strip()
    if not stripped:
        return frozenset()
    cpus: set[int] = set()
    for part in stripped.split(","):
        match = _PART.fullmatch(part)
        if match is None:
            raise ValueError(f"bad cpulist part {part!r} in {text!r}: expected N or N-M")
        first = int(match[1])
        last = first if match[2] is None else int(match[2])
        if last < first:
            raise ValueError(f"bad cpulist part {part!r} in {text!r}: range runs backwards")
        if last > MAX_CPU:
            raise ValueError(f"bad cpulist part {part!r} in {text!r}: CPU ids stop at {MAX_CPU}")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Canonical kernel spelling: sorted, runs of two or more as "a-b" (the kernel prints "5-6")."""
    ordered = sorted(set(cpus))
    if ordered and ordered[0] < 0:
        raise ValueError(f"CPU ids cannot be negative: {ordered[0]}")
    parts: list[str] = []
    # In a run of consecutive ids, id minus position is constant, so groupby splits at the gaps.
    for _, run in groupby(enumerate(ordered), key=lambda pair: pair[1] - pair[0]):
        ids = [cpu for _, cpu in run]
        parts.append(str(ids[0]) if len(ids) == 1 else f"{ids[0]}-{ids[-1]}")
    return ",".join(parts)
