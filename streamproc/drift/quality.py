"""``QualityMonitor``: reject and NaN rates against the reference, and new writer schemas."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping

import numpy as np
import numpy.typing as npt

from streamproc.drift.alerts import AlertEvent, AlertState, AlertType, Severity
from streamproc.drift.config import DriftConfig
from streamproc.drift.profile import ReferenceProfile


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
        known = self.known_schema_ids
        if known is not None and int(ids[0]) in known and (ids == ids[0]).all():
            return []  # the common batch: one writer schema, already known
        uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
        keep = uniq >= 0  # -1: no schema id (a dead letter)
        uniq, first, counts = uniq[keep], first[keep], counts[keep]
        if self.known_schema_ids is None:  # the first ids seen are the baseline
            if len(uniq):
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
