"""How fast a model version runs: latency and throughput measured on a sample, kept as
``perf.json`` beside the version (:class:`PerfReport`).

Pure logic: it takes any object with ``infer(x: float32 (n, F)) -> (n, K)``
(:class:`Inferer`); it never loads an inference runtime itself.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from streamproc.errors import ModelError
from streamproc.models.spec import FeatureSpec, ModelSpec

PERF_FILE = "perf.json"  # beside a version's model.yaml


class Inferer(Protocol):
    """What measuring needs from a backend: every
    :class:`~streamproc.backends.base.Backend` is one. Subclass it explicitly to get the
    defaults (a name from the class, no device, nothing to close)."""

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def device(self) -> str:
        return ""

    def infer(self, x: npt.NDArray[np.float32]) -> npt.NDArray[Any]: ...

    def close(self) -> None:
        return None


class BatchPerf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int
    iterations: int
    p50_ms: float  # latency of one infer() call on a batch of this size
    p99_ms: float
    throughput_eps: float  # events per second at this batch size


class PerfReport(BaseModel):
    """``perf.json``: what a version measured on a sample when it was added."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    device: str = ""
    machine: str
    measured_at: str  # ISO 8601, UTC
    sample_rows: int
    n_features: int
    n_outputs: int
    batches: tuple[BatchPerf, ...]

    def at(self, batch_size: int) -> BatchPerf | None:
        return next((b for b in self.batches if b.batch_size == batch_size), None)

    @property
    def best_throughput_eps(self) -> float:
        return max((b.throughput_eps for b in self.batches), default=0.0)

    def headline(self) -> str:
        """One line: single-event latency and best throughput."""
        if not self.batches:
            return f"{self.backend}: no measurements"
        first = self.batches[0]
        where = f"{self.backend} ({self.device})" if self.device else self.backend
        return (
            f"{where}: p50 {first.p50_ms:.3f} ms / p99 {first.p99_ms:.3f} ms at batch "
            f"{first.batch_size}, up to {self.best_throughput_eps:,.0f} events/s"
        )


def synthetic_sample(spec: ModelSpec, rows: int = 512, seed: int = 0) -> npt.NDArray[np.float32]:
    """A seeded sample of plausible input rows, honouring each feature's declared range.

    >>> spec = ModelSpec.model_validate({"name": "m", "version": "1.0.0", "inputs": [
    ...     {"field": "p", "min": 0, "max": 1},
    ...     {"field": "c", "encoding": "onehot", "symbols": ["A", "B", "C"]}]})
    >>> x = synthetic_sample(spec, rows=4, seed=1)
    >>> x.shape, x.dtype, bool(((x[:, 0] >= 0) & (x[:, 0] <= 1)).all()), x[:, 1:].sum(axis=1)
    ((4, 4), dtype('float32'), True, array([1., 1., 1., 1.], dtype=float32))
    """
    rng = np.random.default_rng(seed)
    cols: list[npt.NDArray[np.float64]] = []
    for feat in spec.inputs:
        cols.extend(_feature_columns(feat, rows, rng))
    if not cols:
        return np.zeros((rows, 0), dtype=np.float32)
    return np.column_stack(cols).astype(np.float32)


def _feature_columns(
    feat: FeatureSpec, rows: int, rng: np.random.Generator
) -> list[npt.NDArray[np.float64]]:
    if feat.encoding == "onehot":
        picks = rng.integers(0, len(feat.symbols), rows)
        return [(picks == i).astype(np.float64) for i in range(len(feat.symbols))]
    if feat.encoding == "index":
        return [rng.integers(0, len(feat.symbols), rows).astype(np.float64)]
    out = []
    for _ in range(feat.length or 1):
        lo, hi = feat.min, feat.max
        if lo is not None and hi is not None:
            col = rng.uniform(lo, hi, rows)
        elif lo is not None:
            col = lo + rng.exponential(1.0, rows)
        elif hi is not None:
            col = hi - rng.exponential(1.0, rows)
        else:
            col = rng.standard_normal(rows)
        out.append(col)
    return out


def measure_performance(
    backend: Inferer,
    sample: npt.NDArray[np.float32],
    batch_sizes: Sequence[int],
    *,
    backend_name: str = "",
    device: str = "",
    budget_s: float = 0.25,
    min_iterations: int = 5,
    max_iterations: int = 5000,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> PerfReport:
    """Time ``backend.infer`` at each batch size (rows taken cyclically from ``sample``).

    Each size runs ``warmup`` untimed calls, then timed calls until ``budget_s`` has passed
    (at least ``min_iterations``, at most ``max_iterations``). The output must be a finite
    ``(n, K)`` array for ``n`` input rows, else :class:`ModelError`.

    >>> class Doubler(Inferer):
    ...     def infer(self, x):
    ...         return np.column_stack([x.sum(axis=1), 2 * x.sum(axis=1)])
    >>> ticks = iter(range(10_000))
    >>> rep = measure_performance(Doubler(), np.ones((3, 2), np.float32), [1, 4],
    ...                           clock=lambda: next(ticks) / 1000, budget_s=0.0)
    >>> [(b.batch_size, b.iterations, b.p50_ms, b.throughput_eps) for b in rep.batches]
    [(1, 5, 1.0, 1000.0), (4, 5, 1.0, 4000.0)]
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if sample.ndim != 2 or len(sample) == 0:
        raise ModelError(f"a performance sample must be a non-empty 2-D array, got {sample.shape}")
    n_outputs = 0
    batches = []
    for size in sorted(set(batch_sizes)):
        if size < 1:
            raise ModelError(f"batch size must be positive, got {size}")
        x = np.ascontiguousarray(np.resize(sample, (size, sample.shape[1])))
        for _ in range(warmup):
            backend.infer(x)
        out = _checked(backend.infer(x), size)
        n_outputs = out.shape[1]
        times: list[float] = []
        start = clock()
        while len(times) < max_iterations and (
            len(times) < min_iterations or clock() - start < budget_s
        ):
            t0 = clock()
            backend.infer(x)
            times.append(clock() - t0)
        arr = np.asarray(times) * 1000.0
        total_s = float(arr.sum()) / 1000.0
        batches.append(
            BatchPerf(
                batch_size=size,
                iterations=len(times),
                p50_ms=round(float(np.percentile(arr, 50)), 6),
                p99_ms=round(float(np.percentile(arr, 99)), 6),
                throughput_eps=round(size * len(times) / total_s, 3) if total_s > 0 else math.inf,
            )
        )
    return PerfReport(
        backend=backend_name or backend.name,
        device=device or backend.device,
        machine=f"{platform.machine()} {os.cpu_count()}-core {platform.system()}",
        measured_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        sample_rows=len(sample),
        n_features=sample.shape[1],
        n_outputs=n_outputs,
        batches=tuple(batches),
    )


def _checked(out: Any, rows: int) -> npt.NDArray[Any]:
    arr = np.asarray(out)
    if arr.ndim != 2 or arr.shape[0] != rows:
        raise ModelError(f"the model returned shape {arr.shape} for {rows} rows; expected (n, K)")
    if not np.isfinite(arr).all():
        raise ModelError("the model returned NaN or infinite outputs on the sample")
    return arr


# -------------------------------------------------------------------------------- diffs
