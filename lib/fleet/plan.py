"""Rollout semantics as pure functions: which hosts, in which waves, how many may fail, who starts next.

Both engines (lib/fleet/local.py, lib/fleet/temporal/) take every decision here, so a rollout means
the same thing wherever it runs. Nothing here touches a host, a file or a clock.

Waves follow Ansible's `serial` exactly (playbook_executor._get_serialized_batches and
utils.helpers.pct_to_int): each value is a batch SIZE, not a cumulative count; a percentage is of
ALL the selected hosts, rounded down, and at least 1; the last value repeats until every host is in
a batch. `--waves=1,10%,50%,100%` over 20 hosts gives batches of 1, 2, 10 and the 7 left.

The failure budget follows Ansible's max_fail_percentage: it is exceeded only when failures go OVER
it (failed / size > pct), so `--max-fail=10%` over a wave of 10 tolerates one failure and stops at
the second. It applies to every wave and to the whole rollout (failures so far against every host).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from lib.flags import FlagError

NO_SITE = "-"  # how a host without `site:` is shown and grouped; sorts before any site name


@dataclass(frozen=True)
class Size:
    """A number of hosts, or a percentage of some total (a wave of all hosts, a budget of a wave)."""

    value: Fraction
    percent: bool

    def of(self, total: int) -> int:
        """Ansible's pct_to_int for waves: a percentage of total, rounded down, at least 1."""
        if not self.percent:
            return int(self.value)
        return int(self.value * total / 100) or 1

    def allowed(self, total: int) -> int:
        """How many failures a budget of this size tolerates out of `total`: failures > this exceed it.

        failed / total > pct  <=>  failed > floor(pct * total) for whole numbers of failures.
        """
        return int(self.value * total / 100) if self.percent else int(self.value)

    def __str__(self) -> str:
        shown = f"{float(self.value):g}"
        return f"{shown}%" if self.percent else shown


def parse_size(flag: str, text: str, *, zero: bool) -> Size:
    """`N` or `N%` (N% up to 100); zero only where it means something (a budget of no failures)."""
    raw = text.strip()
    percent = raw.endswith("%")
    number = raw.removesuffix("%").strip()
    try:
        value = Fraction(number)
    except (ValueError, ZeroDivisionError):
        raise FlagError(f"--{flag}={text}: give a number of hosts (e.g. 5) or a percentage (e.g. 10%)") from None
    if not percent and value.denominator != 1:
        raise FlagError(f"--{flag}={text}: a number of hosts is a whole number")
    low = 0 if zero else 1 if not percent else Fraction(1, 10**9)
    if value < low or (percent and value > 100):
        allowed = f"{'0' if zero else '1'} or more hosts, or a percentage {'0' if zero else 'above 0'}-100%"
        raise FlagError(f"--{flag}={text}: out of range; allowed: {allowed}")
    return Size(value, percent)


def parse_waves(text: str) -> tuple[Size, ...]:
    """--waves=1,10%,50%,100%: Ansible's serial list (empty: one wave of every host)."""
    parts = [p for p in text.split(",") if p.strip()] if text.strip() else []
    if text.strip() and len(parts) != len(text.split(",")):
        raise FlagError(f"--waves={text}: an empty value between commas")
    return tuple(parse_size("waves", p, zero=False) for p in parts)


def parse_budget(text: str) -> Size:
    """--max-fail=N or N%: failures tolerated per wave and over the rollout (0: none)."""
    return parse_size("max-fail", text, zero=True)


def select(sites: Mapping[str, str | None], names: Sequence[str] | None, all_: bool,
           site: str | None) -> list[str]:
    """The hosts a rollout touches: --host=a,b, --all, or --site=X (exactly one of them)."""
    given = [flag for flag, on in (("--host", names is not None), ("--all", all_), ("--site", site is not None))
             if on]
    if len(given) != 1:
        how = "give one of --host=NAME[,NAME], --all or --site=SITE"
        raise FlagError(f"{how}, not {' and '.join(given)}; nothing was done" if given else
                        f"a rollout changes hosts: {how}; nothing was done")
    if names is not None:
        unknown = [n for n in names if n not in sites]
        if unknown:
            raise FlagError(f"--host: {', '.join(unknown)} not in the inventory; hosts: {', '.join(sorted(sites))}")
        if not names:
            raise FlagError("--host: give at least one host")
        return list(dict.fromkeys(names))
    if site is not None:
        chosen = [n for n, s in sites.items() if s == site]
        if not chosen:
            known = sorted({s for s in sites.values() if s})
            raise FlagError(f"--site={site}: no host names this site; sites: {', '.join(known) or 'none'}")
        return chosen
    return list(sites)


def site_of(sites: Mapping[str, str | None], host: str) -> str:
    return sites.get(host) or NO_SITE


def by_site(hosts: Iterable[str], sites: Mapping[str, str | None]) -> list[str]:
    """Hosts ordered by site, then name: a wave fills from one site before the next."""
    return sorted(hosts, key=lambda h: (site_of(sites, h) != NO_SITE, site_of(sites, h), h))


