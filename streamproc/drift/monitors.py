"""Per-model-version monitors that turn detector transitions into :class:`AlertEvent` s.

* :class:`DriftMonitor`: input drift per feature (``update``) and prediction drift on the
  model score (``update_scores``);
* :class:`QualityMonitor`: reject / NaN rates against the reference, new writer schemas;
* :class:`AccuracyMonitor`: joins labels to predictions by event id and watches the error
  rate.

>>> import numpy as np
>>> from streamproc.drift.profile import ReferenceProfile
>>> rng = np.random.default_rng(0)
>>> train = rng.normal(size=(20_000, 2)).astype(np.float32)
>>> mon = DriftMonitor(ReferenceProfile.from_matrix(train, ["amount", "age"]))
>>> mon.update(rng.normal(size=(5_000, 2)).astype(np.float32))
[]
>>> shifted = (rng.normal(size=(2_000, 2)) + [0.0, 1.0]).astype(np.float32)
>>> [(str(a.type), str(a.state), a.feature, a.statistic) for a in mon.update(shifted)]
[('input_drift', 'FIRING', 'age', 'cusum_mean_up')]
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from streamproc.drift.alerts import AlertEvent, AlertState, AlertType, Severity
from streamproc.drift.base import Detector, Transition
from streamproc.drift.config import DriftConfig
from streamproc.drift.factory import make_detector, make_error_detector
from streamproc.drift.profile import ReferenceProfile
from streamproc.errors import ConfigError

_DIRECTION = {
    "cusum_mean_up": "mean shifted up",
    "cusum_mean_down": "mean shifted down",
    "cusum_variance_up": "variance increased",
}


def _offset(offsets: npt.NDArray[np.int64] | None, t0: int, row: int) -> int:
    return int(offsets[row]) if offsets is not None else t0 + row


class _AlertMaker:
    """Maps detector transitions of one alert type to AlertEvents, pairing severities."""

    def __init__(self, kind: AlertType, names: Sequence[str | None], config: DriftConfig) -> None:
        self.kind = kind
        self.names = list(names)
        self.config = config
        self._severity: dict[int, Severity] = {}

    def severity(self, tr: Transition) -> Severity:
        if tr.state == AlertState.RESOLVED:
            return self._severity.pop(tr.feature, Severity.WARNING)
        sev = Severity.WARNING
        est = tr.estimate
        if math.isfinite(est):
            if tr.statistic == "cusum_variance_up":
                critical = est >= self.config.critical_variance_ratio
            elif tr.statistic.startswith("cusum_mean"):
                critical = abs(est) >= self.config.critical_shift_sigma
            else:
                critical = False
            sev = Severity.CRITICAL if critical else sev
        self._severity[tr.feature] = sev
        return sev

    def make(self, transitions: Iterable[Transition], what: str | None = None) -> list[AlertEvent]:
        out = []
        for tr in transitions:
            name = self.names[tr.feature]
            label = name if name is not None else (what or "stream")
            if tr.state == AlertState.FIRING:
                detail = _DIRECTION.get(tr.statistic, "drift detected")
                if math.isfinite(tr.estimate):
                    unit = "x variance" if tr.statistic == "cusum_variance_up" else "sigma"
                    if tr.statistic == "bernoulli_cusum":
                        detail = f"error rate ~{tr.estimate:.3f}"
                    else:
                        detail += f" (~{tr.estimate:+.2f} {unit})"
                msg = (
                    f"{label}: {detail} over the last {tr.window_events} events "
                    f"({tr.statistic} {tr.value:.4g} > {tr.threshold:.4g})"
                )
            else:
                msg = (
                    f"{label}: no drift for {self.config.recovery_events} events; "
                    f"alert lasted {tr.window_events} events"
                )
            out.append(
                AlertEvent(
                    self.kind,
                    tr.state,
                    self.severity(tr),
                    name,
                    tr.statistic,
                    float(tr.value),
                    float(tr.threshold),
                    int(tr.window_events),
                    tr.first_offset,
                    tr.last_offset,
                    msg,
                )
            )
        return out


class DriftMonitor:
    """Input drift per feature and prediction (score) drift for one model version.

    Without a stored profile, the first ``config.reference_events`` events (and scores)
    become the reference; no alerts until then.
    """

    def __init__(
        self,
        profile: ReferenceProfile | None = None,
        config: DriftConfig | None = None,
        *,
        columns: Sequence[str] | None = None,
    ) -> None:
        self.config = config or DriftConfig()
        self.profile = profile
        self._names = list(columns) if columns is not None else None
        self._buf: list[npt.NDArray[np.float32]] = []
        self._buffered = 0
        self._score_buf: list[npt.NDArray[np.float64]] = []
        self._score_buffered = 0
        self._t = 0
        self._ts = 0
        self.detector: Detector | None = None
        self.score_detector: Detector | None = None
        self._alerts: _AlertMaker | None = None
        self._score_alerts = _AlertMaker(AlertType.PREDICTION_DRIFT, [None], self.config)
        if profile is not None:
            self._init_features(profile)
            if profile.scores is not None:
                self._init_scores(profile)

    @property
    def columns(self) -> list[str] | None:
        return self._names

    def _check_rows(self, n: int) -> None:
        if n < self.config.min_events:
            raise ConfigError(
                f"reference has {n} rows; drift monitoring needs at least {self.config.min_events}"
            )

    def _init_features(self, profile: ReferenceProfile) -> None:
        self._check_rows(profile.n_rows)
        if self._names is None:
            self._names = profile.names
        cols = [profile.column(c) for c in self._names]
        self.detector = make_detector(self.config, profile, columns=cols)
        self._alerts = _AlertMaker(AlertType.INPUT_DRIFT, self._names, self.config)

    def _init_scores(self, profile: ReferenceProfile) -> None:
        assert profile.scores is not None
        self._check_rows(profile.scores.n)
        self.score_detector = make_detector(
            self.config,
            profile,
            columns=[profile.scores],
            budget=self.config.score_false_alarms_per_million,
            univariate=True,
        )

    def update(
        self, features: npt.NDArray[np.floating], offsets: npt.NDArray[np.integer] | None = None
    ) -> list[AlertEvent]:
        """Feed one micro-batch of feature rows, shape ``(n, f)``; returns new alerts."""
        x = np.asarray(features)
        if x.ndim != 2:
            raise ValueError(f"features must have shape (n, f), got {x.shape}")
        off = None if offsets is None else np.asarray(offsets, dtype=np.int64)
        if self.detector is None:
            x, off = self._collect_reference(x, off)
            if self.detector is None or x.shape[0] == 0:
                return []
        assert self._alerts is not None
        self.detector.update(x, off)
        self._t += x.shape[0]
        return self._alerts.make(self.detector.transitions)

    def _collect_reference(
        self, x: npt.NDArray[np.floating], off: npt.NDArray[np.int64] | None
    ) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.int64] | None]:
        need = self.config.reference_events - self._buffered
        self._buf.append(np.asarray(x[:need], dtype=np.float32))
        self._buffered += min(need, x.shape[0])
        if self._buffered < self.config.reference_events:
            return x[:0], None
        ref = np.concatenate(self._buf)
        self._buf = []
        names = self._names or [f"f{j}" for j in range(ref.shape[1])]
        prof = ReferenceProfile.from_matrix(ref, names, source="stream")
        if self.profile is not None:  # keep stored score profile / error rate
            prof.scores, prof.error_rate = self.profile.scores, self.profile.error_rate
        self.profile = prof
        self._names = names
        self._init_features(prof)
        return x[need:], None if off is None else off[need:]

    def update_scores(
        self, scores: npt.NDArray[np.floating], offsets: npt.NDArray[np.integer] | None = None
    ) -> list[AlertEvent]:
        """Feed the model scores of one micro-batch, shape ``(n,)``; returns new alerts."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        off = None if offsets is None else np.asarray(offsets, dtype=np.int64)
        if self.score_detector is None:
            need = self.config.reference_events - self._score_buffered
            self._score_buf.append(s[:need])
            self._score_buffered += min(need, s.size)
            if self._score_buffered < self.config.reference_events:
                return []
            ref = np.concatenate(self._score_buf)
            self._score_buf = []
            sp = ReferenceProfile.from_matrix(ref[:, None], ["score"], source="stream")
            score_col = sp.columns[0]
            if self.profile is None:
                sp.columns = []
                self.profile = sp
            self.profile.scores = score_col
            self._init_scores(self.profile)
            s = s[need:]
            off = None if off is None else off[need:]
            if s.size == 0:
                return []
        assert self.score_detector is not None
        self.score_detector.update(s, off)
        self._ts += s.size
        return self._score_alerts.make(self.score_detector.transitions, "score")


