"""Scorers turn a feature matrix into scores and say which model version made each row.

A :class:`SingleScorer` serves one version; rollouts plug in a scorer that splits rows
between versions by key (see :mod:`streamproc.rollout`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

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

    def score(self, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]) -> Scored:
        import time

        t = time.perf_counter()
        scores = self.backend.infer(features) if len(features) else np.zeros((0, 0), np.float32)
        return Scored(
            scores=np.asarray(scores, dtype=np.float32),
            version_index=np.zeros(len(features), dtype=np.int8),
            versions=[self.spec],
            infer_s={self.spec.version: time.perf_counter() - t},
        )
