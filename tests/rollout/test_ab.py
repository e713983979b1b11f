from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.errors import DeploymentError
from streamproc.rollout.ab import VariantData, ab_report, render, variants_from_predictions
from streamproc.rollout.state import Deploy, Strategy, StrategyParams, apply
from streamproc.stats import betainc, mann_whitney_u, t_two_sided, two_proportion_z, welch_t


def test_two_proportion_z_known_case():
    # 60/100 vs 40/100: pooled p = 0.5, se = sqrt(0.25 * 0.02), z = 0.2 / se = 2.8284
    z, p = two_proportion_z(60, 100, 40, 100)
    assert z == pytest.approx(2 * math.sqrt(2), rel=1e-12)
    assert p == pytest.approx(0.0046777, abs=1e-6)
    assert two_proportion_z(40, 100, 60, 100)[0] == pytest.approx(-z)
    assert two_proportion_z(0, 10, 0, 10) == (0.0, 1.0)
    assert all(math.isnan(x) for x in two_proportion_z(1, 0, 1, 10))


def _t_tail_by_integration(t, df):
    # 1 - P(|T| < t): integrate the density over [0, t], which is accurate for any df
    x = np.linspace(0, abs(t), 200_001)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    return 1 - 2 * float(np.trapezoid(c * (1 + x * x / df) ** (-(df + 1) / 2), x))


def test_welch_known_case():
    # Welch (1947)-style example, as on Wikipedia: t = -2.46, df = 24.99, p = 0.021
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    t, df, p = welch_t(a, b)
    assert t == pytest.approx(-2.4554, abs=1e-4)
    assert df == pytest.approx(24.9885, abs=1e-3)
    assert p == pytest.approx(0.02138, abs=1e-5)
    assert p == pytest.approx(_t_tail_by_integration(t, df), rel=1e-6)


@pytest.mark.parametrize(
    ("t", "df", "p"), [(2.228, 10, 0.05), (12.706, 1, 0.05), (2.576, 1e6, 0.01)]
)
def test_t_distribution_table_values(t, df, p):
    assert t_two_sided(t, df) == pytest.approx(p, abs=2e-4)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.05, 8), st.floats(1, 80))
def test_t_tail_matches_numerical_integration(t, df):
    assert t_two_sided(t, df) == pytest.approx(_t_tail_by_integration(t, df), abs=1e-6)


@given(st.floats(0.1, 20), st.floats(0.1, 20), st.integers(0, 1024))
def test_betainc_symmetry(a, b, k):
    x = k / 1024  # 1 - x is exact, so both sides see the same point
    assert betainc(a, b, x) == pytest.approx(1 - betainc(b, a, 1 - x), abs=1e-9)
    assert 0 <= betainc(a, b, x) <= 1


@given(st.floats(0.1, 20), st.floats(1e-12, 1))
def test_betainc_closed_form(a, x):
    # I_x(a, 1) = x**a
    assert betainc(a, 1.0, x) == pytest.approx(x**a, rel=1e-9, abs=1e-12)


def test_mann_whitney_known_case():
    # complete separation of 5 and 5: U = 0; normal approximation with continuity
    # correction: z = (12.5 - 0.5) / sqrt(22.9167) = 2.5067, p = 0.01219
    u, p = mann_whitney_u([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert u == 0 and p == pytest.approx(0.012186, abs=1e-6)
    assert mann_whitney_u([1, 1, 1], [1, 1, 1]) == (4.5, 1.0)


@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=20),
    st.lists(st.integers(0, 5), min_size=1, max_size=20),
)
def test_mann_whitney_u_counts_pairs(a, b):
    u, p = mann_whitney_u(a, b)
    pairs = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    assert u == pytest.approx(pairs)
    assert 0 <= p <= 1


