from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.drift.calibration import (
    bernoulli_arl,
    bernoulli_lattice,
    bernoulli_threshold,
    brook_evans_arl,
    mean_arl,
    mean_threshold,
    variance_offset,
    variance_threshold,
)
from streamproc.stats import chi2_1_cdf, norm_cdf, norm_ppf


@pytest.mark.parametrize("k", [0.1, 0.25, 0.5])
def test_siegmund_agrees_with_brook_evans(k: float) -> None:
    h = mean_threshold(k, 1e5)
    be = brook_evans_arl(lambda x: norm_cdf(x + k), h, states=400)
    assert be == pytest.approx(1e5, rel=0.05)


def test_variance_threshold_meets_arl() -> None:
    h = variance_threshold(2.0, 1e5)
    c = variance_offset(2.0)
    assert brook_evans_arl(lambda x: chi2_1_cdf(x + c), h, states=500) == pytest.approx(
        1e5, rel=0.05
    )


def test_variance_arl_by_simulation() -> None:
    # Short run lengths so that a plain simulation is cheap and exact enough.
    h = variance_threshold(2.0, 200.0)
    c = variance_offset(2.0)
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(3000):
        s, t = 0.0, 0
        while s <= h:
            e = rng.standard_normal()
            s = max(0.0, s + e * e - c)
            t += 1
        runs.append(t)
    assert np.mean(runs) == pytest.approx(200.0, rel=0.08)


def test_bernoulli_threshold_is_smallest_meeting_arl() -> None:
    h = bernoulli_threshold(0.1, 0.15, 1e6)
    assert bernoulli_arl(0.1, 0.15, h) >= 1e6 > bernoulli_arl(0.1, 0.15, h - 1)
    assert bernoulli_arl(0.1, 0.15, h, p=0.15) < 1500  # detects the target quickly


def test_bernoulli_lattice_keeps_the_ratio() -> None:
    up, down, unit = bernoulli_lattice(0.1, 0.15)
    assert up / down == pytest.approx(np.log(1.5) / -np.log(0.85 / 0.9), rel=0.02)
    assert unit * down == pytest.approx(-np.log(0.85 / 0.9))


@settings(max_examples=50, deadline=None)
@given(st.floats(1e-12, 1 - 1e-12))
def test_norm_ppf_inverts_cdf(p: float) -> None:
    x = norm_ppf(np.array([p]))
    assert norm_cdf(x)[0] == pytest.approx(p, rel=1e-6, abs=1e-15)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.05, 1.0), st.floats(1e3, 1e9))
def test_mean_threshold_solves_siegmund(k: float, arl: float) -> None:
    assert mean_arl(k, mean_threshold(k, arl)) == pytest.approx(arl, rel=2e-3)
