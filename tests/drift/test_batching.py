"""Splitting a stream into micro-batches differently must not change what is detected."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.drift import (
    AlertState,
    BernoulliCusumDetector,
    CusumDetector,
    ReferenceProfile,
    RiverDetector,
    WindowDetector,
)
from streamproc.drift.base import Detector

RNG = np.random.default_rng(99)
PROFILE = ReferenceProfile.from_matrix(RNG.normal(size=(5_000, 2)), ["a", "b"])
STREAM = RNG.normal(size=(3_000, 2))
STREAM[800:1_100, 0] += 1.5
STREAM[1_500:1_700, 1] *= 3.0
ERRORS = (RNG.random(3_000) < np.where(np.arange(3_000) < 1_000, 0.1, 0.5)).astype(float)


def run(det: Detector, x: np.ndarray, cuts: list[int]) -> list[tuple]:
    out = []
    bounds = [0, *sorted(set(cuts)), x.shape[0]]
    for lo, hi in itertools.pairwise(bounds):
        if hi <= lo:
            continue
        det.update(x[lo:hi], np.arange(lo, hi) + 1_000_000)
        out += [
            (
                lo + tr.row,
                tr.feature,
                tr.state,
                tr.statistic,
                round(tr.value, 9),
                tr.window_events,
                tr.first_offset,
                tr.last_offset,
            )
            for tr in det.transitions
        ]
    return out


def fires(transitions: list[tuple], feature: int, rows: range) -> None:
    """The unsplit run detects the drift injected into ``feature`` within ``rows``.

    Without this an invariance test would also pass where nothing is ever detected.
    """
    firing = [t[0] for t in transitions if t[1] == feature and t[2] is AlertState.FIRING]
    assert any(r in rows for r in firing), f"feature {feature}: no FIRING in {rows}: {firing}"


cuts = st.lists(st.integers(1, 2_999), max_size=40)


@settings(max_examples=25, deadline=None)
@given(cuts)
def test_cusum_is_batch_invariant(c: list[int]) -> None:
    def make() -> Detector:
        return CusumDetector.from_profile(PROFILE, arl=1e6, recovery=300)

    whole = run(make(), STREAM, [])
    fires(whole, 0, range(800, 1_500))  # the mean shift
    fires(whole, 1, range(1_500, 2_100))  # the variance burst
    assert run(make(), STREAM, c) == whole


@settings(max_examples=25, deadline=None)
@given(cuts)
def test_window_detector_is_batch_invariant(c: list[int]) -> None:
    def make() -> Detector:
        return WindowDetector.from_profile(PROFILE, kind="psi", arl=1e6, window=100, recovery=300)

    whole = run(make(), STREAM, [])
    fires(whole, 0, range(800, 1_500))
    fires(whole, 1, range(1_500, 2_100))
    assert run(make(), STREAM, c) == whole


@settings(max_examples=15, deadline=None)
@given(cuts)
def test_river_wrapper_is_batch_invariant(c: list[int]) -> None:
    whole = run(RiverDetector("page_hinkley", 2, recovery=300), STREAM, [])
    fires(whole, 0, range(800, 1_500))
    assert run(RiverDetector("page_hinkley", 2, recovery=300), STREAM, c) == whole


@settings(max_examples=25, deadline=None)
@given(cuts)
def test_bernoulli_is_batch_invariant(c: list[int]) -> None:
    whole = run(BernoulliCusumDetector(0.1, arl=1e6, recovery=300), ERRORS, [])
    fires(whole, 0, range(1_000, 1_500))  # the error rate rises from 0.1 to 0.5 at 1,000
    assert run(BernoulliCusumDetector(0.1, arl=1e6, recovery=300), ERRORS, c) == whole
