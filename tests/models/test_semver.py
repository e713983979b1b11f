from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.errors import ModelError
from streamproc.models.semver import Version, sort_versions

# The precedence example of semver.org 11.4, in ascending order.
SPEC_ORDER = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "2.0.0",
    "2.1.0",
    "2.1.1",
]


def test_semver_org_precedence_example():
    for shuffled in (SPEC_ORDER[::-1], SPEC_ORDER[1::2] + SPEC_ORDER[::2]):
        assert sort_versions(shuffled) == SPEC_ORDER
    parsed = [Version.parse(v) for v in SPEC_ORDER]
    assert all(a < b for a, b in itertools.pairwise(parsed))


@pytest.mark.parametrize(
    "text",
    [
        "1",
        "1.2",
        "01.2.3",
        "1.02.3",
        "1.2.03",
        "1.2.3-",
        "1.2.3-01",
        "1.2.3+",
        "v1.2.3",
        "1.2.3-a..b",
        " 1.2.3",
        "1.2.3.4",
        "",
    ],
)
def test_invalid_versions_are_refused(text):
    assert not Version.is_valid(text)
    with pytest.raises(ModelError, match="not a semantic version"):
        Version.parse(text)


def test_build_metadata_is_kept_but_ignored_for_precedence():
    a, b = Version.parse("1.0.0+build.1"), Version.parse("1.0.0+build.2")
    assert a == b and hash(a) == hash(b) and not a < b
    assert str(a) == "1.0.0+build.1"
    assert Version.parse("1.0.0-rc.1+x") < Version.parse("1.0.0")


def test_numeric_identifiers_compare_numerically_and_below_words():
    assert Version.parse("1.0.0-2") < Version.parse("1.0.0-10")
    assert Version.parse("1.0.0-999") < Version.parse("1.0.0-a")
    assert Version.parse("1.0.0-a.b") > Version.parse("1.0.0-a.1")


@pytest.mark.parametrize(
    ("start", "part", "expected"),
    [
        ("1.2.3", "major", "2.0.0"),
        ("1.2.3", "minor", "1.3.0"),
        ("1.2.3", "patch", "1.2.4"),
        ("1.2.3+b", "patch", "1.2.4"),
        ("1.2.3", "prerelease", "1.2.4-0"),
        ("1.2.4-rc.1", "prerelease", "1.2.4-rc.2"),
        ("1.2.4-rc", "prerelease", "1.2.4-rc.0"),
        ("2.0.0-rc.1", "major", "2.0.0"),
        ("2.1.0-rc.1", "major", "3.0.0"),
        ("2.1.0-rc.1", "minor", "2.1.0"),
        ("2.1.1-rc.1", "minor", "2.2.0"),
        ("2.1.1-rc.1", "patch", "2.1.1"),
    ],
)
def test_bump(start, part, expected):
    assert str(Version.parse(start).bump(part)) == expected


def test_bump_unknown_part():
    with pytest.raises(ModelError):
        Version.parse("1.0.0").bump("micro")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ properties

_num = st.integers(0, 10**6).map(str)
_word = st.from_regex(r"[0-9a-zA-Z-]*[a-zA-Z-][0-9a-zA-Z-]*", fullmatch=True).filter(
    lambda s: 0 < len(s) <= 8
)
_ident = st.one_of(_num, _word)
versions = st.builds(
    lambda ma, mi, pa, pre, build: Version(ma, mi, pa, tuple(pre), tuple(build)),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 5),
    st.lists(_ident, max_size=3),
    st.lists(st.from_regex(r"[0-9a-zA-Z-]{1,5}", fullmatch=True), max_size=2),
)


def _reference_cmp(a: Version, b: Version) -> int:
    """semver.org section 11, written out step by step (independent of Version.precedence)."""
    for x, y in ((a.major, b.major), (a.minor, b.minor), (a.patch, b.patch)):
        if x != y:
            return -1 if x < y else 1
    if not a.prerelease or not b.prerelease:
        return (not a.prerelease) - (not b.prerelease)
    for x, y in zip(a.prerelease, b.prerelease, strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1
        return -1 if x < y else 1
    return (len(a.prerelease) > len(b.prerelease)) - (len(a.prerelease) < len(b.prerelease))


@given(versions, versions)
def test_ordering_matches_the_specification(a, b):
    ref = _reference_cmp(a, b)
    assert (a < b) == (ref < 0)
    assert (a == b) == (ref == 0)
    assert (a > b) == (ref > 0)


@given(st.lists(versions, max_size=12))
def test_sorting_is_a_total_order(vs):
    out = sorted(vs)
    assert all(_reference_cmp(x, y) <= 0 for x, y in itertools.pairwise(out))


@given(versions)
def test_text_round_trip(v):
    again = Version.parse(str(v))
    assert str(again) == str(v)
    assert again == v


@given(versions, st.sampled_from(["major", "minor", "patch", "prerelease"]))
def test_bump_always_moves_forward(v, part):
    assert v.bump(part) > v
