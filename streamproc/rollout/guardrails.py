"""Live per-version metrics and the guardrails a candidate must pass during a rollout.

:class:`VersionStats` keeps the most recent ``window`` events of one version in fixed-size
rings (memory is bounded however long the rollout runs): per-event failure flags,
latencies, scores, and correctness of the events whose true label came back as feedback.
:class:`Guardrails` compares the candidate with stable and returns a :class:`Verdict`:

- error rate: the candidate's may exceed stable's by at most ``max_error_rate``;
- p99 latency: at most ``stable p99 * max_p99_ratio + p99_slack_ms`` (and ``max_p99_ms``);
- accuracy on labelled events (only once ``min_labels`` arrived): at most
  ``max_accuracy_drop`` below stable's, and not below ``min_accuracy``;
- prediction drift: PSI (or two-sample KS) of candidate scores against stable's.

A breach of any is reported with the metric, its value and the threshold. Too few events
for a check gives ``insufficient_data`` (accuracy never blocks: labels may not come).

>>> rng = np.random.default_rng(0)
>>> stable, cand = VersionStats(), VersionStats()
>>> stable.record(rng.beta(1, 20, 2000), latency_ms=rng.gamma(4, 0.5, 2000))
>>> cand.record(rng.beta(1, 20, 2000), latency_ms=rng.gamma(4, 0.5, 2000) + 50)
>>> v = Guardrails().evaluate(RolloutStats(stable, cand))
>>> v.kind, v.metric, v.value > v.threshold
('breach', 'p99_latency_ms', True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streamproc.config import GuardrailThresholds as GuardrailThresholds  # noqa: PLC0414
from streamproc.errors import ConfigError


class _Ring:
    """The last ``capacity`` values appended, in a preallocated array."""

    __slots__ = ("_buf", "_n", "_pos")

    def __init__(self, capacity: int, dtype: type[np.generic]) -> None:
        self._buf = np.zeros(capacity, dtype=dtype)
        self._pos = 0
        self._n = 0

    def extend(self, values: npt.ArrayLike) -> None:
        arr = np.asarray(values, dtype=self._buf.dtype).ravel()
        cap = len(self._buf)
        if len(arr) >= cap:
            self._buf[:] = arr[-cap:]
            self._pos, self._n = 0, cap
            return
        end = self._pos + len(arr)
        if end <= cap:
            self._buf[self._pos : end] = arr
        else:
            split = cap - self._pos
            self._buf[self._pos :] = arr[:split]
            self._buf[: end - cap] = arr[split:]
        self._pos = end % cap
        self._n = min(cap, self._n + len(arr))

    def values(self) -> npt.NDArray[Any]:
        """The held values (oldest first)."""
        if self._n < len(self._buf):
            return self._buf[: self._n].copy()
        return np.concatenate([self._buf[self._pos :], self._buf[: self._pos]])

    def __len__(self) -> int:
        return self._n


class VersionStats:
    """One version's recent events: failures, latency, scores, labelled correctness."""

    def __init__(self, window: int = 5000) -> None:
        if window < 1:
            raise ConfigError(f"window must be positive, got {window}")
        self.window = window
        self.events_total = 0
        self.failures_total = 0
        self._failed = _Ring(window, np.bool_)
        self._latency = _Ring(window, np.float64)
        self._scores = _Ring(window, np.float64)
        self._correct = _Ring(window, np.bool_)

    def record(
        self,
        scores: npt.ArrayLike,
        *,
        latency_ms: npt.ArrayLike | float,
        failed: int = 0,
    ) -> None:
        """One batch: the scores of its scored events, their latency (one value per event or
        one for the whole batch) and how many events this version failed to score."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        lat = np.broadcast_to(np.asarray(latency_ms, dtype=np.float64), s.shape)
        self.events_total += len(s) + failed
        self.failures_total += failed
        self._failed.extend(np.concatenate([np.zeros(len(s), bool), np.ones(failed, bool)]))
        self._latency.extend(lat)
        self._scores.extend(s)

    def record_feedback(self, correct: npt.ArrayLike) -> None:
        """Per labelled event: whether this version's prediction matched the true label."""
        self._correct.extend(np.asarray(correct, dtype=bool))

    @property
    def events(self) -> int:
        """Events in the window."""
        return len(self._failed)

    @property
    def error_rate(self) -> float:
        return float(self._failed.values().mean()) if self.events else math.nan

    def latency_quantile(self, q: float) -> float:
        lat = self._latency.values()
        return float(np.quantile(lat, q)) if len(lat) else math.nan

    @property
    def p99_latency_ms(self) -> float:
        return self.latency_quantile(0.99)

    @property
    def latency_samples(self) -> int:
        return len(self._latency)

    @property
    def scores(self) -> npt.NDArray[np.float64]:
        return self._scores.values().astype(np.float64)

    @property
    def labelled(self) -> int:
        return len(self._correct)

    @property
    def accuracy(self) -> float:
        return float(self._correct.values().mean()) if self.labelled else math.nan


