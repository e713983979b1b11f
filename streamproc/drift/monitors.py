"""Per-model-version monitors that turn detector transitions into :class:`AlertEvent` s.

* :class:`DriftMonitor`: input drift per feature (``update``) and prediction drift on the
  model score (``update_scores``);
* :class:`~streamproc.drift.quality.QualityMonitor`: reject / NaN rates, new schemas;
* :class:`~streamproc.drift.accuracy.AccuracyMonitor`: label join and error rate.

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
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from streamproc.drift.alerts import AlertEvent, AlertState, AlertType, Severity
from streamproc.drift.base import Detector, Transition
from streamproc.drift.config import DriftConfig
from streamproc.drift.factory import make_detector
from streamproc.drift.profile import ReferenceProfile
from streamproc.errors import ConfigError

_DIRECTION = {
    "cusum_mean_up": "mean shifted up",
    "cusum_mean_down": "mean shifted down",
    "cusum_variance_up": "variance increased",
}


def _offset(offsets: npt.NDArray[np.int64] | None, t0: int, row: int) -> int:
    return int(offsets[row]) if offsets is not None else t0 + row


class AlertMaker:
    """Maps detector transitions of one alert type to AlertEvents, pairing severities."""

    def __init__(self, kind: AlertType, names: Sequence[str | None], config: DriftConfig) -> None:
        self.kind = kind
        self.names = list(names)
        self.config = config
        self._severity: dict[int, Severity] = {}
        self.unit = "labels" if kind == AlertType.ACCURACY_DRIFT else "events"
        self.recovery = (
            config.accuracy_recovery_labels
            if kind == AlertType.ACCURACY_DRIFT
            else config.recovery_events
        )

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
                    f"{label}: {detail} over the last {tr.window_events} {self.unit} "
                    f"({tr.statistic} {tr.value:.4g} > {tr.threshold:.4g})"
                )
            else:
                msg = (
                    f"{label}: no drift for {self.recovery} {self.unit}; "
                    f"alert lasted {tr.window_events} {self.unit}"
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
        self._alerts: AlertMaker | None = None
        self._score_alerts = AlertMaker(AlertType.PREDICTION_DRIFT, [None], self.config)
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
        self._alerts = AlertMaker(AlertType.INPUT_DRIFT, self._names, self.config)

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
        self,
        features: npt.NDArray[np.floating],
        offsets: npt.NDArray[np.integer] | None = None,
        event_time_ms: npt.NDArray[np.integer] | None = None,
    ) -> list[AlertEvent]:
        """Feed one micro-batch of feature rows, shape ``(n, f)``; returns new alerts.
        ``event_time_ms`` is read by the seasonal monitor (streamproc.drift.seasonal) only."""
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
        self,
        scores: npt.NDArray[np.floating],
        offsets: npt.NDArray[np.integer] | None = None,
        event_time_ms: npt.NDArray[np.integer] | None = None,
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