class QualityMonitor:
    """Reject and NaN rates per tumbling window against the reference, and new schemas.

    ``reject_counts`` maps a reason (e.g. ``"MISSING_FEATURE"``) to how many of the
    ``n_total`` events of the batch were rejected for it. A rate alerts when it exceeds
    ``max(quality_ratio * reference, reference + quality_margin)`` and resolves after
    ``quality_recovery_windows`` windows back under. Each writer schema id not seen before
    gives one INFO ``new_schema`` alert.

    >>> import numpy as np
    >>> qm = QualityMonitor(config=DriftConfig(quality_window_events=100),
    ...                     known_schema_ids=[1])
    >>> [a.statistic for a in qm.update(100, {"MISSING_FEATURE": 30})]
    ['missing_feature_rate']
    >>> [(str(a.type), a.value) for a in qm.update(10, {}, schema_ids=np.array([1, 2, 2]))]
    [('new_schema', 2.0)]
    """

    def __init__(
        self,
        profile: ReferenceProfile | None = None,
        config: DriftConfig | None = None,
        *,
        known_schema_ids: Iterable[int] | None = None,
    ) -> None:
        self.config = config or DriftConfig()
        self.profile = profile
        self.known_schema_ids: set[int] | None = (
            None if known_schema_ids is None else {int(s) for s in known_schema_ids}
        )
        self._n = 0
        self._rejects: dict[str, int] = {}
        self._nan: npt.NDArray[np.int64] | None = None
        self._nan_rows = 0
        self._firing: dict[Hashable, tuple[int, float, Severity, int | None]] = {}
        self._quiet: dict[Hashable, int] = {}
        self._first_off: int | None = None
        self._last_off: int | None = None
        self._t = 0

    def _ref_rate(self, key: tuple[str, str | None]) -> float:
        stat, feature = key
        if self.profile is None:
            return 0.0
        if feature is not None:
            try:
                return self.profile.column(feature).missing_rate
            except KeyError:
                return 0.0
        return self.profile.reject_rates.get(stat, 0.0)

    def update(
        self,
        n_total: int,
        reject_counts: Mapping[str, int],
        nan_mask: npt.NDArray[np.bool_] | None = None,
        schema_ids: npt.NDArray[np.integer] | None = None,
        offsets: npt.NDArray[np.integer] | None = None,
    ) -> list[AlertEvent]:
        alerts = self._schemas(schema_ids, offsets)
        if offsets is not None and len(offsets):
            o = np.asarray(offsets)
            self._first_off = int(o.min()) if self._first_off is None else self._first_off
            self._last_off = int(o.max())
        self._n += int(n_total)
        self._t += int(n_total)
        for reason, count in reject_counts.items():
            key = str(getattr(reason, "name", reason)).lower()
            self._rejects[key] = self._rejects.get(key, 0) + int(count)
        if nan_mask is not None:
            m = np.asarray(nan_mask, dtype=np.bool_)
            counts = m.sum(axis=0).astype(np.int64)
            self._nan = counts if self._nan is None else self._nan + counts
            self._nan_rows += m.shape[0]
        if self._n >= self.config.quality_window_events:
            alerts.extend(self._evaluate())
        return alerts

    def _schemas(
        self, schema_ids: npt.NDArray[np.integer] | None, offsets: npt.NDArray[np.integer] | None
    ) -> list[AlertEvent]:
        if schema_ids is None or len(schema_ids) == 0:
            return []
        ids = np.asarray(schema_ids).reshape(-1)
        uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
        keep = uniq >= 0
        uniq, first, counts = uniq[keep], first[keep], counts[keep]
        if self.known_schema_ids is None:  # the first ids seen are the baseline
            self.known_schema_ids = {int(u) for u in uniq}
            return []
        out = []
        for u, f, c in sorted(zip(uniq, first, counts, strict=True), key=lambda r: r[1]):
            if int(u) in self.known_schema_ids:
                continue
            self.known_schema_ids.add(int(u))
            off = int(offsets[f]) if offsets is not None else None
            out.append(
                AlertEvent(
                    AlertType.NEW_SCHEMA,
                    AlertState.FIRING,
                    Severity.INFO,
                    None,
                    "schema_id",
                    float(u),
                    0.0,
                    int(c),
                    off,
                    off,
                    f"new writer schema id {int(u)} seen ({int(c)} events)",
                )
            )
        return out

    def _evaluate(self) -> list[AlertEvent]:
        rates: dict[tuple[str, str | None], float] = {}
        for reason, count in self._rejects.items():
            rates[(f"{reason}_rate", None)] = count / self._n
        if self._nan is not None and self._nan_rows:
            names = self.profile.names if self.profile is not None else []
            for j, c in enumerate(self._nan.tolist()):
                name = names[j] if j < len(names) else f"f{j}"
                rates[("nan_rate", name)] = c / self._nan_rows
        for key in list(self._firing):  # firing keys absent this window have rate 0
            rates.setdefault(key, 0.0)  # type: ignore[arg-type]
        out = []
        cfg = self.config
        for key, rate in rates.items():
            stat, feature = key
            ref = self._ref_rate(key)
            thr = max(cfg.quality_ratio * ref, ref + cfg.quality_margin)
            label = f"{feature}: " if feature else ""
            if rate > thr:
                self._quiet[key] = 0
                if key not in self._firing:
                    sev = (
                        Severity.CRITICAL if rate >= cfg.quality_critical_rate else Severity.WARNING
                    )
                    self._firing[key] = (self._t, thr, sev, self._first_off)
                    out.append(
                        AlertEvent(
                            AlertType.DATA_QUALITY,
                            AlertState.FIRING,
                            sev,
                            feature,
                            stat,
                            rate,
                            thr,
                            self._n,
                            self._first_off,
                            self._last_off,
                            f"{label}{stat} {rate:.4f} > {thr:.4f} "
                            f"(reference {ref:.4f}) over {self._n} events",
                        )
                    )
            elif key in self._firing:
                self._quiet[key] = self._quiet.get(key, 0) + 1
                if self._quiet[key] >= cfg.quality_recovery_windows:
                    t_fire, thr0, sev, first = self._firing.pop(key)
                    del self._quiet[key]
                    out.append(
                        AlertEvent(
                            AlertType.DATA_QUALITY,
                            AlertState.RESOLVED,
                            sev,
                            feature,
                            stat,
                            rate,
                            thr0,
                            self._t - t_fire,
                            first,
                            self._last_off,
                            f"{label}{stat} back under {thr0:.4f} for "
                            f"{cfg.quality_recovery_windows} windows",
                        )
                    )
        self._n = 0
        self._rejects = {}
        self._nan = None
        self._nan_rows = 0
        self._first_off = None
        return out


