"""Batch-vectorised CUSUM detectors calibrated from a reference profile.

:class:`CusumDetector` monitors ``d`` features. Each value goes through the profile's
normal-score transform (robust to heavy tails and skew: the reference maps onto N(0, 1)),
is prewhitened with the reference lag-1 autocorrelation ``phi`` (so autocorrelated streams
give i.i.d. increments) and feeds three one-sided CUSUMs per feature: mean up, mean down
(``e -/+ k`` with ``k`` half the target shift in prewhitened units) and variance up
(``e**2 - c``, the likelihood-ratio reference for the target variance ratio). Thresholds come
from :mod:`streamproc.drift.calibration` so that the false alarms of all arms of all
features add up to the budget.

:class:`BernoulliCusumDetector` is the error-rate version (a 0/1 stream, p0 -> p1).

>>> import numpy as np
>>> from streamproc.drift.profile import ReferenceProfile
>>> rng = np.random.default_rng(1)
>>> prof = ReferenceProfile.from_matrix(rng.normal(size=(20_000, 2)), ["a", "b"])
>>> det = CusumDetector.from_profile(prof, arl=1e7)
>>> det.update(rng.normal(size=(1_000, 2)))
>>> bool(det.drift_detected.any())
False
>>> det.update(rng.normal(size=(1_000, 2)) + [0.0, 1.0])
>>> det.drift_detected.tolist(), det.transitions[0].statistic
([False, True], 'cusum_mean_up')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from streamproc.drift import _kernels as K
from streamproc.drift.alerts import AlertState
from streamproc.drift.base import (
    BatchOutputs,
    ExposesOutputs,
    Transition,
    as_batch,
    offsets_for,
)
from streamproc.drift.calibration import (
    bernoulli_lattice,
    bernoulli_threshold,
    mean_threshold,
    variance_offset,
    variance_threshold,
)
from streamproc.drift.profile import ColumnProfile, ReferenceProfile, TransformTables

ARM_NAMES = ("cusum_mean_up", "cusum_mean_down", "cusum_variance_up", "bernoulli_cusum")


class _CusumCore(ExposesOutputs):
    """Shared state and kernel call of the CUSUM detectors."""

    def __init__(
        self,
        kind: npt.NDArray[np.int64],
        param: npt.NDArray[np.float64],
        param2: npt.NDArray[np.float64],
        h: npt.NDArray[np.float64],
        recovery: int,
        univariate: bool,
    ) -> None:
        n_arms, d = h.shape
        self.n_features = d
        self.univariate = univariate
        self.recovery = int(recovery)
        self._kind, self._param, self._param2, self._h = kind, param, param2, h
        self._s = np.zeros((n_arms, d))
        self._start_t = np.zeros((n_arms, d), dtype=np.int64)
        self._start_pos = np.zeros((n_arms, d), dtype=np.int64)
        self._firing = np.zeros(d, dtype=np.bool_)
        self._last_t = np.zeros(d, dtype=np.int64)
        self._fire_t = np.zeros(d, dtype=np.int64)
        self._fire_pos = np.zeros(d, dtype=np.int64)
        self._last_pos = np.zeros(d, dtype=np.int64)
        self._fire_arm = np.zeros(d, dtype=np.int64)
        self._t = 0
        self._out = BatchOutputs(d, univariate)
        # The usual three arms have a kernel of their own (K.cusum_mean_var_kernel).
        self._mean_var = kind.tolist() == [K.MEAN_UP, K.MEAN_DOWN, K.VARIANCE_UP]

    @property
    def events_seen(self) -> int:
        return self._t

    def _run(self, e: npt.NDArray[np.float64], offsets: npt.ArrayLike | None) -> None:
        n, d = e.shape
        pos = offsets_for(offsets, self._t, n)
        det_first = np.full(d, -1, dtype=np.int64)
        det_count = np.zeros(d, dtype=np.int64)
        cap = d * (2 * (n // (self.recovery + 1) + 1) + 2)
        out_i = np.empty((cap, 7), dtype=np.int64)
        out_f = np.empty((cap, 2))
        kernel = K.cusum_mean_var_kernel if self._mean_var else K.cusum_kernel
        nt = kernel(
            e,
            self._kind,
            self._param,
            self._param2,
            self._h,
            self._s,
            self._start_t,
            self._start_pos,
            self._firing,
            self._last_t,
            self._fire_t,
            self._fire_pos,
            self._last_pos,
            self._fire_arm,
            self._t,
            pos,
            self.recovery,
            det_first,
            det_count,
            out_i,
            out_f,
        )
        self._t += n
        o = self._out
        o.detected = det_count > 0
        o.rows = det_first
        o.counts = det_count
        ratio = self._s / self._h
        best = np.argmax(ratio, axis=0)
        cols = np.arange(d)
        o.stat = self._s[best, cols]
        o.thr = self._h[best, cols]
        rows = range(nt)
        if self._mean_var and nt > 1:  # column by column: put them in row order
            rows = np.lexsort((out_i[:nt, K.T_FEATURE], out_i[:nt, K.T_ROW])).tolist()
        o.transitions = [self._transition(out_i[r], out_f[r]) for r in rows]

    def _transition(self, ti: npt.NDArray[np.int64], tf: npt.NDArray[np.float64]) -> Transition:
        j, arm = int(ti[K.T_FEATURE]), int(ti[K.T_ARM])
        state = AlertState.FIRING if ti[K.T_STATE] == K.FIRING else AlertState.RESOLVED
        window = int(ti[K.T_WINDOW])
        est = (
            self._estimate(arm, j, float(tf[0]), window) if state == AlertState.FIRING else math.nan
        )
        return Transition(
            j,
            int(ti[K.T_ROW]),
            state,
            self._arm_name(arm),
            float(tf[0]),
            float(tf[1]),
            window,
            int(ti[K.T_FIRST]),
            int(ti[K.T_LAST]),
            est,
        )

    def _arm_name(self, arm: int) -> str:
        return ARM_NAMES[int(self._kind[arm])]

    def _estimate(self, arm: int, j: int, value: float, window: int) -> float:
        return math.nan


class CusumDetector(_CusumCore):
    """Mean-up, mean-down and variance-up CUSUMs per feature on normal scores."""

    name = "cusum"

    def __init__(
        self,
        columns: Sequence[ColumnProfile],
        grid: Sequence[float],
        *,
        arl: float,
        target_shift: float = 0.5,
        variance_ratio: float = 2.0,
        weights: tuple[float, float, float] = (0.4, 0.4, 0.2),
        recovery: int = 2000,
        univariate: bool = False,
    ) -> None:
        d = len(columns)
        self.columns = [c.name for c in columns]
        self._tables = TransformTables.from_columns(columns, np.asarray(grid, dtype=np.float64))
        phi = self._tables.phi
        # A mean shift of delta (marginal sigma) is delta * sqrt((1-phi)/(1+phi)) after
        # prewhitening; k is half of it.
        self._shift_scale = np.sqrt((1.0 - phi) / (1.0 + phi))
        k = 0.5 * target_shift * self._shift_scale
        arms = [
            (a, w)
            for a, w in zip((K.MEAN_UP, K.MEAN_DOWN, K.VARIANCE_UP), weights, strict=True)
            if w > 0
        ]
        wsum = sum(w for _, w in arms)
        kind = np.array([a for a, _ in arms], dtype=np.int64)
        param = np.zeros((len(arms), d))
        h = np.zeros((len(arms), d))
        c = variance_offset(variance_ratio)
        for r, (a, w) in enumerate(arms):
            arm_arl = arl * wsum / w
            if a == K.VARIANCE_UP:
                param[r] = c
                h[r] = variance_threshold(float(variance_ratio), float(arm_arl))
            else:
                param[r] = k
                h[r] = [mean_threshold(round(float(kj), 6), float(arm_arl)) for kj in k]
        self._c = c
        super().__init__(kind, param, np.zeros_like(param), h, recovery, univariate)
        self._prev = np.zeros(d)
        self._has_prev = np.zeros(d, dtype=np.bool_)

    @classmethod
    def from_profile(
        cls,
        profile: ReferenceProfile,
        *,
        arl: float,
        columns: Sequence[str] | None = None,
        **kwargs: object,
    ) -> CusumDetector:
        cols = profile.columns if columns is None else [profile.column(c) for c in columns]
        return cls(cols, profile.grid, arl=arl, **kwargs)  # type: ignore[arg-type]

    def scores(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Prewhitened normal scores of a batch (advances the prewhitening state)."""
        a = as_batch(x, self.n_features, self.univariate)
        return self._tables.scores(a, prewhiten=(self._prev, self._has_prev))

    def update(self, x: npt.ArrayLike, offsets: npt.ArrayLike | None = None) -> None:
        self._run(self.scores(x), offsets)

    def _estimate(self, arm: int, j: int, value: float, window: int) -> float:
        kind = int(self._kind[arm])
        mean_inc = value / max(window, 1)
        if kind == K.VARIANCE_UP:
            return mean_inc + self._c  # estimated variance ratio
        shift = float((mean_inc + self._param[arm, j]) / self._shift_scale[j])
        return shift if kind == K.MEAN_UP else -shift  # estimated shift in sigma


