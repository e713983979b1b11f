from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.errors import ConfigError
from streamproc.rollout.guardrails import (
    Guardrails,
    GuardrailThresholds,
    RolloutStats,
    VersionStats,
    _Ring,
)
from streamproc.stats import ks_2samp, psi


def _scores(rng, n, shift=0.0):
    return np.clip(rng.beta(2, 30, n) + shift, 0, 1)


def _pair(seed=0, n=2000, cand_latency=0.0, cand_failed=0, cand_shift=0.0):
    rng = np.random.default_rng(seed)
    stable, cand = VersionStats(), VersionStats()
    for _ in range(4):  # a few batches each
        stable.record(_scores(rng, n // 4), latency_ms=rng.gamma(4, 0.5, n // 4))
        cand.record(
            _scores(rng, n // 4, cand_shift),
            latency_ms=rng.gamma(4, 0.5, n // 4) + cand_latency,
            failed=cand_failed // 4,
        )
    return RolloutStats(stable, cand)


def test_healthy_candidate_passes():
    v = Guardrails().evaluate(_pair())
    assert v.ok and v.kind == "ok"


def test_injected_latency_is_a_breach():
    v = Guardrails().evaluate(_pair(cand_latency=25.0))
    assert v.breach and v.metric == "p99_latency_ms"
    assert v.value > v.threshold
    assert "p99 latency" in v.reason
    # a small slowdown inside the allowance is fine
    assert Guardrails().evaluate(_pair(cand_latency=0.5)).ok


def test_absolute_latency_cap():
    v = Guardrails(GuardrailThresholds(max_p99_ms=3.0)).evaluate(_pair())
    assert v.breach and v.threshold == 3.0


def test_error_rate_breach():
    v = Guardrails().evaluate(_pair(cand_failed=200))
    assert v.breach and v.metric == "error_rate"
    assert v.value == pytest.approx(200 / 2200) and v.threshold == pytest.approx(0.01)


def test_wrong_outputs_on_labelled_events_are_a_breach():
    stats = _pair()
    rng = np.random.default_rng(9)
    stats.stable.record_feedback(rng.random(400) < 0.95)
    stats.candidate.record_feedback(rng.random(400) < 0.70)  # candidate gets 30% wrong
    v = Guardrails().evaluate(stats)
    assert v.breach and v.metric == "accuracy"
    assert v.value == pytest.approx(stats.candidate.accuracy)
    assert v.threshold == pytest.approx(stats.stable.accuracy - 0.05)


def test_too_few_labels_never_block():
    stats = _pair()
    stats.candidate.record_feedback(np.zeros(20, bool))  # all wrong, but only 20 labels
    assert Guardrails().evaluate(stats).ok


def test_absolute_minimum_accuracy_without_stable_labels():
    stats = _pair()
    stats.candidate.record_feedback(np.arange(200) % 5 != 0)  # 80% right
    assert Guardrails(GuardrailThresholds(min_accuracy=0.9)).evaluate(stats).breach
    assert Guardrails(GuardrailThresholds(min_accuracy=0.75)).evaluate(stats).ok


@pytest.mark.parametrize("statistic", ["psi", "ks"])
def test_prediction_drift_breach(statistic):
    g = Guardrails(GuardrailThresholds(drift_statistic=statistic))
    v = g.evaluate(_pair(cand_shift=0.2))
    assert v.breach and v.metric == f"prediction_drift_{statistic}"
    assert g.evaluate(_pair(seed=3)).ok


def test_insufficient_data():
    stats = _pair(n=100)
    v = Guardrails().evaluate(stats)
    assert v.insufficient and "100/200 candidate events" in v.reason
    # a breach is reported even where other checks still lack data
    stats.candidate.record(np.zeros(100), latency_ms=500.0)
    assert Guardrails(GuardrailThresholds(max_p99_ms=50)).evaluate(stats).breach


def test_window_forgets_old_events():
    s = VersionStats(window=100)
    s.record(np.zeros(50), latency_ms=1.0, failed=50)
    assert s.error_rate == 0.5
    s.record(np.zeros(100), latency_ms=2.0)
    assert (s.events, s.error_rate, s.p99_latency_ms) == (100, 0.0, 2.0)
    assert (s.events_total, s.failures_total) == (200, 50)
    assert math.isnan(VersionStats().error_rate) and math.isnan(VersionStats().accuracy)


def test_thresholds_from_config():
    t = GuardrailThresholds.from_mapping({"max_p99_ratio": 2, "max_error_rate": 0.05})
    assert (t.max_p99_ratio, t.max_error_rate, t.min_events) == (2.0, 0.05, 200)
    with pytest.raises(ConfigError, match="max_p99_rato"):
        GuardrailThresholds.from_mapping({"max_p99_rato": 2})
    with pytest.raises(ConfigError):
        GuardrailThresholds.from_mapping({"max_error_rate": 2})
    with pytest.raises(ConfigError):
        VersionStats(window=0)


def test_psi_and_ks_on_known_cases():
    rng = np.random.default_rng(4)
    same, other = rng.normal(size=20_000), rng.normal(size=20_000)
    assert psi(same, other) < 0.01
    assert psi(same, rng.normal(1, 1, 20_000)) > 0.25
    d, p = ks_2samp([0.0, 1, 2], [3.0, 4, 5])
    assert d == 1.0 and p < 0.1
    d, p = ks_2samp(same, other)
    assert d < 0.02 and p > 0.01
    assert math.isnan(psi([], [1.0]))


@given(st.integers(1, 20), st.lists(st.lists(st.floats(-1e6, 1e6), max_size=30), max_size=8))
def test_ring_holds_the_last_values_in_order(capacity, chunks):
    ring = _Ring(capacity, np.float64)
    everything: list[float] = []
    for chunk in chunks:
        ring.extend(chunk)
        everything.extend(chunk)
        assert ring.values().tolist() == everything[-capacity:]
        assert len(ring) == min(capacity, len(everything))
