from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamproc.drift import ReferenceProfile
from streamproc.drift._stats import lag1_autocorrelation
from streamproc.errors import ConfigError


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
