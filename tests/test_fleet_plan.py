"""Rollout semantics (lib/fleet/plan.py): selection, Ansible serial waves, the failure budget, who starts next."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lib.flags import FlagError
from lib.fleet.plan import (
    FDS_PER_HOST,
    Between,
    Budget,
    in_flight_bound,
    parse_budget,
    parse_waves,
    plan_text,
    rollout_plan,
    select,
    startable,
    waves,
)

HOSTS = [f"hv{i:02d}" for i in range(20)]


def sizes(text: str) -> list[int]:
    return [len(w) for w in waves(HOSTS, parse_waves(text))]


def test_waves_are_ansible_serial_batches_sizes_not_cumulative_counts() -> None:
    # Ansible: serial [1, "10%", "50%", "100%"] over 20 hosts -> 1, int(0.1*20)=2, int(0.5*20)=10, then the rest.
    assert sizes("1,10%,50%,100%") == [1, 2, 10, 7]
    assert sizes("1,5,10") == [1, 5, 10, 4]  # the docs' example: the last value repeats
    assert sizes("3") == [3, 3, 3, 3, 3, 3, 2]
    assert sizes("") == [20]  # no serial: one batch of every host


def test_a_percentage_rounds_down_and_is_at_least_one_host() -> None:
    assert [len(w) for w in waves(HOSTS[:7], parse_waves("10%,30%"))] == [1, 2, 2, 2]  # 0.7 -> 1, 2.1 -> 2
    assert [len(w) for w in waves(HOSTS[:3], parse_waves("1%"))] == [1, 1, 1]


@given(st.integers(min_value=1, max_value=300),
       st.lists(st.one_of(st.integers(1, 50).map(str), st.integers(1, 100).map(lambda p: f"{p}%")),
                min_size=0, max_size=5))
def test_every_host_lands_in_exactly_one_wave_in_order(n: int, values: list[str]) -> None:
    hosts = [f"h{i}" for i in range(n)]
    batches = waves(hosts, parse_waves(",".join(values)))
    assert [h for b in batches for h in b] == hosts
    assert all(b for b in batches)
    specs = parse_waves(",".join(values))
    for i, batch in enumerate(batches[:-1]):  # every batch but the last is exactly its size
        assert len(batch) == (specs[min(i, len(specs) - 1)].of(n) if specs else n)


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "x", "101%", "1,,2", "0%"])
def test_bad_wave_values_are_flag_errors(text: str) -> None:
    with pytest.raises(FlagError, match="--waves"):
        parse_waves(text)


def test_budget_is_exceeded_only_when_failures_go_over_it() -> None:
    ten = Budget(parse_budget("10%"))
    assert ten.exceeded(1, 10, 1, 20) is None  # 1/10 = 10%: not over
    reason = ten.exceeded(2, 10, 2, 20)
    assert reason is not None and reason.startswith("2 of 10 hosts of the wave failed")
    assert ten.exceeded(1, 20, 1, 20) is None and ten.exceeded(2, 20, 2, 20) is None  # 2/20 = 10%: not over
    assert ten.exceeded(3, 20, 3, 20) is not None
    zero = Budget(parse_budget("0"))
    assert zero.exceeded(0, 1, 0, 20) is None and zero.exceeded(1, 1, 1, 20) is not None
    # The whole rollout: waves of 10 with 1 failure each stay within 10% per wave, but 3 of 20 do not.
    assert ten.exceeded(1, 10, 2, 20) is None and ten.exceeded(1, 10, 3, 20) is not None
    assert Budget(parse_budget("2")).exceeded(2, 5, 2, 20) is None
    assert Budget(parse_budget("2")).exceeded(3, 5, 3, 20) is not None


@given(st.integers(0, 100), st.integers(1, 500), st.integers(0, 500))
def test_percent_budget_matches_ansibles_ratio(pct: int, total: int, failed: int) -> None:
    failed = min(failed, total)
    ansible_breaks = failed / total > pct / 100  # linear strategy: failed / batch_size > percentage
    assert (Budget(parse_budget(f"{pct}%")).exceeded(failed, total, 0, total) is not None) == ansible_breaks


def test_selection_by_host_all_or_site_one_at_a_time() -> None:
    sites = {"a1": "east", "a2": "east", "b1": "west", "c1": None}
    assert select(sites, ["b1", "a1"], False, None) == ["b1", "a1"]
    assert select(sites, None, True, None) == ["a1", "a2", "b1", "c1"]
    assert select(sites, None, False, "east") == ["a1", "a2"]
    with pytest.raises(FlagError, match="nothing was done"):
        select(sites, None, False, None)
    with pytest.raises(FlagError, match="--host and --all"):
        select(sites, ["a1"], True, None)
    with pytest.raises(FlagError, match="sites: east, west"):
        select(sites, None, False, "north")
    with pytest.raises(FlagError, match="zz not in the inventory"):
        select(sites, ["zz"], False, None)


def test_hosts_are_ordered_by_site_and_the_first_wave_is_the_canary() -> None:
    sites = {"w1": "west", "e2": "east", "e1": "east", "n1": None}
    plan = rollout_plan(sites, sites, parse_waves("1,2"), parse_budget("0"))
    assert plan.hosts == ("n1", "e1", "e2", "w1")
    assert plan.waves == (("n1",), ("e1", "e2"), ("w1",))
    assert plan.wave_of("e2") == 2
    text = plan_text(plan)
    assert "wave 1 (canary)" in text and all(len(line) <= 80 for line in text.splitlines())


def test_startable_keeps_the_per_site_limit_and_the_slots() -> None:
    sites = {"e1": "east", "e2": "east", "e3": "east", "w1": "west", "w2": "west"}
    pending = ["e1", "e2", "e3", "w1", "w2"]
    assert startable(pending, [], sites, per_site=2, slots=10) == ["e1", "e2", "w1", "w2"]
    assert startable(pending, ["e9"], {**sites, "e9": "east"}, per_site=2, slots=10) == ["e1", "w1", "w2"]
    assert startable(pending, [], sites, per_site=0, slots=3) == ["e1", "e2", "e3"]
    assert startable(pending, ["w1", "w2"], sites, per_site=0, slots=2) == []


@given(st.lists(st.sampled_from(["a", "b", "c", ""]), min_size=0, max_size=40), st.integers(0, 5), st.integers(1, 20))
def test_startable_never_exceeds_either_limit(site_list: list[str], per_site: int, slots: int) -> None:
    sites: dict[str, str | None] = {f"h{i}": (s or None) for i, s in enumerate(site_list)}
    chosen = startable(list(sites), [], sites, per_site=per_site, slots=slots)
    assert len(chosen) <= slots
    if per_site:
        for site in set(site_list):
            assert sum(1 for h in chosen if (sites[h] or "") == site) <= per_site


def test_in_flight_bound_fits_100_hosts_in_the_default_1024_descriptors() -> None:
    assert in_flight_bound(1024) >= 100
    assert in_flight_bound(1024) * FDS_PER_HOST + 64 <= 1024
    assert in_flight_bound(1024, asked=10) == 10
    assert in_flight_bound(100) == 9


def test_pause_and_soak_exclude_each_other() -> None:
    with pytest.raises(FlagError, match="choose one"):
        Between(pause=True, soak=5)


def test_the_local_engine_never_imports_temporalio() -> None:
    """Start-up of every task (and a whole fleet.plan) pays nothing for the Temporal engine."""
    import subprocess
    import sys

    from tests.inventory_helpers import REPO

    code = ("import sys, tasks, lib.fleet.front, lib.fleet.local\n"
            "assert 'temporalio' not in sys.modules, sorted(m for m in sys.modules if 'temporal' in m)\n"
            "import lib.fleet.temporal.client\n"
            "assert 'temporalio' in sys.modules\n")  # the check itself can fail: the engine does import it
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stderr
