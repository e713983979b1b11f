"""An opt-in prediction cache: the scores of an exact input vector under one model version.

Entries are keyed by (model name, model version, the row's float32 bytes), so a score is
only ever served for the version that made it: after a deployment switches the version a
key is routed to, that key's rows miss and are scored afresh. Memory is bounded by entry
count and by bytes (input bytes + scores + a fixed overhead per entry); entries expire
after ``ttl_s``. cachetools does the bookkeeping (LRU order, expiry) under a lock.

>>> import numpy as np
>>> now = [0.0]
>>> c = PredictionCache(max_entries=10, max_bytes=10_000, ttl_s=5.0, clock=lambda: now[0])
>>> x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
>>> c.get_many("m", ["1.0.0", "1.0.0"], x)
[None, None]
>>> c.put_many("m", ["1.0.0", "1.0.0"], x, np.array([[0.1], [0.2]], np.float32))
>>> [None if s is None else s.tolist() for s in c.get_many("m", ["1.0.0", "2.0.0"], x)]
[[0.10000000149011612], None]
>>> c.hits, c.misses
(1, 3)
>>> now[0] = 6.0                            # past the TTL
>>> c.get_many("m", ["1.0.0"], x[:1])
[None]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from cachetools import TTLCache

from streamproc.config import CacheSettings
from streamproc.models.spec import ModelSpec
from streamproc.pipeline.scoring import Scored, Scorer
from streamproc.types import Alert

ENTRY_OVERHEAD = 200  # bytes per entry besides its data: the key tuple, the dict slot, ...

_Key = tuple[str, str, bytes]
_Value = tuple[npt.NDArray[np.float32], int]  # scores, size in bytes


class PredictionCache:
    """Scores by (model, version, exact input row); bounded by entries and bytes, with TTL."""

    def __init__(
        self,
        max_entries: int = 100_000,
        max_bytes: int = 64 * 2**20,
        ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self._cache: TTLCache[_Key, _Value] = TTLCache(
            maxsize=max_bytes, ttl=ttl_s, timer=clock, getsizeof=lambda v: v[1]
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_settings(cls, s: CacheSettings) -> PredictionCache | None:
        """The cache the settings ask for; None when it is off."""
        if not s.enabled:
            return None
        return cls(s.max_entries, s.max_bytes, s.ttl_s)

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def bytes(self) -> int:
        return int(self._cache.currsize)

    def get_many(
        self, model: str, versions: Sequence[str], x: npt.NDArray[np.float32]
    ) -> list[npt.NDArray[np.float32] | None]:
        """The cached scores of each row of ``x`` under its version; None where missing."""
        out: list[npt.NDArray[np.float32] | None] = []
        with self._lock:
            cache = self._cache
            for version, row in zip(versions, x, strict=True):
                hit = cache.get((model, version, row.tobytes()))
                out.append(None if hit is None else hit[0])
        hits = sum(s is not None for s in out)
        self.hits += hits
        self.misses += len(out) - hits
        return out

    def put_many(
        self,
        model: str,
        versions: Sequence[str],
        x: npt.NDArray[np.float32],
        scores: npt.NDArray[np.float32],
    ) -> None:
        with self._lock:
            cache = self._cache
            for version, row, s in zip(versions, x, scores, strict=True):
                key = row.tobytes()
                value = np.array(s, dtype=np.float32)  # a copy: the batch's array is not kept
                size = ENTRY_OVERHEAD + len(key) + value.nbytes
                if size > cache.maxsize:
                    continue
                while len(cache) >= self.max_entries and (model, version, key) not in cache:
                    cache.popitem()  # the least recently used
                cache[(model, version, key)] = (value, size)


class CachedScorer(Scorer):
    """A :class:`~streamproc.pipeline.scoring.Scorer` that answers rows it has seen under
    the same version from a :class:`PredictionCache` and scores the rest with ``inner``.

    A batch is routed once (:meth:`Scorer.route`) to look the rows up; the misses are
    scored by ``inner``, which may meanwhile have switched state: they are stored under the
    version that actually scored them. Cache hits are not shown to a rollout's guard and
    are not shadow-scored."""

    def __init__(self, inner: Scorer, cache: PredictionCache) -> None:
        self.inner = inner
        self.cache = cache

    @property
    def primary(self) -> ModelSpec:
        return self.inner.primary

    @property
    def backend_name(self) -> str:
        return self.inner.backend_name

    @property
    def device(self) -> str:
        return self.inner.device

    def drain_alerts(self) -> list[Alert]:
        return self.inner.drain_alerts()

    def route(self, keys: Sequence[bytes | None]) -> list[ModelSpec]:
        return self.inner.route(keys)

    def score(self, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]) -> Scored:
        n = len(features)
        if not n:
            return self.inner.score(features, keys)
        name = self.inner.primary.name
        routed = self.inner.route(keys)
        cached = self.cache.get_many(name, [v.version for v in routed], features)
        miss = [i for i, s in enumerate(cached) if s is None]
        if len(miss) == n:  # nothing cached: the inner scorer's result as it is
            scored = self.inner.score(features, keys)
            self.cache.put_many(name, _row_versions(scored), features, scored.scores)
            return scored
        versions: list[ModelSpec] = []
        index: dict[str, int] = {}
        version_index = np.zeros(n, np.int8)
        scores: npt.NDArray[np.float32] | None = None
        shadow: list[tuple[ModelSpec, npt.NDArray[np.intp], npt.NDArray[np.float32]]] = []
        infer_s: dict[str, float] = {}

        def slot(spec: ModelSpec) -> int:
            if spec.version not in index:
                index[spec.version] = len(versions)
                versions.append(spec)
            return index[spec.version]

        slot(self.inner.primary)  # index 0 is the primary, as every scorer reports it
        if miss:
            rows = np.asarray(miss, dtype=np.intp)
            x = features[rows]
            inner = self.inner.score(x, [keys[i] for i in miss])
            self.cache.put_many(name, _row_versions(inner), x, inner.scores)
            scores = np.zeros((n, inner.scores.shape[1]), np.float32)
            scores[rows] = inner.scores
            remap = np.array([slot(v) for v in inner.versions], dtype=np.int8)
            version_index[rows] = remap[inner.version_index]
            infer_s = dict(inner.infer_s)
            shadow = [(spec, rows[sel], s) for spec, sel, s in inner.shadow]
        for i, s in enumerate(cached):
            if s is None:
                continue
            if scores is None:
                scores = np.zeros((n, len(s)), np.float32)
            scores[i] = s
            version_index[i] = slot(routed[i])
        assert scores is not None
        return Scored(scores, version_index, versions, infer_s, shadow)


def _row_versions(scored: Scored) -> list[str]:
    names = [v.version for v in scored.versions]
    return [names[i] for i in scored.version_index.tolist()]
