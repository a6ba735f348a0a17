"""Per-vCPU values as a screen can show them (pure): ranges of vCPUs in the same state, outliers named.

monitor's rows carry every vCPU (`0:12% 1:3% ... 31:0%`, kept whole in records and --json); for
VM1's 32 vCPUs that is a wall of text. On screen the vCPUs whose values fall in the same band are one
range with the band's low and high value, and a vCPU outside the band most of them share is named
with its own value: `0-15,17-31: 0-4%; 16: 97%`.
"""

from __future__ import annotations

import re

from lib.cpuset import format_cpulist

_ITEM = re.compile(r"^(\d+):(-?[\d.]+)(%|ms)$")
# Bands: values in one band read as "the same state" (idle, some load, busy, saturated).
_BANDS = {"%": (10.0, 50.0, 90.0), "ms": (1.0, 10.0, 50.0)}
_NAMED = 6  # outliers named one by one up to this many; more are shown as ranges of their own bands


def _band(value: float, unit: str) -> int:
    return sum(value >= edge for edge in _BANDS[unit])


def _span(values: list[float], unit: str) -> str:
    low, high = min(values), max(values)
    fmt = "{:g}" if unit == "%" else "{:.1f}"
    return (fmt.format(low) if low == high else f"{fmt.format(low)}-{fmt.format(high)}") + unit


def summarise(text: str) -> str:
    """`i:value i:value ...` as ranges per band; any other text (not per vCPU, or 4 vCPUs or fewer) as is."""
    items = [_ITEM.match(t) for t in text.split()]
    if len(items) <= 4 or not all(items):
        return text
    parsed = [(int(m.group(1)), float(m.group(2)), m.group(3)) for m in items if m]
    units = {u for _, _, u in parsed}
    if len(units) != 1:
        return text
    unit = units.pop()
    bands: dict[int, list[tuple[int, float]]] = {}
    for vcpu, value, _ in parsed:
        bands.setdefault(_band(value, unit), []).append((vcpu, value))
    common = max(bands, key=lambda b: len(bands[b]))
    parts = [f"{format_cpulist(v for v, _ in bands[common])}: {_span([x for _, x in bands[common]], unit)}"]
    others = sorted((v, x) for b, members in bands.items() if b != common for v, x in members)
    if len(others) <= _NAMED:
        fmt = "{:g}" if unit == "%" else "{:.1f}"
        parts += [f"{v}: {fmt.format(x)}{unit}" for v, x in others]
    else:
        parts += [f"{format_cpulist(v for v, _ in members)}: {_span([x for _, x in members], unit)}"
                  for b, members in sorted(bands.items()) if b != common]
    return "; ".join(parts)
