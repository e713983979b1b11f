"""Scorers turn a feature matrix into scores and say which model version made each row.

A :class:`SingleScorer` serves one version; rollouts plug in a scorer that splits rows
between versions by key (see :mod:`streamproc.rollout`).

:meth:`Scorer.start` begins scoring and returns what finishes it: on a scorer whose backend
is asynchronous (a GPU running CUDA graphs) the GPU works while the caller does other
things; any other scorer scores at once (the protocol's default).

Every scorer subclasses :class:`Scorer` explicitly, which gives it the defaults:

>>> import numpy as np
>>> from streamproc.models.spec import FeatureSpec
>>> class Ones(Scorer):
...     primary = ModelSpec(name="m", version="1.0.0", inputs=(FeatureSpec(field="x"),))
...     backend_name = "ones"
...     def score(self, features, keys):
...         return Scored(np.ones((len(features), 1), np.float32),
...                       np.zeros(len(features), np.int8), [self.primary])
>>> s = Ones()
>>> s.device, s.asynchronous, s.drain_alerts()
('cpu', False, [])
>>> s.start(np.zeros((2, 1), np.float32), [None, None])().scores.ravel().tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from streamproc.backends.base import Backend, submit
from streamproc.models.spec import ModelSpec
from streamproc.types import Alert


@dataclass
class Scored:
    scores: npt.NDArray[np.float32]  # (n, K)
    version_index: npt.NDArray[np.int8]  # (n,) index into `versions`
    versions: Sequence[ModelSpec]
    infer_s: dict[str, float] = field(default_factory=dict)  # seconds per version
    # Shadow results: scored but never sent to users (version, row indices, scores).
    shadow: list[tuple[ModelSpec, npt.NDArray[np.intp], npt.NDArray[np.float32]]] = field(
        default_factory=list
    )


class Scorer(Protocol):
    """What the batch handler scores with. Subclass it explicitly to get the defaults."""

    @property
    def primary(self) -> ModelSpec:
        """The version whose name and reference the pipeline reports (a rollout: stable)."""
        ...

    @property
    def backend_name(self) -> str: ...

    @property
    def device(self) -> str:
        """Where the primary version runs (``"cpu"``, ``"cuda:0"``, ...)."""
        return "cpu"

    @property
    def asynchronous(self) -> bool:
        """Whether :meth:`start` returns before the scores are there (then a caller gains by
        starting the next batch before finishing this one)."""
        return False

    def score(self, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]) -> Scored:
        """Score ``features`` (one row per key) now."""
        ...

    def start(
        self, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]
    ) -> Callable[[], Scored]:
        """Begin scoring; the returned call gives the scores. By default: :meth:`score` now."""
        scored = self.score(features, keys)
        return lambda: scored

    def drain_alerts(self) -> list[Alert]:
        """Alerts the scorer raised since the last call (a rollout's rollbacks)."""
        return []

    def route(self, keys: Sequence[bytes | None]) -> list[ModelSpec]:
        """The version that would score each key's row now. By default: the primary."""
        return [self.primary] * len(keys)


class SingleScorer(Scorer):
    """Every row scored by one model version."""

    def __init__(self, spec: ModelSpec, backend: Backend) -> None:
        self.spec = spec
        self.backend = backend

    @property
    def primary(self) -> ModelSpec:
        return self.spec

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def asynchronous(self) -> bool:
        return self.backend.asynchronous

    def score(self, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]) -> Scored:
        return self.start(features, keys)()

    def start(
        self, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]
    ) -> Callable[[], Scored]:
        """Submit ``features`` to the backend; the returned call waits and gives the scores.
        ``infer_s`` counts the host's time in both: submitting, and waiting for the result."""
        t = time.perf_counter()
        pending = submit(self.backend, features) if len(features) else None
        spent = time.perf_counter() - t

        def finish() -> Scored:
            t = time.perf_counter()
            scores = pending.result() if pending is not None else np.zeros((0, 0), np.float32)
            return Scored(
                scores=np.asarray(scores, dtype=np.float32),
                version_index=np.zeros(len(features), dtype=np.int8),
                versions=[self.spec],
                infer_s={self.spec.version: spent + time.perf_counter() - t},
            )

        return finish
