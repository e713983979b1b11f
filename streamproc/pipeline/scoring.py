"""Scorers turn a feature matrix into scores and say which model version made each row.

A :class:`SingleScorer` serves one version; rollouts plug in a scorer that splits rows
between versions by key (see :mod:`streamproc.rollout`).

:func:`start_scoring` begins scoring and returns what finishes it: on a scorer whose backend
is asynchronous (a GPU running CUDA graphs) the GPU works while the caller does other
things; any other scorer scores at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from streamproc.backends.base import is_asynchronous, submit
from streamproc.models.spec import ModelSpec


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
    def score(self, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]) -> Scored: ...

    @property
    def primary(self) -> ModelSpec: ...

    @property
    def backend_name(self) -> str: ...


class BackendLike(Protocol):
    name: str

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...


class SingleScorer:
    """Every row scored by one model version."""

    def __init__(self, spec: ModelSpec, backend: BackendLike) -> None:
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
        return str(getattr(self.backend, "device", "cpu"))

    @property
    def asynchronous(self) -> bool:
        return is_asynchronous(self.backend)

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


def start_scoring(
    scorer: Any, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]
) -> Callable[[], Scored]:
    """``scorer.start`` where the scorer has it, else ``scorer.score`` at once."""
    start = getattr(scorer, "start", None)
    if start is not None:
        finish: Callable[[], Scored] = start(features, keys)
        return finish
    scored = scorer.score(features, keys)
    return lambda: scored
