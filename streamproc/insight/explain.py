"""Sampled per-feature explanations of predictions, computed off the hot path.

Two methods:

* :class:`KernelShap`, model-agnostic (any backend: it only calls ``infer``): Kernel SHAP
  (Lundberg and Lee, 2017) against a background drawn from the version's reference profile
  (:func:`background_from_profile`). The coalitions and their Shapley-kernel weights are
  fixed per explainer (small coalition sizes enumerated, the rest sampled in complementary
  pairs, as the ``shap`` package does), so the constrained weighted least squares reduces to
  one precomputed ``(d, M)`` matrix: explaining a batch of events costs one model call on
  ``events * M * K`` rows (``K`` background rows) and a matrix product. Additivity is exact
  by construction: ``base_value + sum(attributions) == f(x)``.
* :class:`DeepShap` where the model is a chain network (an ONNX chain graph: dense layers
  and elementwise activations): DeepLIFT's rescale rule against each background row, as
  ``shap.DeepExplainer``; additive exactly, and a few hundred times cheaper than Kernel SHAP
  on the demo model (no model calls: matrix products on the layers' weights).
* :class:`IntegratedGradients` (Sundararajan et al., 2017) where the model is a torch
  module (the torch backend, or an ONNX chain graph rebuilt in torch): the path integral of
  the gradient from the background mean to ``x``; additive up to the integration error.

:class:`SamplePolicy` picks which predictions to explain (a share, every score above a
threshold, event ids asked for), and :class:`ExplanationWorker` computes them on its own
thread from a bounded queue: a full queue drops the request and counts it, it never blocks
the pipeline. Explanations are a side output, at most once: a restart loses what was
queued.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from streamproc.drift.profile import ReferenceProfile
from streamproc.insight._kernels import (
    ADD,
    IDENTITY,
    LINEAR,
    RELU,
    SIGMOID,
    SOFTMAX,
    TANH,
    coalition_rows,
    deep_shap_kernel,
)
from streamproc.types import JoinedIds

log = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]
Infer = Callable[[Matrix], Matrix]
CHUNK_ROWS = 16_384  # model rows per call when explaining (about 1 MB at 16 inputs)


def background_from_profile(profile: ReferenceProfile, k: int = 16, seed: int = 0) -> Matrix:
    """``k`` background rows whose columns follow the reference marginals.

    Each column takes its quantiles at ``(i + 0.5) / k``, shuffled per column (a seeded
    permutation: columns are independent, as in an interventional Shapley value). Columns of
    a one-hot group (``field=symbol``) are drawn together, so each row has exactly one
    symbol, in proportion to the symbols' reference frequencies.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> prof = ReferenceProfile.from_matrix(rng.normal(size=(1_000, 2)), ["a", "b"])
    >>> background_from_profile(prof, k=8).shape
    (8, 2)
    """
    rng = np.random.default_rng(seed)
    grid = np.asarray(profile.grid)
    levels = (np.arange(k) + 0.5) / k
    z = _norm_ppf(levels)
    out = np.empty((k, len(profile.columns)), dtype=np.float32)
    groups: dict[str, list[int]] = {}
    for j, c in enumerate(profile.columns):
        if "=" in c.name and c.discrete:
            groups.setdefault(c.name.split("=", 1)[0], []).append(j)
            continue
        out[:, j] = rng.permutation(np.interp(z, grid, np.asarray(c.knots)))
    for cols in groups.values():
        freq = np.array([(profile.columns[j].categories or {}).get("1", 0.0) for j in cols])
        total = freq.sum()
        p = freq / total if total > 0 else np.full(len(cols), 1.0 / len(cols))
        pick = rng.permutation(np.searchsorted(np.cumsum(p), levels, side="right").clip(
            0, len(cols) - 1))  # fmt: skip
        out[:, cols] = 0.0
        out[np.arange(k), np.asarray(cols)[pick]] = 1.0
    return out


def _norm_ppf(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    from streamproc.stats import norm_ppf

    return np.asarray(norm_ppf(p), dtype=np.float64)


class Explainer(Protocol):
    """Attributions of a batch of rows: ``(phi (n, d), base_value, f(x) (n,))``."""

    method: str

    def explain(
        self, x: Matrix
    ) -> tuple[npt.NDArray[np.float64], float, npt.NDArray[np.float64]]: ...


def coalitions(
    d: int, budget: int, seed: int = 0
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """Masks ``(M, d)`` and weights ``(M,)`` of Kernel SHAP's coalitions, ``M <= budget``.

    Sizes ``s`` and ``d - s`` are enumerated, smallest first, while the budget holds all
    their subsets; the rest of the budget samples the remaining sizes in complementary
    pairs, sharing the remaining kernel weight equally.

    >>> m, w = coalitions(4, 100)
    >>> m.shape, round(float(w.sum()), 6)
    ((14, 4), 1.0)
    """
    if d < 2:
        raise ValueError("Kernel SHAP needs at least 2 features")
    sizes = list(range(1, d))
    kernel = np.array([(d - 1) / (s * (d - s)) for s in sizes])
    kernel /= kernel.sum()  # total weight per coalition size
    masks: list[npt.NDArray[np.bool_]] = []
    weights: list[float] = []
    left = budget
    done = set()
    for s in range(1, d // 2 + 1):
        pair = [s] if s == d - s else [s, d - s]
        n = sum(math.comb(d, t) for t in pair)
        if n > left:
            break
        for t in pair:
            w = kernel[t - 1] / math.comb(d, t)
            for combo in _subsets(d, t):
                m = np.zeros(d, dtype=np.bool_)
                m[list(combo)] = True
                masks.append(m)
                weights.append(w)
            done.add(t)
        left -= n
    rest = [s for s in sizes if s not in done]
    if rest and left >= 2:
        rng = np.random.default_rng(seed)
        p = kernel[[s - 1 for s in rest]]
        mass = float(p.sum())
        p = p / mass
        n_pairs = left // 2
        for s in rng.choice(rest, size=n_pairs, p=p).tolist():
            m = np.zeros(d, dtype=np.bool_)
            m[rng.choice(d, size=s, replace=False)] = True
            masks += [m, ~m]
            weights += [mass / (2 * n_pairs)] * 2
    return np.array(masks), np.array(weights)


def _subsets(d: int, t: int) -> Iterable[tuple[int, ...]]:
    import itertools

    return itertools.combinations(range(d), t)


class KernelShap:
    """Kernel SHAP of output ``index`` of ``infer`` against ``background`` rows."""

    method = "kernel_shap"

    def __init__(
        self,
        infer: Infer,
        background: npt.ArrayLike,
        index: int,
        *,
        samples: int = 512,
        seed: int = 0,
    ) -> None:
        self.infer = infer
        self.background = np.ascontiguousarray(background, dtype=np.float32)
        self.index = index
        d = self.background.shape[1]
        self.masks, w = coalitions(d, max(samples, 2 * d + 2), seed)
        self.base_value = float(self._f(self.background).mean())
        # Constrained WLS: phi = P y + c * (delta - 1'P y), with y_i = v(S_i) - base and
        # delta = f(x) - base; P = (Z'WZ)^-1 Z'W and c = (Z'WZ)^-1 1 / (1'(Z'WZ)^-1 1).
        z = self.masks.astype(np.float64)
        a = z.T @ (z * w[:, None])
        ainv = np.linalg.inv(a)
        self._p = ainv @ (z.T * w[None, :])
        one = ainv.sum(axis=1)
        self._c = one / one.sum()

    def _f(self, rows: Matrix) -> npt.NDArray[np.float64]:
        return np.asarray(self.infer(rows)[:, self.index], dtype=np.float64)

    @property
    def rows_per_event(self) -> int:
        """Model rows one explanation costs."""
        return int(self.masks.shape[0] * self.background.shape[0] + 1)

    def explain(self, x: Matrix) -> tuple[npt.NDArray[np.float64], float, npt.NDArray[np.float64]]:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.background.shape[1])
        n, d = x.shape
        m, k = self.masks.shape[0], self.background.shape[0]
        # (e * M * K, d) per chunk of e events: x where the coalition holds the feature, the
        # background elsewhere. In chunks of about CHUNK_ROWS rows (one buffer, reused):
        # the rows of a whole batch (16 MB for 32 events) evicted the pipeline thread's
        # data from the shared caches and cost page faults on every batch.
        e = max(1, CHUNK_ROWS // (m * k))
        rows = np.empty((min(n, e) * m * k, d), dtype=np.float32)
        v = np.empty((n, m))
        for a in range(0, n, e):
            b = min(n, a + e)
            r = rows[: (b - a) * m * k]
            coalition_rows(x[a:b], self.masks, self.background, r)
            v[a:b] = self._f(r).reshape(b - a, m, k).mean(axis=2)
        fx = self._f(x)
        y = v - self.base_value
        py = y @ self._p.T  # (n, d)
        delta = fx - self.base_value
        phi = py + (delta - py.sum(axis=1))[:, None] * self._c[None, :]
        return phi, self.base_value, fx


class IntegratedGradients:
    """Integrated gradients of output ``index`` of a torch ``module`` from ``baseline``."""

    method = "integrated_gradients"

    def __init__(self, module: Any, baseline: npt.ArrayLike, index: int, *, steps: int = 64):
        import torch

        self._torch = torch
        self.module = module.eval()
        self.baseline = np.asarray(baseline, dtype=np.float32).reshape(1, -1)
        self.index = index
        self.steps = steps
        with torch.no_grad():
            out = module(torch.from_numpy(self.baseline))
        self.base_value = float(out[0, index])

    def explain(self, x: Matrix) -> tuple[npt.NDArray[np.float64], float, npt.NDArray[np.float64]]:
        torch = self._torch
        xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        b = torch.from_numpy(self.baseline)
        # Trapezoid rule on steps + 1 points from the baseline to x, all events at once.
        alphas = torch.linspace(0.0, 1.0, self.steps + 1).reshape(-1, 1, 1)
        path = (b + alphas * (xs - b)[None]).reshape(-1, xs.shape[1]).requires_grad_(True)
        out = self.module(path)[:, self.index]
        (grad,) = torch.autograd.grad(out.sum(), path)
        g = grad.reshape(self.steps + 1, xs.shape[0], xs.shape[1])
        avg = (g[1:] + g[:-1]).sum(dim=0) / (2.0 * self.steps)
        phi = ((xs - b) * avg).detach().numpy().astype(np.float64)
        with torch.no_grad():
            fx = self.module(xs)[:, self.index].numpy().astype(np.float64)
        return phi, self.base_value, fx


Layer = tuple[str, npt.NDArray[np.float64] | None, npt.NDArray[np.float64] | None]
"""One step of a chain network: ``("linear", W (out, in), b (out,) or None)``, ``("add", c,
None)``, or an elementwise ``("relu" | "sigmoid" | "tanh" | "identity", None, None)``, or
``("softmax", None, None)`` over the last axis."""

_ELEMENTWISE: dict[str, Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]] = {
    "relu": lambda z: np.maximum(z, 0.0),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "tanh": np.tanh,
    "identity": lambda z: z,
}


def _softmax(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float64)


class DeepShap:
    """DeepSHAP of output ``index`` of a chain network (``layers``) against ``background``.

    DeepLIFT's rescale rule (Shrikumar et al., 2017) from each background row, averaged over
    the rows, as ``shap.DeepExplainer`` does (Lundberg and Lee, 2017): a linear step passes
    its multipliers back through its weights; an elementwise one scales them by
    ``(f(z) - f(z')) / (z - z')`` (its derivative where ``z == z'``); a softmax by its
    Jacobian at the midpoint, rescaled to the change it made. Each step's multipliers sum
    to its change in the output, so additivity is exact: ``base_value + sum(phi) == f(x)``.
    A batch of ``n`` events costs ``n * K`` (``K`` background rows) forward and backward
    passes of the network, in a few matrix products: no model calls.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> w1, w2 = rng.normal(size=(8, 3)), rng.normal(size=(2, 8))
    >>> net = [("linear", w1, None), ("relu", None, None), ("linear", w2, None),
    ...        ("softmax", None, None)]
    >>> ex = DeepShap(net, rng.normal(size=(16, 3)), index=1)
    >>> phi, base, fx = ex.explain(rng.normal(size=(4, 3)).astype(np.float32))
    >>> bool(np.allclose(base + phi.sum(axis=1), fx))
    True
    """

    method = "deep_shap"

    def __init__(self, layers: Sequence[Layer], background: npt.ArrayLike, index: int) -> None:
        for kind, _, _ in layers:
            if kind not in _ELEMENTWISE and kind not in ("linear", "add", "softmax"):
                raise ValueError(f"DeepSHAP cannot pass back through a {kind!r} step")
        self.layers = list(layers)
        self.background = np.asarray(background, dtype=np.float64)
        self.index = index
        bg_acts = self._forward(self.background)
        self.base_value = float(bg_acts[-1][:, index].mean())
        # The kernel's flat form: step kinds, the linear steps' weights in one array, and
        # every step's input (the output last) side by side in one matrix per row.
        codes = {"linear": LINEAR, "add": ADD, "relu": RELU, "sigmoid": SIGMOID, "tanh": TANH,
                 "identity": IDENTITY, "softmax": SOFTMAX}  # fmt: skip
        self._kinds = np.array([codes[k] for k, _, _ in self.layers], dtype=np.int64)
        mats = [np.ascontiguousarray(a, dtype=np.float64).ravel() if k == "linear" and
                a is not None else np.zeros(0) for k, a, _ in self.layers]  # fmt: skip
        self._w_off = np.cumsum([0] + [len(w) for w in mats[:-1]]).astype(np.int64)
        self._weights = np.concatenate(mats) if mats else np.zeros(0)
        self._a_w = np.array([a.shape[1] for a in bg_acts], dtype=np.int64)
        self._a_off = np.concatenate([[0], np.cumsum(self._a_w)[:-1]]).astype(np.int64)
        self._ab = np.ascontiguousarray(np.concatenate(bg_acts, axis=1))

    def _forward(self, x: npt.NDArray[np.float64]) -> list[npt.NDArray[np.float64]]:
        """The input of every step, and the output last."""
        acts = [x]
        for kind, a, b in self.layers:
            z = acts[-1]
            if kind == "linear":
                assert a is not None
                z = z @ a.T if b is None else z @ a.T + b
            elif kind == "add":
                assert a is not None
                z = z + a
            elif kind == "softmax":
                z = _softmax(z)
            else:
                z = _ELEMENTWISE[kind](z)
            acts.append(z)
        return acts

    def explain(self, x: Matrix) -> tuple[npt.NDArray[np.float64], float, npt.NDArray[np.float64]]:
        xs = np.asarray(x, dtype=np.float64).reshape(-1, self.background.shape[1])
        acts = self._forward(xs)
        phi = np.empty_like(xs)
        deep_shap_kernel(self._kinds, self._w_off, self._weights, self._a_off, self._a_w,
                         np.concatenate(acts, axis=1), self._ab, xs, self.background,
                         self.index, phi)  # fmt: skip
        return phi, self.base_value, acts[-1][:, self.index].copy()


# ---------------------------------------------------------------------------- sampling


class SamplePolicy:
    """Which predictions to explain: a ``share`` of them (seeded draws), every one scoring at
    least ``min_score``, and the event ids asked for with :meth:`request` (at most
    ``max_requests`` pending; each is explained once when it passes)."""

    def __init__(
        self,
        share: float = 0.0,
        min_score: float | None = None,
        *,
        seed: int = 0,
        max_requests: int = 10_000,
    ) -> None:
        self.share = share
        self.min_score = min_score
        self._rng = np.random.default_rng(seed)
        self._requested: dict[str, None] = {}
        self._lock = threading.Lock()
        self.max_requests = max_requests

    def request(self, event_ids: Iterable[str]) -> None:
        """Explain these events when they pass (oldest requests dropped past the bound)."""
        with self._lock:
            for e in event_ids:
                self._requested[e] = None
            while len(self._requested) > self.max_requests:
                del self._requested[next(iter(self._requested))]

    def pick(
        self, event_ids: Sequence[str], scores: npt.NDArray[np.floating]
    ) -> npt.NDArray[np.intp]:
        """Indices of the rows to explain."""
        n = len(scores)
        picked = self._draw(n)
        if self.min_score is None and not self._requested:
            return picked  # the common case: no mask over the batch
        chosen = np.zeros(n, dtype=np.bool_)
        chosen[picked] = True
        if self.min_score is not None:
            chosen |= np.asarray(scores) >= self.min_score
        if self._requested:
            with self._lock:
                for i, e in enumerate(event_ids):
                    if e in self._requested:
                        del self._requested[e]
                        chosen[i] = True
        return np.flatnonzero(chosen)

    def _draw(self, n: int) -> npt.NDArray[np.intp]:
        """Rows ``0..n-1`` each taken with probability :attr:`share`, independently: the
        gaps between taken rows are geometric, so a draw costs per row taken (about
        ``share * n`` of them), not per row."""
        p = self.share
        if p <= 0 or n == 0:
            return np.zeros(0, dtype=np.intp)
        if p >= 1:
            return np.arange(n, dtype=np.intp)
        at = np.zeros(0, dtype=np.int64)
        pos = -1  # the last row taken
        while True:
            k = int(n * p + 4.0 * math.sqrt(n * p) + 8)
            nxt = pos + np.cumsum(self._rng.geometric(p, size=k))
            at = np.concatenate([at, nxt])
            if nxt[-1] >= n:
                return np.asarray(at[at < n], dtype=np.intp)
            pos = int(nxt[-1])


# ---------------------------------------------------------------------------- the worker


@dataclass(frozen=True)
class ExplainRequest:
    event_id: str
    model_version: str
    features: Matrix  # (d,)


@dataclass
class WorkerCounts:
    queued: int = 0
    explained: int = 0
    dropped: int = 0  # the queue was full
    failed: int = 0  # the explainer or the sink raised
    busy_s: float = 0.0  # time spent explaining


class ExplanationWorker:
    """Explains queued requests on a thread of its own and hands the records to ``sink``.

    ``explainer_for(version)`` gives (and may cache) the explainer of a model version;
    ``columns`` name the attributions. :meth:`submit` never blocks: past ``queue_size``
    waiting requests it drops and counts (:attr:`counts`). The thread rests between batches
    so as to use at most ``max_cpu_share`` of a core: explanations beyond that are dropped
    rather than taken from the pipeline's CPU. With ``nice`` > 0 (Linux) the thread runs at
    that nice value: where the CPU is contended (the pipeline thread busy, other processes)
    it gets little of it, so that it takes mostly time the pipeline leaves idle."""

    def __init__(
        self,
        explainer_for: Callable[[str], Explainer],
        columns: Sequence[str],
        sink: Callable[[list[dict[str, Any]]], None],
        *,
        queue_size: int = 1_024,
        batch: int = 256,
        model_name: str = "",
        max_cpu_share: float = 1.0,
        nice: int = 0,
    ) -> None:
        self.model_name = model_name
        self.max_cpu_share = max_cpu_share
        self.nice = nice
        self.explainer_for = explainer_for
        self.columns = list(columns)
        self.sink = sink
        self.batch = batch
        self.counts = WorkerCounts()
        self.queue_size = queue_size
        self._q: deque[ExplainRequest] = deque()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="explanations", daemon=True)
        self._started = False
        self._cv = threading.Condition()
        self._pending = 0  # queued or being explained

    def start(self) -> ExplanationWorker:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def _room(self, wanted: int) -> int:
        """Take room for up to ``wanted`` requests (call with the lock held); the rest are
        dropped and counted."""
        took = max(0, min(wanted, self.queue_size - len(self._q)))
        self.counts.dropped += wanted - took
        self.counts.queued += took
        return took

    def submit(self, requests: Iterable[ExplainRequest]) -> int:
        """Queue ``requests``; returns how many were dropped (the queue was full)."""
        reqs = list(requests)
        with self._cv:
            took = self._room(len(reqs))
            self._q.extend(reqs[:took])
            self._pending += took
            self._cv.notify()
        return len(reqs) - took

    def submit_rows(
        self,
        event_ids: Sequence[str],
        versions: Sequence[str] | str,
        x: npt.NDArray[np.float32],
        rows: npt.NDArray[np.intp],
    ) -> int:
        """Queue rows ``rows`` of the batch ``x`` (with their event ids and model
        versions); returns how many were dropped. Never blocks; the queue's room is checked
        once, and only the rows taken are copied (one fancy-index copy)."""
        with self._cv:
            took = self._room(len(rows))
            if took:
                take = rows[:took]
                xs = np.asarray(x[take], dtype=np.float32)
                at = take.tolist()
                for r, (i, e) in enumerate(zip(at, ids_at(event_ids, at), strict=True)):
                    v = versions if isinstance(versions, str) else versions[i]
                    self._q.append(ExplainRequest(e, v, xs[r]))
                self._pending += took
                self._cv.notify()
        return len(rows) - took

    def discard_queued(self) -> int:
        """Drop what is queued and not yet being explained (counted as dropped); returns how
        many. For a shutdown that must not wait, and for benchmarks."""
        with self._cv:
            n = len(self._q)
            self._q.clear()
            self._pending -= n
            self.counts.dropped += n
            self._cv.notify_all()
        return n

    def flush_due(self) -> None:
        """Nothing to do: the thread takes each request as it is queued."""

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued request is explained (tests, benchmarks, shutdown)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Explain what is queued (up to ``timeout_s``), then stop the thread."""
        if not self._started:
            return
        self.wait_idle(timeout_s)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        if self.nice > 0:
            _lower_priority(self.nice)
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._q) or self._stop)
                if not self._q:
                    return  # stopped, nothing left
                items = [self._q.popleft() for _ in range(min(self.batch, len(self._q)))]
            t0 = time.perf_counter()
            self.explain_items(items)
            with self._cv:
                self._pending -= len(items)
                self._cv.notify_all()
            if self.max_cpu_share < 1.0:  # rest so as to use at most this share of a core
                time.sleep((time.perf_counter() - t0) * (1.0 / self.max_cpu_share - 1.0))

    def explain_items(self, items: list[ExplainRequest]) -> None:
        """Explain ``items`` now, on the calling thread, and hand the records to the sink."""
        t0 = time.perf_counter()
        by_version: dict[str, list[ExplainRequest]] = {}
        for r in items:
            by_version.setdefault(r.model_version, []).append(r)
        for version, reqs in by_version.items():
            try:
                explainer = self.explainer_for(version)
                x = np.stack([r.features for r in reqs])
                phi, base, fx = explainer.explain(x)
                records = [
                    explanation_record(
                        r.event_id,
                        version,
                        base,
                        float(fx[i]),
                        phi[i],
                        self.columns,
                        explainer.method,
                        model_name=self.model_name,
                    )
                    for i, r in enumerate(reqs)
                ]
                self.sink(records)
                self.counts.explained += len(reqs)
            except Exception:  # a side output: log and count, never take the pipeline down
                log.exception("explaining %d events of version %s failed", len(reqs), version)
                self.counts.failed += len(reqs)
        self.counts.busy_s += time.perf_counter() - t0


def ids_at(event_ids: Sequence[str], rows: list[int]) -> list[str]:
    """``event_ids[i]`` for ``i`` in ``rows``; of a decoder's joined ids, without splitting
    the batch's others."""
    if isinstance(event_ids, JoinedIds):
        return event_ids.take(rows)
    return [event_ids[i] for i in rows]


def _lower_priority(nice: int) -> None:
    """Give the calling thread (not the process: Linux schedules threads) nice value
    ``nice``; a no-op where that is not possible."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):  # not Linux, or not allowed
        log.debug("the explanation thread keeps the pipeline's priority")


def explanation_record(
    event_id: str,
    model_version: str,
    base_value: float,
    output: float,
    phi: npt.NDArray[np.float64],
    columns: Sequence[str],
    method: str,
    *,
    model_name: str = "",
    time_ms: int | None = None,
) -> dict[str, Any]:
    """One ``schemas/Explanation.avsc`` record."""
    return {
        "event_id": event_id,
        "model_name": model_name,
        "model_version": model_version,
        "method": method,
        "base_value": float(base_value),
        "output": float(output),
        "attributions": {c: float(v) for c, v in zip(columns, phi.tolist(), strict=True)},
        "time": int(time.time() * 1000) if time_ms is None else time_ms,
    }