class AccuracyMonitor:
    """Joins labels to predictions by event id and watches the error rate.

    Predictions wait in an LRU of ``config.label_retention`` entries; a label whose
    prediction is not there counts as ``unmatched`` (and also as ``late`` when that
    prediction was evicted before the label came). Matched labels feed the error-rate
    detector (a Bernoulli CUSUM by default) with 1 for a wrong prediction.

    >>> am = AccuracyMonitor(DriftConfig(label_retention=2), reference_error_rate=0.1)
    >>> am.record_predictions(["a", "b", "c"], [1, 0, 1])
    >>> am.record_labels(["b", "c", "a", "x"], [0, 0, 1, 1])
    []
    >>> am.matched, am.unmatched, am.late, am.evicted, am.errors
    (2, 2, 1, 1, 1)
    """

    def __init__(
        self, config: DriftConfig | None = None, *, reference_error_rate: float | None = None
    ) -> None:
        self.config = config or DriftConfig()
        self.capacity = self.config.label_retention
        p0 = reference_error_rate or self.config.reference_error_rate
        self.reference_error_rate = p0
        self._preds: OrderedDict[str, object] = OrderedDict()
        self._evicted_ids: OrderedDict[str, None] = OrderedDict()
        self.matched = 0
        self.unmatched = 0
        self.late = 0
        self.evicted = 0
        self.errors = 0
        self._warm: list[float] = []
        self.detector: Detector | None = (
            None if p0 is None else make_error_detector(self.config, p0)
        )
        self._alerts = _AlertMaker(AlertType.ACCURACY_DRIFT, [None], self.config)
        self._t = 0

    @property
    def pending(self) -> int:
        return len(self._preds)

    def record_predictions(
        self, event_ids: Sequence[str], predicted_labels: Sequence[object]
    ) -> None:
        preds = self._preds
        for eid, label in zip(event_ids, predicted_labels, strict=True):
            if eid in preds:
                preds.move_to_end(eid)
            preds[eid] = label
            if len(preds) > self.capacity:
                old, _ = preds.popitem(last=False)
                self.evicted += 1
                self._evicted_ids[old] = None
                if len(self._evicted_ids) > self.capacity:
                    self._evicted_ids.popitem(last=False)

    def record_labels(
        self,
        event_ids: Sequence[str],
        true_labels: Sequence[object],
        offsets: npt.NDArray[np.integer] | None = None,
    ) -> list[AlertEvent]:
        errs: list[float] = []
        offs: list[int] = []
        miss = object()
        for i, (eid, label) in enumerate(zip(event_ids, true_labels, strict=True)):
            pred = self._preds.pop(eid, miss)
            if pred is miss:
                self.unmatched += 1
                if eid in self._evicted_ids:
                    self.late += 1
                    del self._evicted_ids[eid]
                continue
            self.matched += 1
            wrong = pred != label
            self.errors += int(wrong)
            errs.append(1.0 if wrong else 0.0)
            offs.append(int(offsets[i]) if offsets is not None else self.matched - 1)
        if not errs:
            return []
        x = np.array(errs)
        off = np.array(offs, dtype=np.int64)
        if self.detector is None:
            need = self.config.accuracy_warmup_labels - len(self._warm)
            self._warm.extend(errs[:need])
            x, off = x[need:], off[need:]
            if len(self._warm) < self.config.accuracy_warmup_labels:
                return []
            n = len(self._warm)
            p = (sum(self._warm) + 1.0) / (n + 2.0)
            # One standard error up: an estimated p0 that is too low would flood alarms.
            p0 = min(p + math.sqrt(p * (1.0 - p) / n), 0.5)
            self.reference_error_rate = p0
            self.detector = make_error_detector(self.config, p0)
            if x.size == 0:
                return []
        self.detector.update(x, off)
        self._t += x.size
        return self._alerts.make(self.detector.transitions, "accuracy")
