"""A/B report: how two variants compare, with significance tests and a verdict in words.

Per variant: event count, mean score, positive rate, accuracy where true labels came back,
latency p50/p99. Tests (numpy and :mod:`math` only): a two-proportion z-test for positive
rate and accuracy, Welch's t-test for the mean score and Mann-Whitney U for the score
distribution (normal approximation with tie correction).

>>> rng = np.random.default_rng(7)
>>> def variant(name, p, n=4000):
...     pos = rng.random(n) < p
...     return VariantData(name, "1.0.0", np.where(pos, 0.9, 0.1), pos, np.full(n, 2.0))
>>> report = ab_report(variant("A", 0.02), variant("B", 0.04))
>>> report.positive_rate.significant, report.positive_rate.p_value < 1e-5
(True, True)
>>> print(report.verdict)  # doctest: +NORMALIZE_WHITESPACE
B flags more events as positive than A (3.98% vs 2.02%, p=3.2e-07). No labelled outcomes:
the test shows how the outputs differ, not which variant is more accurate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from streamproc.errors import DeploymentError
from streamproc.rollout.state import DeploymentState
from streamproc.stats import mann_whitney_u, two_proportion_z, welch_t

# ----------------------------------------------------------------------------- the report


@dataclass(frozen=True, slots=True)
class VariantData:
    """What one variant did. ``correct`` holds one flag per labelled event (may be empty)."""

    name: str
    version: str
    scores: npt.NDArray[np.float64]
    positive: npt.NDArray[np.bool_]  # per event: predicted the positive label
    latency_ms: npt.NDArray[np.float64]
    correct: npt.NDArray[np.bool_] | None = None


@dataclass(frozen=True, slots=True)
class VariantSummary:
    name: str
    version: str
    count: int
    mean_score: float
    positive_rate: float
    positives: int
    labelled: int
    accuracy: float  # NaN without labels
    p50_latency_ms: float
    p99_latency_ms: float

    @classmethod
    def of(cls, v: VariantData) -> VariantSummary:
        n = len(v.scores)
        correct = v.correct if v.correct is not None else np.zeros(0, bool)
        lat = np.asarray(v.latency_ms, dtype=np.float64)
        return cls(
            name=v.name,
            version=v.version,
            count=n,
            mean_score=float(np.mean(v.scores)) if n else math.nan,
            positive_rate=float(np.mean(v.positive)) if n else math.nan,
            positives=int(np.sum(v.positive)),
            labelled=len(correct),
            accuracy=float(np.mean(correct)) if len(correct) else math.nan,
            p50_latency_ms=float(np.quantile(lat, 0.5)) if len(lat) else math.nan,
            p99_latency_ms=float(np.quantile(lat, 0.99)) if len(lat) else math.nan,
        )


@dataclass(frozen=True, slots=True)
class TestResult:
    test: str
    metric: str
    a: float
    b: float
    statistic: float
    p_value: float
    significant: bool


@dataclass(frozen=True, slots=True)
class ABReport:
    a: VariantSummary
    b: VariantSummary
    positive_rate: TestResult
    accuracy: TestResult | None
    mean_score: TestResult
    score_distribution: TestResult
    alpha: float
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        def clean(d: dict[str, Any]) -> dict[str, Any]:
            return {
                k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()
            }

        tests = [self.positive_rate, self.mean_score, self.score_distribution]
        if self.accuracy is not None:
            tests.append(self.accuracy)
        return {
            "variants": [clean(_fields(self.a)), clean(_fields(self.b))],
            "tests": [clean(_fields(t)) for t in tests],
            "alpha": self.alpha,
            "verdict": self.verdict,
        }


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2%}"


def _p(p: float) -> str:
    return f"p={p:.2g}"


def ab_report(
    a: VariantData,
    b: VariantData,
    *,
    alpha: float = 0.05,
    min_events: int = 30,
    min_labels: int = 30,
) -> ABReport:
    """Compare variant ``b`` (the candidate) with ``a``; see the module docstring."""
    sa, sb = VariantSummary.of(a), VariantSummary.of(b)
    z, p = two_proportion_z(sa.positives, sa.count, sb.positives, sb.count)
    pos = TestResult(
        "two-proportion z", "positive_rate", sa.positive_rate, sb.positive_rate, z, p, p < alpha
    )
    acc = None
    if sa.labelled and sb.labelled:
        xa = round(sa.accuracy * sa.labelled)
        xb = round(sb.accuracy * sb.labelled)
        z, p = two_proportion_z(xa, sa.labelled, xb, sb.labelled)
        enough = min(sa.labelled, sb.labelled) >= min_labels
        acc = TestResult(
            "two-proportion z", "accuracy", sa.accuracy, sb.accuracy, z, p, enough and p < alpha
        )
    t, _, p = welch_t(a.scores, b.scores)
    mean = TestResult("Welch t", "mean_score", sa.mean_score, sb.mean_score, t, p, p < alpha)
    u, p = mann_whitney_u(a.scores, b.scores)
    dist = TestResult(
        "Mann-Whitney U", "score_distribution", sa.mean_score, sb.mean_score, u, p, p < alpha
    )
    verdict = _verdict(sa, sb, pos, acc, mean, alpha, min_events, min_labels)
    return ABReport(sa, sb, pos, acc, mean, dist, alpha, verdict)


def _verdict(
    sa: VariantSummary,
    sb: VariantSummary,
    pos: TestResult,
    acc: TestResult | None,
    mean: TestResult,
    alpha: float,
    min_events: int,
    min_labels: int,
) -> str:
    if min(sa.count, sb.count) < min_events:
        return (
            f"Not enough data yet: {sa.name} has {sa.count} events and {sb.name} {sb.count}; "
            f"each needs at least {min_events}."
        )
    parts = []
    if pos.significant:
        more = sb.name if pos.b > pos.a else sa.name
        other = sa.name if more == sb.name else sb.name
        hi, lo = max(pos.a, pos.b), min(pos.a, pos.b)
        parts.append(
            f"{more} flags more events as positive than {other} "
            f"({_pct(hi)} vs {_pct(lo)}, {_p(pos.p_value)})."
        )
    else:
        parts.append(
            f"Positive rates do not differ significantly ({sa.name} {_pct(pos.a)}, "
            f"{sb.name} {_pct(pos.b)}, {_p(pos.p_value)})."
        )
    if mean.significant and not pos.significant:
        parts.append(
            f"Mean scores differ ({sa.name} {mean.a:.4f}, {sb.name} {mean.b:.4f}, "
            f"{_p(mean.p_value)})."
        )
    if acc is None:
        parts.append(
            "No labelled outcomes: the test shows how the outputs differ, "
            "not which variant is more accurate."
        )
    elif min(sa.labelled, sb.labelled) < min_labels:
        parts.append(
            f"Too few labelled outcomes to judge accuracy ({sa.labelled} and {sb.labelled}; "
            f"each needs {min_labels})."
        )
    elif acc.significant:
        better, worse = (sb, sa) if acc.b > acc.a else (sa, sb)
        action = f"promote {sb.name}" if better is sb else f"keep {sa.name}, roll back {sb.name}"
        parts.append(
            f"{better.name} is more accurate ({_pct(better.accuracy)} vs {_pct(worse.accuracy)} "
            f"on labelled events, {_p(acc.p_value)}): {action}."
        )
    else:
        parts.append(
            f"No significant accuracy difference ({sa.name} {_pct(acc.a)}, {sb.name} "
            f"{_pct(acc.b)}, {_p(acc.p_value)}, alpha {alpha:g}): no winner yet."
        )
    return " ".join(parts)


def render(report: ABReport) -> str:
    """The report as aligned plain text."""
    rows = [("", report.a.name, report.b.name)]
    for label, get in (
        ("version", lambda s: s.version),
        ("events", lambda s: f"{s.count:,}"),
        ("mean score", lambda s: f"{s.mean_score:.4f}"),
        ("positive rate", lambda s: _pct(s.positive_rate)),
        ("labelled", lambda s: f"{s.labelled:,}"),
        ("accuracy", lambda s: _pct(s.accuracy)),
        ("latency p50 ms", lambda s: f"{s.p50_latency_ms:.3f}"),
        ("latency p99 ms", lambda s: f"{s.p99_latency_ms:.3f}"),
    ):
        rows.append((label, get(report.a), get(report.b)))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, width, strict=True))
        )
        for r in rows
    ]
    tests = [report.positive_rate, report.mean_score, report.score_distribution]
    tests += [report.accuracy] if report.accuracy is not None else []
    lines.append("")
    for t in tests:
        mark = "significant" if t.significant else "not significant"
        lines.append(f"{t.metric}: {t.test} = {t.statistic:.3f}, {_p(t.p_value)} ({mark})")
    lines += ["", report.verdict]
    return "\n".join(lines)


# --------------------------------------------------------------------------- data source


class ABSource(Protocol):
    """Where an A/B report's data comes from (the lead's Kafka reader, or a test double)."""

    def variants(self, state: DeploymentState) -> tuple[VariantData, VariantData]:
        """Data of the stable and candidate variants since ``state.deployed_ms``."""
        ...


def variants_from_predictions(
    state: DeploymentState,
    predictions: Iterable[Mapping[str, Any]],
    *,
    positive_label: str,
    true_labels: Mapping[str, str] | None = None,
) -> tuple[VariantData, VariantData]:
    """Group ``Prediction`` records (Avro dicts) into stable and candidate variant data.

    Uses ``model_version``, ``score``, ``label``, ``latency_ms`` and ``event_id``;
    ``true_labels`` maps event ids to the label that came back as feedback.

    >>> from streamproc.rollout.state import Deploy, Strategy, apply
    >>> s = apply(apply(None, Deploy("m", "1.0.0", at_ms=0)),
    ...           Deploy("m", "2.0.0", Strategy.AB, at_ms=1))
    >>> preds = [{"event_id": str(i), "model_version": "1.0.0" if i % 2 else "2.0.0",
    ...           "score": 0.9, "label": "fraud", "latency_ms": 1.0} for i in range(4)]
    >>> a, b = variants_from_predictions(s, preds, positive_label="fraud",
    ...                                  true_labels={"0": "fraud", "2": "legit"})
    >>> (a.name, len(a.scores), a.correct.tolist()), (b.name, len(b.scores), b.correct.tolist())
    (('A', 2, []), ('B', 2, [True, False]))
    """
    if state.stable is None or state.candidate is None:
        raise DeploymentError(f"{state.model}: no candidate to compare with the stable version")
    cols: dict[str, dict[str, list[Any]]] = {
        v: {"scores": [], "positive": [], "latency": [], "correct": []}
        for v in (state.stable, state.candidate)
    }
    labels = true_labels or {}
    for rec in predictions:
        bucket = cols.get(str(rec.get("model_version")))
        if bucket is None:
            continue
        bucket["scores"].append(float(rec["score"]))
        bucket["positive"].append(rec.get("label") == positive_label)
        bucket["latency"].append(float(rec.get("latency_ms", math.nan)))
        truth = labels.get(str(rec.get("event_id")))
        if truth is not None:
            bucket["correct"].append(rec.get("label") == truth)
    names: Sequence[str] = state.variant_names
    out = [
        VariantData(
            name,
            version,
            np.asarray(cols[version]["scores"], dtype=np.float64),
            np.asarray(cols[version]["positive"], dtype=bool),
            np.asarray(cols[version]["latency"], dtype=np.float64),
            np.asarray(cols[version]["correct"], dtype=bool),
        )
        for name, version in zip(names, (state.stable, state.candidate), strict=True)
    ]
    return out[0], out[1]