@dataclass(slots=True)
class RolloutStats:
    stable: VersionStats = field(default_factory=VersionStats)
    candidate: VersionStats = field(default_factory=VersionStats)


# ---------------------------------------------------------------------------- statistics


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of ``actual`` against ``expected`` (quantile bins).

    Rule of thumb: below 0.1 stable, 0.1-0.25 moderate shift, above 0.25 significant.

    >>> rng = np.random.default_rng(1)
    >>> same = psi(rng.normal(size=5000), rng.normal(size=5000))
    >>> moved = psi(rng.normal(size=5000), rng.normal(0.5, 1, size=5000))
    >>> same < 0.02, moved > 0.2
    (True, True)
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if len(e) == 0 or len(a) == 0:
        return math.nan
    edges = np.unique(np.quantile(e, np.linspace(0, 1, bins + 1)[1:-1]))
    pe = np.bincount(np.searchsorted(edges, e, side="right"), minlength=len(edges) + 1) / len(e)
    pa = np.bincount(np.searchsorted(edges, a, side="right"), minlength=len(edges) + 1) / len(a)
    pe, pa = np.clip(pe, eps, None), np.clip(pa, eps, None)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def ks_2samp(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic D and its asymptotic p-value.

    >>> d, p = ks_2samp([1, 2, 3, 4], [1, 2, 3, 4])
    >>> d, p
    (0.0, 1.0)
    >>> rng = np.random.default_rng(2)
    >>> d, p = ks_2samp(rng.normal(size=400), rng.normal(1, 1, size=400))
    >>> round(d, 2), p < 1e-10
    (0.38, True)
    """
    x = np.sort(np.asarray(a, dtype=np.float64))
    y = np.sort(np.asarray(b, dtype=np.float64))
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        return math.nan, math.nan
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / n
    cdf_y = np.searchsorted(y, grid, side="right") / m
    d = float(np.max(np.abs(cdf_x - cdf_y)))
    ne = n * m / (n + m)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    return d, _kolmogorov_sf(lam)


def _kolmogorov_sf(lam: float) -> float:
    if lam < 1e-3:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return float(min(1.0, max(0.0, 2 * total)))


# ---------------------------------------------------------------------------- guardrails


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Literal["ok", "breach", "insufficient_data"]
    reason: str = ""
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def breach(self) -> bool:
        return self.kind == "breach"

    @property
    def insufficient(self) -> bool:
        return self.kind == "insufficient_data"


class Guardrails:
    """Judges a candidate against stable with :class:`GuardrailThresholds`."""

    def __init__(self, thresholds: GuardrailThresholds | None = None) -> None:
        self.thresholds = thresholds or GuardrailThresholds()
        self._overridden: dict[tuple[tuple[str, Any], ...], Guardrails] = {}

    def overridden(self, pairs: tuple[tuple[str, Any], ...]) -> Guardrails:
        """These guardrails with some thresholds replaced (a deployment's own), built once
        per distinct set of pairs.

        >>> Guardrails().overridden((("max_error_rate", 0.2),)).thresholds.max_error_rate
        0.2
        """
        if not pairs:
            return self
        found = self._overridden.get(pairs)
        if found is None:
            merged = {**self.thresholds.model_dump(), **dict(pairs)}
            found = self._overridden[pairs] = Guardrails(GuardrailThresholds.from_mapping(merged))
        return found

    def evaluate(self, stats: RolloutStats) -> Verdict:
        """The first breach found, else ``insufficient_data`` if a check lacks data, else ok."""
        missing: list[str] = []
        for check in (self._errors, self._latency, self._accuracy, self._drift):
            verdict = check(stats.stable, stats.candidate)
            if verdict.breach:
                return verdict
            if verdict.insufficient:
                missing.append(verdict.reason)
        if missing:
            return Verdict("insufficient_data", "; ".join(missing))
        return Verdict("ok", "all guardrails pass")

    def _errors(self, stable: VersionStats, cand: VersionStats) -> Verdict:
        t = self.thresholds
        if cand.events < t.min_events:
            return Verdict("insufficient_data", f"{cand.events}/{t.min_events} candidate events")
        base = stable.error_rate if stable.events >= t.min_events else 0.0
        limit = base + t.max_error_rate
        if cand.error_rate > limit:
            return Verdict(
                "breach",
                f"candidate error rate {cand.error_rate:.2%} exceeds {limit:.2%} "
                f"(stable {base:.2%} + {t.max_error_rate:.2%})",
                "error_rate",
                cand.error_rate,
                limit,
            )
        return Verdict("ok")

    def _latency(self, stable: VersionStats, cand: VersionStats) -> Verdict:
        t = self.thresholds
        if cand.latency_samples < t.min_latency_samples:
            return Verdict(
                "insufficient_data",
                f"{cand.latency_samples}/{t.min_latency_samples} candidate latency samples",
            )
        limits = []
        if stable.latency_samples >= t.min_latency_samples:
            limits.append(stable.p99_latency_ms * t.max_p99_ratio + t.p99_slack_ms)
        if t.max_p99_ms is not None:
            limits.append(t.max_p99_ms)
        if not limits:
            return Verdict("insufficient_data", "too few stable latency samples to compare")
        limit = min(limits)
        p99 = cand.p99_latency_ms
        if p99 > limit:
            return Verdict(
                "breach",
                f"candidate p99 latency {p99:.2f} ms exceeds {limit:.2f} ms "
                f"(stable p99 {stable.p99_latency_ms:.2f} ms)",
                "p99_latency_ms",
                p99,
                limit,
            )
        return Verdict("ok")

    def _accuracy(self, stable: VersionStats, cand: VersionStats) -> Verdict:
        t = self.thresholds
        if cand.labelled < t.min_labels:
            return Verdict("ok")  # labels are optional: never wait for them
        limits = []
        if t.min_accuracy is not None:
            limits.append(t.min_accuracy)
        if stable.labelled >= t.min_labels:
            limits.append(stable.accuracy - t.max_accuracy_drop)
        if limits and cand.accuracy < max(limits):
            limit = max(limits)
            return Verdict(
                "breach",
                f"candidate accuracy {cand.accuracy:.2%} on {cand.labelled} labelled events "
                f"is below {limit:.2%} (stable {stable.accuracy:.2%})",
                "accuracy",
                cand.accuracy,
                limit,
            )
        return Verdict("ok")

    def _drift(self, stable: VersionStats, cand: VersionStats) -> Verdict:
        t = self.thresholds
        n_s, n_c = len(stable.scores), len(cand.scores)
        if min(n_s, n_c) < t.min_drift_samples:
            return Verdict(
                "insufficient_data",
                f"{min(n_s, n_c)}/{t.min_drift_samples} scores to compare distributions",
            )
        if t.drift_statistic == "ks":
            value, limit = ks_2samp(stable.scores, cand.scores)[0], t.max_ks
        else:
            value, limit = psi(stable.scores, cand.scores), t.max_psi
        if value > limit:
            return Verdict(
                "breach",
                f"candidate score distribution drifted from stable: "
                f"{t.drift_statistic.upper()} {value:.3f} > {limit:.3f}",
                f"prediction_drift_{t.drift_statistic}",
                value,
                limit,
            )
        return Verdict("ok")
