"""``ReferenceProfile``: what "normal" looks like for one model version.

Built from training data (a matrix plus column names) or from the first N live events, and
stored next to the model as ``reference_profile.json``. Per column it keeps robust
location and scale, quantiles on a normal-score grid (for the normal-score transform, PSI
bins and KS), the lag-1 autocorrelation of the normal scores, the missing rate and, for
columns with few distinct values, the category frequencies.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(10.0, 2.0, size=(5_000, 2)).astype(np.float32)
>>> prof = ReferenceProfile.from_matrix(x, ["a", "b"], model_version="1.0.0")
>>> col = prof.column("a")
>>> round(col.median, 1), round(col.scale, 1), col.missing_rate
(10.0, 2.0, 0.0)
>>> z = prof.normal_scores(np.array([[10.0, 12.0]], dtype=np.float32))
>>> [round(float(v), 1) for v in z[0]]
[0.0, 1.0]
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamproc.drift import _tail
from streamproc.drift._kernels import normal_scores_kernel
from streamproc.errors import ConfigError
from streamproc.stats import lag1_autocorrelation, norm_cdf, norm_isf

FORMAT_VERSION = 1
FILENAME = "reference_profile.json"
GRID_STEP = 0.05  # spacing of the normal-score grid
MAX_GRID = 4.5  # widest grid: Phi(-4.5) ~ 3.4e-6
TAIL_SPAN = 1.0  # values beyond the outer quantiles map into at most this much extra score
MAX_CATEGORIES = 32  # columns with at most this many distinct values keep frequencies
MAX_PHI = 0.95


def grid_for(n: int) -> npt.NDArray[np.float64]:
    """The normal-score grid for a reference of ``n`` values (outer knots hold >= 5 values)."""
    umax = min(MAX_GRID, norm_isf(5.0 / max(n, 20)))
    half = max(2, round(umax / GRID_STEP))
    return np.linspace(-half * GRID_STEP, half * GRID_STEP, 2 * half + 1)


@dataclass
class ColumnProfile:
    """Reference statistics of one column (a feature or the model score)."""

    name: str
    n: int  # finite values seen
    missing_rate: float  # NaN / missing share in the reference
    mean: float
    std: float
    median: float
    scale: float  # robust scale: 1.4826 * MAD, falling back to std
    min: float
    max: float
    knots: list[float]  # quantiles at Phi(grid)
    z_mean: float = 0.0  # mean / std of the normal scores of the reference itself
    z_std: float = 1.0
    phi: float = 0.0  # lag-1 autocorrelation of the standardised normal scores
    categories: dict[str, float] | None = None  # value -> frequency, few distinct values

    @property
    def discrete(self) -> bool:
        return self.categories is not None


@dataclass
class ReferenceProfile:
    """Per-column reference statistics, saved as JSON next to the model."""

    columns: list[ColumnProfile]
    grid: list[float]
    n_rows: int
    model_version: str | None = None
    source: str = "training"  # "training" or "stream" (first N events)
    scores: ColumnProfile | None = None  # model score (prediction drift)
    error_rate: float | None = None  # reference error rate (accuracy drift)
    reject_rates: dict[str, float] = field(default_factory=dict)  # data-quality baseline
    version: int = FORMAT_VERSION
    # Quantiles of the per-row tail score (:meth:`tail_scores`) on the reference rows, keyed
    # by level ("0.99", ...): the outlier monitor's thresholds. None in older profile files.
    tail_quantiles: dict[str, float] | None = None
    # A reference conditioned on the time of day / week (streamproc.drift.seasonal), for
    # pipelines with drift.seasonality set; None in older files and where none was fitted.
    seasonal: dict[str, Any] | None = None

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_matrix(
        cls,
        x: npt.ArrayLike,
        columns: Sequence[str],
        *,
        model_version: str | None = None,
        scores: npt.ArrayLike | None = None,
        error_rate: float | None = None,
        source: str = "training",
    ) -> ReferenceProfile:
        """Fit a profile to rows of ``x`` (shape ``(n, len(columns))``), in stream order."""
        a = np.asarray(x, dtype=np.float64)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[1] != len(columns):
            raise ConfigError(f"reference matrix has shape {a.shape}, expected (n, {len(columns)})")
        if a.shape[0] < 20:
            raise ConfigError(f"reference needs at least 20 rows, got {a.shape[0]}")
        grid = grid_for(a.shape[0])
        cols = [_fit_column(name, a[:, j], grid) for j, name in enumerate(columns)]
        score_prof = None
        if scores is not None:
            s = np.asarray(scores, dtype=np.float64).reshape(-1)
            score_prof = _fit_column("score", s, grid_for(s.size))
        prof = cls(
            columns=cols,
            grid=[float(v) for v in grid],
            n_rows=int(a.shape[0]),
            model_version=model_version,
            source=source,
            scores=score_prof,
            error_rate=error_rate,
        )
        t = prof.tail_scores(a)
        prof.tail_quantiles = {
            str(q): float(v) for q, v in zip(TAIL_LEVELS, np.quantile(t, TAIL_LEVELS), strict=True)
        }
        return prof

    # -- access ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnProfile:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def normal_scores(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Standardised normal scores of rows of ``x`` (NaN stays NaN); no prewhitening."""
        a = np.ascontiguousarray(np.asarray(x, dtype=np.float64).reshape(-1, len(self.columns)))
        return TransformTables.from_columns(self.columns, np.asarray(self.grid)).scores(a)

    def tail_scores(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Per-row outlier scores (:class:`TailScorer`): higher is further out."""
        return TailScorer(self.columns, np.asarray(self.grid)).scores(x)

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ReferenceProfile:
        try:
            if raw.get("version") != FORMAT_VERSION:
                raise ConfigError(f"unsupported reference profile version {raw.get('version')!r}")
            cols = [ColumnProfile(**c) for c in raw["columns"]]
            scores = ColumnProfile(**raw["scores"]) if raw.get("scores") else None
            rest = {k: v for k, v in raw.items() if k not in ("columns", "scores")}
            return cls(columns=cols, scores=scores, **rest)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"invalid reference profile: {exc}") from exc

    def save(self, path: str | Path) -> Path:
        """Write JSON to ``path`` (a directory gets ``reference_profile.json`` inside it)."""
        p = Path(path)
        if p.is_dir():
            p = p / FILENAME
        p.write_text(json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":")))
        return p

    @classmethod
    def load(cls, path: str | Path) -> ReferenceProfile:
        p = Path(path)
        if p.is_dir():
            p = p / FILENAME
        try:
            raw = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read reference profile {p}: {exc}") from exc
        return cls.from_dict(raw)


# Uniform cells per column indexing its knots (see normal_scores_kernel). Heavy-tailed
# columns crowd their knots into the first cells (at 256 cells, one cell of the demo model's
# distance column held most of its knots); 4096 cells keep each search short
# (benchmarks/README.md).
INDEX_CELLS = 4096


@dataclass
class TransformTables:
    """Column profiles packed into arrays for the normal-score kernel."""

    knots: npt.NDArray[np.float64]  # (d, K)
    grid: npt.NDArray[np.float64]  # (K,)
    lo_scale: npt.NDArray[np.float64]  # (d,) x-units per score unit in the lower tail
    hi_scale: npt.NDArray[np.float64]
    bucket_start: npt.NDArray[np.int64]  # (d, CELLS + 1) first knot >= each cell's edge
    bucket_scale: npt.NDArray[np.float64]  # (d,) cells per x-unit
    z_mean: npt.NDArray[np.float64]
    z_std: npt.NDArray[np.float64]
    phi: npt.NDArray[np.float64]

    @classmethod
    def from_columns(
        cls, cols: Sequence[ColumnProfile], grid: npt.NDArray[np.float64]
    ) -> TransformTables:
        knots = np.array([c.knots for c in cols], dtype=np.float64).reshape(len(cols), grid.size)
        span = max(1, round(0.5 / GRID_STEP))  # tail slope over the outer half score unit
        du = grid[span] - grid[0]
        lo = (knots[:, span] - knots[:, 0]) / du
        hi = (knots[:, -1] - knots[:, -1 - span]) / du
        width = knots[:, -1] - knots[:, 0]
        scale = np.where(width > 0, INDEX_CELLS / np.where(width > 0, width, 1.0), 0.0)
        edges = (
            knots[:, :1]
            + np.arange(INDEX_CELLS + 1)[None, :]
            * np.where(width > 0, width / INDEX_CELLS, 0.0)[:, None]
        )
        start = np.array(
            [np.searchsorted(k, e, side="left") for k, e in zip(knots, edges, strict=True)],
            dtype=np.int64,
        ).reshape(len(cols), INDEX_CELLS + 1)
        return cls(
            knots=np.ascontiguousarray(knots),
            grid=np.ascontiguousarray(grid, dtype=np.float64),
            lo_scale=lo,
            hi_scale=hi,
            bucket_start=np.ascontiguousarray(start),
            bucket_scale=scale,
            z_mean=np.array([c.z_mean for c in cols]),
            z_std=np.array([c.z_std for c in cols]),
            phi=np.array([c.phi for c in cols]),
        )

    def scores(
        self,
        x: npt.NDArray[np.floating],
        *,
        standardise: bool = True,
        prewhiten: tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]] | None = None,
    ) -> npt.NDArray[np.float64]:
        """Normal scores of the rows of ``x`` (NaN stays NaN), standardised by the
        reference's ``z_mean`` / ``z_std`` unless ``standardise`` is false. With
        ``prewhiten = (prev, has_prev)`` they are AR(1)-prewhitened by ``phi``, that state
        carried across calls (updated in place); without it, no prewhitening."""
        d = self.knots.shape[0]
        if prewhiten is None:
            phi, prev, has = np.zeros(d), np.zeros(d), np.zeros(d, dtype=np.bool_)
        else:
            phi, (prev, has) = self.phi, prewhiten
        mean, std = (self.z_mean, self.z_std) if standardise else (np.zeros(d), np.ones(d))
        out = np.empty(x.shape, dtype=np.float64)
        normal_scores_kernel(
            x, self.knots, self.grid, self.lo_scale, self.hi_scale, self.bucket_start,
            self.bucket_scale, mean, std, phi, prev, has, TAIL_SPAN, out,
        )  # fmt: skip
        return out


TAIL_LEVELS = (0.9, 0.99, 0.999, 0.9999)
TAIL_CELLS = 4096  # most table cells of a continuous column (measured: 8192 gains accuracy
# the score does not need, p99 error 0.012 -> 0.005 nats, and costs cache: benchmarks/RESULTS.md)


class TailScorer:
    """ECOD-style outlier scores (Li et al., 2022) from the profile alone.

    Per column, the left and right tail probabilities of a value under the reference's
    empirical CDF: for continuous columns read off the quantile grid (``Phi`` of the normal
    score), extended past the outer knots along the tail slope without the transform's cap,
    so that a value far out keeps scoring higher; for discrete columns the exact
    ``P(X <= v)`` and ``P(X >= v)`` from the category frequencies (ties count on both
    sides, as in an ECDF). The row's score is ECOD's: the largest of the summed ``-log``
    left tails, the summed right tails, and the sum of each column's tail on the side its
    skew points to. Missing values score 0.

    Scoring a batch is one compiled pass per column
    (:func:`~streamproc.drift._tail.tail_score_kernel`) over tables of the log tail
    probabilities built here: for a continuous column at up to ``TAIL_CELLS`` points evenly
    spaced in the float32 bits of ``1 + |x - median| * 16 / scale`` (log-like in the tails,
    fine in the body; an integer subtraction per value, see :mod:`streamproc.drift._tail`)
    between its outer knots, interpolated linearly; for a column of few integer values at
    each integer of its range (exact).
    """

    def __init__(self, cols: Sequence[ColumnProfile], grid: npt.NDArray[np.float64]) -> None:
        self.tables = t = TransformTables.from_columns(cols, grid)
        d = len(cols)
        self.right_skew = np.array([c.mean > c.median for c in cols], dtype=np.bool_)
        self.floor = np.log(np.array([1.0 / (c.n + 1.0) for c in cols]))
        self.lo_scale = np.where(t.lo_scale > 0, t.lo_scale, 1.0)
        self.hi_scale = np.where(t.hi_scale > 0, t.hi_scale, 1.0)
        self.cats: list[tuple[int, npt.NDArray[np.float64], npt.NDArray[np.float64]]] = []
        self.kind = np.zeros(d, dtype=np.int64)
        self.center = np.array([c.median for c in cols])
        self.inv = np.array([16.0 / c.scale if c.scale > 0 else 1.0 for c in cols])
        self.w_lo = np.zeros(d, dtype=np.int64)
        self.shift = np.zeros(d, dtype=np.int64)
        self.int_lo = np.zeros(d)
        self.rows = np.zeros(d, dtype=np.int64)
        tables: list[npt.NDArray[np.float64]] = []
        self._atoms: list[list[tuple[int, float, float, float]]] = [[] for _ in cols]
        for j, c in enumerate(cols):
            if c.categories is not None:
                vals = np.array([float(k) for k in c.categories], dtype=np.float64)
                order = np.argsort(vals)
                freq = np.array(list(c.categories.values()), dtype=np.float64)[order]
                self.cats.append((j, vals[order], np.concatenate([[0.0], np.cumsum(freq)])))
                span = vals.max() - vals.min()
                if np.all(vals == np.round(vals)) and span <= TAIL_CELLS:
                    self.kind[j] = _tail.INTEGER
                    self.int_lo[j] = vals.min()
                    tables.append(self._integer_table(j, d, vals.min(), int(span)))
                    continue
            tables.append(self._continuous_table(j, d))
        self.rows = np.array([len(tb) for tb in tables], dtype=np.int64)
        width = int(self.rows.max())
        # Fixed point, int16: the log tails run from 0 down to the floor, log(1 / (n + 1))
        # (about -11 nats at 50,000 reference rows: a unit of 1/2048 nat then).
        self.unit = np.array([max(-float(f) / 32_000.0, 1.0 / 2048.0) for f in self.floor])
        self.table = np.zeros((d, width, 2), dtype=np.int16)
        self.atom_of = np.zeros((d, width), dtype=np.int16)  # 0: the cell holds no atom
        self.atoms = np.zeros((d, max([len(a) for a in self._atoms] + [0]) + 1, 3))
        for j, tb in enumerate(tables):
            self.table[j, : len(tb)] = np.clip(np.rint(tb[:, [0, 2]] / self.unit[j]), -32_767, 0)
            for a, (cell, value, left, right) in enumerate(self._atoms[j], start=1):
                self.atom_of[j, cell] = a
                self.atoms[j, a] = value, left, right
        self.g_lo = np.full(d, float(grid[0]))
        self.g_hi = np.full(d, float(grid[-1]))

    def _column_tails(
        self, j: int, d: int, points: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Column ``j``'s exact log tails at ``points`` (the other columns missing)."""
        rows = np.full((len(points), d), np.nan)
        rows[:, j] = points
        left, right = self.exact_log_tails(rows)
        return left[:, j], right[:, j]

    def _integer_table(self, j: int, d: int, lo: float, span: int) -> npt.NDArray[np.float64]:
        """Rows 1..span+1: the values lo..lo+span; row 0: below them, the last row: above."""
        left, right = self._column_tails(j, d, lo + np.arange(span + 1.0))
        tb = np.zeros((span + 3, 4))
        tb[1:-1, 0], tb[1:-1, 2] = left, right
        tb[0, 0] = tb[-1, 2] = self.floor[j]  # P(X <= v) below the values, P(X >= v) above
        return tb

    def _continuous_table(self, j: int, d: int) -> npt.NDArray[np.float64]:
        """Evenly spaced in the kernel's ``w`` between the outer knots, cells aligned to
        their width; each row the log tails and their steps to the next row."""
        kl, kh = self.tables.knots[j, 0], self.tables.knots[j, -1]
        w = _tail.warp_bits(np.array([kl - self.center[j], kh - self.center[j]]) * self.inv[j])
        span = max(int(w[1] - w[0]), 1)
        sh = max(0, math.ceil(math.log2(span / TAIL_CELLS)))
        w0 = (int(w[0]) >> sh) << sh
        ws = w0 + (np.arange(((int(w[1]) - w0) >> sh) + 2, dtype=np.int64) << sh)
        self.w_lo[j], self.shift[j] = w0, sh
        points = self.center[j] + _tail.unwarp_bits(ws) / self.inv[j]
        left, right = self._column_tails(j, d, points)
        tb = np.zeros((len(points), 4))
        tb[:, 0], tb[:, 2] = left, right
        tb[:-1, 1], tb[:-1, 3] = np.diff(left), np.diff(right)
        # Atoms (repeated knots: a share of the reference at one value), exact: the
        # heaviest of a cell is the one it keeps.
        knots = self.tables.knots[j]
        rep = knots[1:][np.diff(knots) <= 0]
        atoms, mass = np.unique(rep, return_counts=True)
        if len(atoms):
            at_left, at_right = self._column_tails(j, d, atoms)
            cell = (_tail.warp_bits((atoms - self.center[j]) * self.inv[j]) - w0) >> sh
            cell = np.clip(cell, 0, len(points) - 2)
            best: dict[int, int] = {}
            for i in np.argsort(-mass, kind="stable").tolist():
                best.setdefault(int(cell[i]), i)
            self._atoms[j] = [(k, float(atoms[i]), float(at_left[i]), float(at_right[i]))
                              for k, i in sorted(best.items())]  # fmt: skip
        return tb

    def exact_log_tails(
        self, x: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``log P(X <= v)`` and ``log P(X >= v)`` per value (NaN: 0), by the definition."""
        t = self.tables
        d = t.knots.shape[0]
        a = np.ascontiguousarray(np.asarray(x, dtype=np.float64).reshape(-1, d))
        z = t.scores(a, standardise=False)
        above, below = a > t.knots[:, -1], a < t.knots[:, 0]
        z = np.where(above, t.grid[-1] + (a - t.knots[:, -1]) / self.hi_scale, z)
        z = np.where(below, t.grid[0] - (t.knots[:, 0] - a) / self.lo_scale, z)
        left, right = norm_log_cdf(z), norm_log_cdf(-z)
        for j, vals, cum in self.cats:
            v = a[:, j]
            le = cum[np.searchsorted(vals, v, side="right")]  # P(X <= v)
            lt = cum[np.searchsorted(vals, v, side="left")]  # P(X < v)
            with np.errstate(divide="ignore"):
                left[:, j] = np.log(le)
                right[:, j] = np.log(1.0 - lt)
        left = np.maximum(left, self.floor)
        right = np.maximum(right, self.floor)
        miss = np.isnan(a)
        left[miss] = 0.0
        right[miss] = 0.0
        return left, right

    def exact_scores(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """:meth:`scores` without the tables (the reference the tables are checked against)."""
        left, right = self.exact_log_tails(x)
        sl, sr = -left.sum(axis=1), -right.sum(axis=1)
        sa = -np.where(self.right_skew, right, left).sum(axis=1)
        return np.asarray(np.maximum(np.maximum(sl, sr), sa), dtype=np.float64)

    def scores(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        d = self.kind.size
        a = np.asarray(x)
        if a.dtype not in (np.float32, np.float64):  # float32 batches go in as they are
            a = a.astype(np.float64)
        a = np.ascontiguousarray(a).reshape(-1, d)
        out = np.empty(a.shape[0])
        _tail.tail_score_kernel(
            a, self.kind, self.center, self.inv, self.w_lo, self.shift, self.int_lo, self.rows,
            self.tables.knots[:, 0], self.tables.knots[:, -1], self.table, self.unit, self.atom_of,
            self.atoms, self.g_lo,
            self.g_hi, self.lo_scale, self.hi_scale, self.floor, self.right_skew, out,
        )  # fmt: skip
        return out


# log Phi(z) on a fine grid, linear beyond it (asymptotically -z**2 / 2): an interpolation
# replaces a per-value erfc.
_LOG_Z = np.linspace(-12.0, 8.0, 20_001)
_LOG_V = np.log(np.maximum(norm_cdf(_LOG_Z), 1e-300))


def norm_log_cdf(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``log Phi(z)`` elementwise (NaN stays NaN), accurate to the grid for z >= -12 and
    following the Gaussian tail below it."""
    out = np.interp(z, _LOG_Z, _LOG_V)
    low = z < _LOG_Z[0]
    if low.any():
        zl = z[low]
        out[low] = -0.5 * zl * zl - np.log(-zl) - 0.5 * math.log(2.0 * math.pi)
    return np.where(np.isnan(z), np.nan, out)


def _fit_column(
    name: str, col: npt.NDArray[np.float64], grid: npt.NDArray[np.float64]
) -> ColumnProfile:
    finite = np.isfinite(col)
    v = col[finite]
    n = int(v.size)
    missing = 1.0 - n / max(col.size, 1)
    if n < 2:
        raise ConfigError(f"reference column {name!r} has fewer than 2 finite values")
    median = float(np.median(v))
    mad = float(np.median(np.abs(v - median))) * 1.4826
    std = float(v.std())
    knots = np.quantile(v, norm_cdf(grid))
    uniq, counts = np.unique(v, return_counts=True)
    cats = None
    if uniq.size <= MAX_CATEGORIES:
        cats = {_fmt(u): float(c) / n for u, c in zip(uniq, counts, strict=True)}
    prof = ColumnProfile(
        name=name,
        n=n,
        missing_rate=float(missing),
        mean=float(v.mean()),
        std=std,
        median=median,
        scale=mad if mad > 0 else std,
        min=float(v.min()),
        max=float(v.max()),
        knots=[float(k) for k in knots],
        categories=cats,
    )
    # Standardise the normal scores on the reference itself (exactly N(0,1) for continuous
    # data; corrects the mid-rank scores of discrete columns), then measure lag-1 autocorr.
    t = TransformTables.from_columns([prof], grid)
    z = t.scores(np.ascontiguousarray(col[:, None]), standardise=False)
    zf = z[np.isfinite(z[:, 0]), 0]
    sd = float(zf.std())
    prof.z_mean = float(zf.mean())
    prof.z_std = sd if sd > 1e-9 else 1.0
    phi = lag1_autocorrelation(z[:, 0])  # NaNs break pairs, which is fine for a profile
    prof.phi = float(np.clip(phi, -MAX_PHI, MAX_PHI)) if math.isfinite(phi) else 0.0
    return prof


def _fmt(u: float) -> str:
    return str(int(u)) if float(u).is_integer() else repr(float(u))