def _variant(name, rng, n, p_pos, acc=None, latency=2.0):
    pos = rng.random(n) < p_pos
    scores = np.where(pos, rng.uniform(0.5, 1, n), rng.uniform(0, 0.5, n))
    correct = None if acc is None else rng.random(n // 2) < acc
    return VariantData(name, "v-" + name, scores, pos, rng.gamma(4, latency / 4, n), correct)


def test_report_names_the_more_accurate_variant():
    rng = np.random.default_rng(11)
    report = ab_report(
        _variant("A", rng, 6000, 0.03, acc=0.90), _variant("B", rng, 6000, 0.03, acc=0.94)
    )
    assert report.accuracy is not None and report.accuracy.significant
    assert "B is more accurate" in report.verdict and "promote B" in report.verdict
    assert report.a.count == report.b.count == 6000 and report.b.labelled == 3000
    text = render(report)
    assert "accuracy" in text and report.verdict in text
    d = report.as_dict()
    assert [v["name"] for v in d["variants"]] == ["A", "B"]
    assert {t["metric"] for t in d["tests"]} == {
        "positive_rate",
        "mean_score",
        "score_distribution",
        "accuracy",
    }


def test_report_keeps_a_when_b_is_worse_and_says_no_winner_when_equal():
    rng = np.random.default_rng(12)
    worse = ab_report(
        _variant("A", rng, 6000, 0.03, acc=0.95), _variant("B", rng, 6000, 0.03, acc=0.90)
    )
    assert "keep A, roll back B" in worse.verdict
    n = 3000
    pos = np.arange(n) < 90  # exactly 3% positive, 90% right, in both variants
    correct = np.arange(n // 2) % 10 != 0
    same = ab_report(
        VariantData("A", "1", np.where(pos, 0.9, 0.1), pos, np.ones(n), correct),
        VariantData("B", "2", np.where(pos, 0.8, 0.2), pos, np.ones(n), correct),
    )
    assert same.positive_rate.p_value == 1.0 and same.accuracy.p_value == 1.0
    assert same.verdict.startswith("Positive rates do not differ significantly")
    assert "no winner yet" in same.verdict


def test_report_with_too_little_data():
    rng = np.random.default_rng(13)
    report = ab_report(_variant("A", rng, 20, 0.1), _variant("B", rng, 500, 0.1))
    assert report.verdict.startswith("Not enough data yet: A has 20 events")


def test_variants_from_prediction_records():
    s = apply(None, Deploy("fraud", "1.0.0", at_ms=0))
    s = apply(
        s,
        Deploy(
            "fraud",
            "1.1.0",
            Strategy.AB,
            StrategyParams(percent=50, variants=("old", "new")),
            at_ms=1,
        ),
    )
    preds = [
        {
            "event_id": "e1",
            "model_version": "1.0.0",
            "score": 0.9,
            "label": "fraud",
            "latency_ms": 3,
        },
        {
            "event_id": "e2",
            "model_version": "1.1.0",
            "score": 0.1,
            "label": "legit",
            "latency_ms": 4,
        },
        {
            "event_id": "e3",
            "model_version": "1.1.0",
            "score": 0.8,
            "label": "fraud",
            "latency_ms": 5,
        },
        {
            "event_id": "e4",
            "model_version": "0.9.0",
            "score": 0.8,
            "label": "fraud",
            "latency_ms": 5,
        },
    ]
    a, b = variants_from_predictions(
        s, preds, positive_label="fraud", true_labels={"e1": "legit", "e2": "legit", "e3": "fraud"}
    )
    assert (a.name, a.version, a.scores.tolist(), a.positive.tolist(), a.correct.tolist()) == (
        "old",
        "1.0.0",
        [0.9],
        [True],
        [False],
    )
    assert (b.name, b.positive.tolist(), b.correct.tolist(), b.latency_ms.tolist()) == (
        "new",
        [False, True],
        [True, True],
        [4.0, 5.0],
    )
    with pytest.raises(DeploymentError):
        variants_from_predictions(
            apply(None, Deploy("m", "1.0.0", at_ms=0)), preds, positive_label="fraud"
        )
