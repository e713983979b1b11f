"""CategoryDetector: G-test of category frequencies for discrete columns."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.drift import AlertState, DriftConfig, ReferenceProfile
from streamproc.drift.window import CategoryDetector, WindowDetector

NAMES = ["flag", "channel=MOTO", "count", "hour"]
HOUR_P = np.linspace(1.0, 3.0, 24) / np.linspace(1.0, 3.0, 24).sum()


def _discrete(rng: np.random.Generator, n: int, flag_p: float = 0.05) -> np.ndarray:
    return np.column_stack(
        [
            rng.random(n) < flag_p,
            rng.random(n) < 0.3,
            np.minimum(rng.poisson(0.3, n), 5),
            rng.choice(24, size=n, p=HOUR_P),
        ]
    ).astype(np.float32)


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    return ReferenceProfile.from_matrix(_discrete(np.random.default_rng(0), 50_000), NAMES)


def _detector(profile: ReferenceProfile, window: int = 2_000) -> CategoryDetector:
    cfg = DriftConfig()
    return CategoryDetector(profile.columns, arl=cfg.design_arl(len(NAMES)), window=window)


def test_stationary_stream_of_200k_events_never_alarms(profile: ReferenceProfile) -> None:
    assert all(c.discrete for c in profile.columns)
    det = _detector(profile)
    rng = np.random.default_rng(1)
    stats = []
    for _ in range(100):
        det.update(_discrete(rng, 2_000))
        assert det.transitions == []
        stats.append(np.asarray(det.statistic))
    s = np.array(stats)
    assert np.isfinite(s).all() and (s > 0).all()
    assert not det.in_drift.any()
    thr = np.asarray(det.threshold)
    assert (s.max(axis=0) < thr).all()


def test_boolean_5_to_15_percent_fires_once_then_resolves(profile: ReferenceProfile) -> None:
    det = _detector(profile)
    rng = np.random.default_rng(2)
    det.update(_discrete(rng, 10_000))
    assert det.transitions == []
    fired = []
    for k in range(10):  # 20k events with the flag at 15%
        det.update(_discrete(rng, 2_000, flag_p=0.15), np.arange(2_000) + 10_000 + 2_000 * k)
        fired += [(k, t) for t in det.transitions]
    assert [t.state for _, t in fired] == [AlertState.FIRING]
    k, tr = fired[0]
    assert k <= 1  # within two windows of the change
    assert tr.feature == 0 and tr.statistic == "g_test" and tr.value > tr.threshold
    assert tr.first_offset is not None and tr.first_offset >= 10_000
    assert det.in_drift.tolist() == [True, False, False, False]
    resolved = []
    for _ in range(3):
        det.update(_discrete(rng, 2_000))
        resolved += det.transitions
    assert [(t.state, t.feature) for t in resolved] == [(AlertState.RESOLVED, 0)]
    assert not det.in_drift.any()


def test_unseen_value_is_finite_and_detected(profile: ReferenceProfile) -> None:
    det = _detector(profile)
    rng = np.random.default_rng(3)
    x = _discrete(rng, 2_000)
    x[:50, 2] = 42.0  # a count the reference never held
    det.update(x)
    stat = np.asarray(det.statistic)
    assert np.isfinite(stat).all()
    assert [t.feature for t in det.transitions] == [2]


def test_rare_categories_pool_into_other_bin(profile: ReferenceProfile) -> None:
    det = _detector(profile, window=200)
    rng = np.random.default_rng(4)
    for _ in range(200):
        det.update(_discrete(rng, 200))
        assert det.transitions == []
    assert np.isfinite(np.asarray(det.statistic)).all()


def test_rejects_a_continuous_column() -> None:
    prof = ReferenceProfile.from_matrix(np.random.default_rng(0).normal(size=(1_000, 1)), ["x"])
    with pytest.raises(ValueError, match="category"):
        CategoryDetector(prof.columns, arl=1e7)


def test_windowed_psi_on_discrete_columns_is_finite(profile: ReferenceProfile) -> None:
    """Bins the discrete column never reaches used to make PSI infinite."""
    det = WindowDetector.from_profile(profile, kind="psi", arl=DriftConfig().design_arl(4))
    rng = np.random.default_rng(5)
    for _ in range(20):
        det.update(_discrete(rng, 2_000))
        assert det.transitions == []
        assert np.isfinite(np.asarray(det.statistic)).all()


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 3_000), min_size=1, max_size=8))
def test_batch_split_does_not_change_the_result(
    profile: ReferenceProfile, sizes: list[int]
) -> None:
    rng = np.random.default_rng(6)
    x = np.concatenate([_discrete(rng, 6_000), _discrete(rng, 6_000, flag_p=0.2)])
    whole = _detector(profile)
    whole.update(x)
    # The case tested detects something: the flag's rate rising at row 6,000.
    assert [(t.state, t.feature) for t in whole.transitions] == [(AlertState.FIRING, 0)]
    assert whole.transitions[0].first_offset >= 6_000
    parts = _detector(profile)
    got = []
    cuts = np.cumsum(sizes)
    for chunk in np.split(x, cuts[cuts < len(x)]):
        parts.update(chunk)
        got += [(t.state, t.feature, t.last_offset) for t in parts.transitions]
    assert got == [(t.state, t.feature, t.last_offset) for t in whole.transitions]


def _values(*specials: float) -> st.SearchStrategy[list[float]]:
    """Batches of 1-64 values: the given ones (categories, near misses) or any float32."""
    return st.lists(
        st.one_of(
            st.sampled_from(specials), st.floats(allow_nan=True, allow_infinity=True, width=32)
        ),
        min_size=1,
        max_size=64,
    )


def _assert_bins_like_the_reference(det: CategoryDetector, values: list[float]) -> None:
    """The kernel's counts for ``values`` in every column equal the numpy reference's."""
    seg = np.tile(np.array(values, dtype=np.float64)[:, None], (1, det.n_features))
    det._accumulate(seg)
    for j, counts in enumerate(det._counts):
        col = seg[:, j][np.isfinite(seg[:, j])]
        want = np.bincount(det._bins(j, col), minlength=counts.size) if col.size else 0
        np.testing.assert_array_equal(counts, want)


@settings(max_examples=60, deadline=None)
@given(_values(0.0, 1.0, 2.0, 3.0, 5.0, 23.0, 0.5, 1.0000001, -1.0, 99.0))
def test_compiled_binning_equals_the_numpy_reference(
    profile: ReferenceProfile, values: list[float]
) -> None:
    _assert_bins_like_the_reference(_detector(profile), values)


@pytest.fixture(scope="module")
def mixed_profile() -> ReferenceProfile:
    """One column per binning path: whole numbers from 0 (a direct table), then columns
    searched: fractions, negative whole numbers, a whole number beyond the table's reach."""
    rng = np.random.default_rng(4)
    n = 20_000
    x = np.column_stack(
        [
            rng.choice([0.0, 1.0, 3.0], size=n),
            rng.choice([0.25, 0.5, 1.5], size=n),
            rng.choice([-1.0, 0.0, 1.0], size=n),
            rng.choice([0.0, 5000.0], size=n),
        ]
    ).astype(np.float32)
    prof = ReferenceProfile.from_matrix(x, ["whole", "fraction", "negative", "beyond"])
    assert all(c.discrete for c in prof.columns)
    return prof


def test_only_columns_of_small_whole_categories_get_a_direct_table(
    mixed_profile: ReferenceProfile,
) -> None:
    det = CategoryDetector(mixed_profile.columns, arl=1e6)
    assert det._k_direct_len.tolist() == [4, 0, 0, 0]
    # 2 is no category of "whole": it goes to "other", like a search would send it
    assert det._k_direct[0, 2] == det._expected[0].size - 1


@settings(max_examples=60, deadline=None)
@given(_values(0.0, -0.0, 1.0, 2.0, 3.0, 4.0, 0.25, 0.5, 1.5, -1.0, 5000.0, 1.0000001))
def test_direct_tables_bin_like_the_numpy_reference(
    mixed_profile: ReferenceProfile, values: list[float]
) -> None:
    _assert_bins_like_the_reference(CategoryDetector(mixed_profile.columns, arl=1e6), values)
