"""lib.cpuset: the kernel cpulist format, by example and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lib.cpuset import MAX_CPU, format_cpulist, parse_cpulist

cpu_sets = st.frozensets(st.integers(min_value=0, max_value=1023))


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("", set()),
        ("\n", set()),
        ("5", {5}),
        ("0-3", {0, 1, 2, 3}),
        ("0-15,36-51", set(range(16)) | set(range(36, 52))),
        ("16-17,52-53\n", {16, 17, 52, 53}),
        ("  1,3,5-6 \n", {1, 3, 5, 6}),
        ("7-7", {7}),
        ("3,1,2", {1, 2, 3}),  # not canonical, but the set is clear
        ("0-2,1-3", {0, 1, 2, 3}),  # overlaps merge
    ],
)
def test_parse_examples(text: str, cpus: set[int]) -> None:
    assert parse_cpulist(text) == frozenset(cpus)


@pytest.mark.parametrize(
    ("cpus", "text"),
    [
        ([], ""),
        ([5], "5"),
        ([5, 6], "5-6"),  # the kernel writes a pair as a range too
        ([7, 5, 6], "5-7"),
        ([3, 3, 4], "3-4"),
        ([0, 2, 4], "0,2,4"),
        (range(16), "0-15"),
        ([*range(16), *range(36, 52)], "0-15,36-51"),
        ([16, 17, 52, 53], "16-17,52-53"),
        ([34, 35, 70, 71], "34-35,70-71"),
        ([1, 3, 4, 5, 9], "1,3-5,9"),
    ],
)
def test_format_examples(cpus: list[int], text: str) -> None:
    assert format_cpulist(cpus) == text


def test_format_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative: -1"):
        format_cpulist([3, -1])


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("1-", "1-"),
        ("a", "a"),
        ("5-3", "5-3"),
        ("-1", "-1"),
        ("1,,2", ""),
        ("0-3,", ""),
        ("0-3, 5", " 5"),
        ("0-31:2", "0-31:2"),  # stride form: not supported, so refused rather than misread
        ("1-2-3", "1-2-3"),
        ("٣", "٣"),  # a non-ASCII digit int() would accept
        (f"0-{MAX_CPU + 1}", f"0-{MAX_CPU + 1}"),
    ],
)
def test_parse_rejects_and_names_the_part(text: str, bad: str) -> None:
    with pytest.raises(ValueError, match="bad cpulist part") as info:
        parse_cpulist(text)
    assert repr(bad) in str(info.value)


@given(cpu_sets)
def test_parse_inverts_format(cpus: frozenset[int]) -> None:
    assert parse_cpulist(format_cpulist(cpus)) == cpus


@given(cpu_sets)
def test_round_trip_is_stable(cpus: frozenset[int]) -> None:
    text = format_cpulist(cpus)
    assert format_cpulist(parse_cpulist(text)) == text
    assert format_cpulist(parse_cpulist(text + "\n")) == text


@given(st.lists(st.integers(min_value=0, max_value=1023)))
def test_canonical_form_ignores_order_and_duplicates(cpus: list[int]) -> None:
    text = format_cpulist(cpus)
    assert text == format_cpulist(sorted(set(cpus), reverse=True))
    # Canonical means no run is split: a range is never followed by its successor.
    parsed = parse_cpulist(text)
    for part in filter(None, text.split(",")):
        last = int(part.split("-")[-1])
        assert last + 1 not in parsed
        if "-" in part:
            first, end = map(int, part.split("-"))
            assert first < end


@given(
    st.lists(st.integers(min_value=0, max_value=1023)),
    st.sampled_from(["", "a", "1-", "-1", "9-3", "x-2", "1-2-3", "+4", "0x1f", "1 2"]),
    st.integers(min_value=0),
)
def test_any_bad_part_is_named(cpus: list[int], bad: str, where: int) -> None:
    parts = [str(cpu) for cpu in cpus]
    parts.insert(where % (len(parts) + 1), bad)
    text = ",".join(parts)
    if not text.strip():  # a lone "" part is just the empty list, which is valid
        return
    with pytest.raises(ValueError, match="bad cpulist part") as info:
        parse_cpulist(text)
    # the first bad part is reported; here that is the one inserted, the rest being valid
    assert repr(bad) in str(info.value)
