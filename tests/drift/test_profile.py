from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamproc.drift import ReferenceProfile
from streamproc.drift.profile import TAIL_SPAN, TransformTables
from streamproc.errors import ConfigError
from streamproc.stats import lag1_autocorrelation


def test_save_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3_000, 3))
    x[::10, 0] = np.nan
    x[:, 2] = rng.integers(0, 3, size=3_000)
    prof = ReferenceProfile.from_matrix(
        x, ["a", "b", "c"], model_version="2.0.0", scores=rng.random(3_000), error_rate=0.1
    )
    path = prof.save(tmp_path)
    assert path.name == "reference_profile.json"
    json.loads(path.read_text())  # plain JSON, no NaN tokens
    back = ReferenceProfile.load(tmp_path)
    assert back == prof
    probe = rng.normal(size=(50, 3))
    np.testing.assert_array_equal(back.normal_scores(probe), prof.normal_scores(probe))


def test_column_statistics() -> None:
    rng = np.random.default_rng(1)
    x = np.column_stack([rng.normal(5.0, 2.0, 50_000), rng.integers(0, 2, 50_000)])
    x[:5_000, 0] = np.nan
    prof = ReferenceProfile.from_matrix(x, ["num", "flag"])
    num, flag = prof.columns
    assert num.missing_rate == pytest.approx(0.1)
    assert num.median == pytest.approx(5.0, abs=0.05)
    assert num.scale == pytest.approx(2.0, rel=0.03)
    assert num.categories is None and not num.discrete
    assert flag.categories is not None and set(flag.categories) == {"0", "1"}
    assert sum(flag.categories.values()) == pytest.approx(1.0)
    z = prof.normal_scores(x)[:, 1]  # discrete column: standardised mid-rank scores
    assert np.mean(z) == pytest.approx(0.0, abs=1e-6) and np.std(z) == pytest.approx(1.0, rel=1e-6)


def test_normal_scores_gaussianise_heavy_tails() -> None:
    rng = np.random.default_rng(2)
    ref = np.exp(rng.normal(size=(100_000, 1)))  # lognormal
    prof = ReferenceProfile.from_matrix(ref, ["x"])
    z = prof.normal_scores(np.exp(rng.normal(size=(100_000, 1))))[:, 0]
    assert np.mean(z) == pytest.approx(0.0, abs=0.02)
    assert np.std(z) == pytest.approx(1.0, abs=0.02)
    assert np.max(np.abs(z)) < 6.0  # saturating tails: no single value dominates a CUSUM


def test_autocorrelation_is_measured() -> None:
    rng = np.random.default_rng(3)
    e = rng.normal(size=50_000)
    x = np.empty_like(e)
    x[0] = e[0]
    for i in range(1, e.size):
        x[i] = 0.5 * x[i - 1] + e[i]
    prof = ReferenceProfile.from_matrix(x[:, None], ["ar"])
    assert prof.columns[0].phi == pytest.approx(0.5, abs=0.02)
    assert lag1_autocorrelation(x) == pytest.approx(0.5, abs=0.02)


def test_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ReferenceProfile.from_matrix(np.zeros((100, 2)), ["only-one"])
    with pytest.raises(ConfigError):
        ReferenceProfile.from_matrix(np.zeros((5, 1)), ["a"])
    (tmp_path / "reference_profile.json").write_text("{not json")
    with pytest.raises(ConfigError):
        ReferenceProfile.load(tmp_path)
    (tmp_path / "reference_profile.json").write_text('{"version": 99}')
    with pytest.raises(ConfigError):
        ReferenceProfile.load(tmp_path)


def _reference_scores(t: TransformTables, x: np.ndarray, prev: np.ndarray,
                      has: np.ndarray) -> np.ndarray:  # fmt: skip
    """The transform written out value by value with numpy's own searches."""
    out = np.full(x.shape, np.nan)
    g = t.grid
    for j in range(x.shape[1]):
        k = t.knots[j]
        p, root = t.phi[j], np.sqrt(1.0 - t.phi[j] ** 2)
        for i in range(x.shape[0]):
            v = float(x[i, j])
            if not np.isfinite(v):
                continue
            if v < k[0]:
                ex = (k[0] - v) / t.lo_scale[j] if t.lo_scale[j] > 0 else np.inf
                u = g[0] - TAIL_SPAN * (1.0 - np.exp(-ex / TAIL_SPAN))
            elif v > k[-1]:
                ex = (v - k[-1]) / t.hi_scale[j] if t.hi_scale[j] > 0 else np.inf
                u = g[-1] + TAIL_SPAN * (1.0 - np.exp(-ex / TAIL_SPAN))
            else:
                lo, hi = np.searchsorted(k, v, "left"), np.searchsorted(k, v, "right")
                if hi > lo:
                    u = 0.5 * (g[lo] + g[hi - 1])
                else:
                    u = g[lo - 1] + (g[lo] - g[lo - 1]) * (v - k[lo - 1]) / (k[lo] - k[lo - 1])
            z = (u - t.z_mean[j]) / t.z_std[j]
            out[i, j] = (z - p * prev[j]) / root if p != 0.0 and has[j] else z
            prev[j], has[j] = z, True
    return out


def test_normal_scores_equal_a_plain_reference() -> None:
    """The compiled transform (indexed knot search by halving, column by column) gives
    exactly the scores of the plain one: heavy tails, ties, NaN, values beyond the
    reference, and the prewhitening state carried across batches."""
    rng = np.random.default_rng(4)
    n = 20_000
    ref = np.column_stack([
        np.exp(rng.normal(0, 2.5, n)),  # heavy tail: knots crowd into the first cells
        rng.integers(0, 4, n).astype(float),  # ties
        np.round(rng.normal(size=n), 1),  # many ties inside a continuous range
        rng.normal(size=n).cumsum() * 0.01 + rng.normal(size=n),  # autocorrelated
    ])  # fmt: skip
    prof = ReferenceProfile.from_matrix(ref, ["a", "b", "c", "d"])
    assert any(c.phi != 0.0 for c in prof.columns)
    t = TransformTables.from_columns(prof.columns, np.asarray(prof.grid))
    probe = np.vstack([ref[rng.integers(0, n, 3_000)], rng.normal(0, 50, (500, 4))])
    probe[rng.random(probe.shape) < 0.02] = np.nan
    probe[:4] = [t.knots[:, 0], t.knots[:, -1], t.knots[:, 7], t.knots[:, 0] - 1e-9]
    prev, has = np.zeros(4), np.zeros(4, dtype=np.bool_)
    want_prev, want_has = prev.copy(), has.copy()
    for part in np.array_split(probe, 3):  # three batches: the AR(1) state carries over
        got = t.scores(np.ascontiguousarray(part), prewhiten=(prev, has))
        want = _reference_scores(t, part, want_prev, want_has)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(prev, want_prev)