def waves(hosts: Sequence[str], sizes: Sequence[Size]) -> list[list[str]]:
    """Ansible's serialized batches: each size in turn (of ALL hosts when a percentage), the last repeating."""
    left, out, total = list(hosts), [], len(hosts)
    steps = list(sizes) or [Size(Fraction(100), percent=True)]
    i = 0
    while left:
        n = steps[i].of(total)
        out.append(left[:n])
        left = left[n:]
        i = min(i + 1, len(steps) - 1)
    return out


@dataclass(frozen=True)
class Budget:
    """--max-fail applied to each wave and to the whole rollout."""

    size: Size

    def exceeded(self, failed_in_wave: int, wave_size: int, failed_total: int, total: int) -> str | None:
        """Why the rollout must stop (None while within budget): failures went OVER the budget."""
        if failed_in_wave > self.size.allowed(wave_size):
            return (f"{failed_in_wave} of {wave_size} hosts of the wave failed; the budget --max-fail={self.size} "
                    f"tolerates {self.size.allowed(wave_size)}")
        if failed_total > self.size.allowed(total):
            return (f"{failed_total} of {total} hosts of the rollout failed; the budget --max-fail={self.size} "
                    f"tolerates {self.size.allowed(total)}")
        return None


def startable(pending: Sequence[str], running: Iterable[str], sites: Mapping[str, str | None], *,
              per_site: int, slots: int) -> list[str]:
    """Which pending hosts may start now, in order: at most `slots` in flight in all, and at most
    `per_site` of one site in flight (0: no limit per site)."""
    busy = Counter(site_of(sites, h) for h in running)
    free = slots - sum(busy.values())
    chosen: list[str] = []
    for host in pending:
        if free <= 0:
            break
        site = site_of(sites, host)
        if per_site and busy[site] >= per_site:
            continue
        chosen.append(host)
        busy[site] += 1
        free -= 1
    return chosen


# Each host in flight holds one SSH connection (a socket) and, while it writes its records, a file;
# paramiko and the thread add none. 4 per host leaves room for a step that opens a second session
# (a VM through its hypervisor) without passing the bound.
FDS_PER_HOST = 4
FD_RESERVE = 64  # stdin/out/err, the Python runtime, the fleet record, a Temporal client


def in_flight_bound(fd_limit: int, asked: int = 0) -> int:
    """How many hosts may run at once so their descriptors fit under the process's limit."""
    fits = max(1, (fd_limit - FD_RESERVE) // FDS_PER_HOST)
    return min(asked, fits) if asked > 0 else fits


@dataclass(frozen=True)
class Between:
    """What happens between waves: nothing, a pause for an operator's go-ahead, or a soak."""

    pause: bool = False
    soak: float = 0.0

    def __post_init__(self) -> None:
        if self.pause and self.soak:
            raise FlagError("--pause and --soak: choose one (a pause waits for fleet.approve, a soak for a time)")

    def __str__(self) -> str:
        if self.pause:
            return "pause for fleet.approve"
        return f"soak {self.soak:g} s, then re-verify" if self.soak else "go on at once"


@dataclass(frozen=True)
class RolloutPlan:
    hosts: tuple[str, ...]  # in rollout order
    sites: Mapping[str, str | None]
    waves: tuple[tuple[str, ...], ...]
    budget: Budget
    per_site: int
    between: Between

    def wave_of(self, host: str) -> int:
        """1-based: wave 1 is the canary."""
        return next(i for i, wave in enumerate(self.waves, 1) if host in wave)


def rollout_plan(sites: Mapping[str, str | None], chosen: Iterable[str], sizes: Sequence[Size], budget: Size,
                 per_site: int = 0, between: Between | None = None) -> RolloutPlan:
    ordered = by_site(chosen, sites)
    return RolloutPlan(tuple(ordered), dict(sites), tuple(tuple(w) for w in waves(ordered, sizes)), Budget(budget),
                       per_site, between or Between())


def plan_text(plan: RolloutPlan) -> str:
    """The wave plan as an operator reads it, 80 columns: one line per wave, then the rules."""
    lines = [f"rollout of {len(plan.hosts)} hosts in {len(plan.waves)} waves "
             f"(budget --max-fail={plan.budget.size} per wave and overall)"]
    for i, wave in enumerate(plan.waves, 1):
        label = f"wave {i}" + (" (canary)" if i == 1 and len(plan.waves) > 1 else "")
        per = Counter(site_of(plan.sites, h) for h in wave)
        where = ", ".join(f"{s} {n}" for s, n in sorted(per.items()))
        lines.append(f"  {label:<16} {len(wave):>4} hosts  tolerates {plan.budget.size.allowed(len(wave))} "
                     f"failed  sites: {where}")
        lines += _wrapped(wave, "      ")
    limit = f"at most {plan.per_site} hosts of one site at once" if plan.per_site else "no limit per site"
    lines.append(f"  the whole rollout tolerates {plan.budget.size.allowed(len(plan.hosts))} failed; {limit}")
    lines.append(f"  between waves: {plan.between}")
    return "\n".join(lines)


def _wrapped(words: Sequence[str], indent: str, width: int = 80) -> list[str]:
    lines: list[str] = []
    line = indent
    for word in words:
        if len(line) + len(word) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += word + " "
    if line.strip():
        lines.append(line.rstrip())
    return lines