def conservative_error_rate(errors: int, labels: int, z: float = 2.0) -> float:
    """Reference error rate from ``errors`` out of ``labels``, raised by ``z`` standard errors.

    The Bernoulli CUSUM is sensitive to its p0: designed for 0.0987 while the true rate is
    0.100, its false alarms triple. Erring high costs a little detection delay instead.

    >>> round(conservative_error_rate(1_000, 10_000), 4)
    0.1061
    """
    p = (errors + 1.0) / (labels + 2.0)
    return min(p + z * math.sqrt(p * (1.0 - p) / max(labels, 1)), 0.5)


class BernoulliCusumDetector(_CusumCore):
    """Error-rate CUSUM on a 0/1 stream (1 = error): detects p0 -> p1 = p0 * ratio.

    The log-likelihood-ratio steps are rounded to an integer lattice, which makes the
    threshold calibration exact (see :func:`calibration.bernoulli_threshold`).

    >>> import numpy as np
    >>> rng = np.random.default_rng(2)
    >>> det = BernoulliCusumDetector(p0=0.1, arl=1e7)
    >>> det.update((rng.random(20_000) < 0.1).astype(np.float64))
    >>> det.drift_detected
    False
    >>> det.update((rng.random(20_000) < 0.3).astype(np.float64))
    >>> det.drift_detected
    True
    """

    name = "bernoulli_cusum"

    def __init__(
        self, p0: float, *, arl: float, ratio: float = 1.5, recovery: int = 10_000
    ) -> None:
        if not 0.0 < p0 < 1.0:
            raise ValueError(f"reference error rate must be in (0, 1), got {p0}")
        p1 = min(p0 * ratio, 0.5 * (1.0 + p0))
        up, down, unit = bernoulli_lattice(p0, p1)
        hu = bernoulli_threshold(round(p0, 6), round(p1, 6), float(arl))
        self.p0, self.p1, self.unit = p0, p1, unit
        super().__init__(
            np.array([K.BERNOULLI], dtype=np.int64),
            np.full((1, 1), float(up)),
            np.full((1, 1), float(down)),
            np.full((1, 1), hu - 0.5),
            recovery,
            univariate=True,
        )

    def update(self, x: npt.ArrayLike, offsets: npt.ArrayLike | None = None) -> None:
        self._run(as_batch(x, 1, True), offsets)

    def _transition(self, ti: npt.NDArray[np.int64], tf: npt.NDArray[np.float64]) -> Transition:
        tr = super()._transition(ti, tf)
        # Report the statistic in nats (log-likelihood ratio) rather than lattice units.
        return replace(tr, value=tr.value * self.unit, threshold=(tr.threshold + 0.5) * self.unit)

    def _estimate(self, arm: int, j: int, value: float, window: int) -> float:
        # value = up * errors - down * (window - errors): solve for the error rate.
        up, down = float(self._param[0, 0]), float(self._param2[0, 0])
        return (value + down * window) / ((up + down) * max(window, 1))
