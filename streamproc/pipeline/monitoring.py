"""The drift package wired to the batch handler: inputs, scores and data quality per batch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamproc.drift import DriftConfig, DriftMonitor, QualityMonitor, ReferenceProfile
from streamproc.models.spec import ModelSpec
from streamproc.types import DecodedBatch

PROFILE_FILE = "reference_profile.json"


def load_profile(spec: ModelSpec) -> ReferenceProfile | None:
    """The version's stored reference profile (``reference_profile.json``), if any."""
    path = (spec.home or Path(".")) / PROFILE_FILE
    return ReferenceProfile.load(path) if path.exists() else None


class StreamMonitor:
    """Implements :class:`streamproc.pipeline.processor.Monitor` for one model version.

    Without a stored profile, the first ``reference_events`` events become the reference.
    """

    def __init__(self, spec: ModelSpec, config: DriftConfig, profile: ReferenceProfile | None):
        self.spec = spec
        self.quality = QualityMonitor(profile, config)
        names = spec.columns
        self.continuous = np.arange(len(names))
        self.discrete = np.arange(0)
        if profile is not None:
            # CUSUMs on standardised values suit continuous columns. Columns with a few
            # distinct values (0/1, one-hot, small counts) false-alarm under them; they are
            # watched by the data-quality monitor instead (see the closing note).
            flags = np.array([c.discrete for c in profile.columns])
            self.continuous = np.flatnonzero(~flags)
            self.discrete = np.flatnonzero(flags)
            cont = replace(profile, columns=[profile.columns[i] for i in self.continuous])
            self.drift = DriftMonitor(cont, config, columns=[names[i] for i in self.continuous])
        else:
            self.drift = DriftMonitor(None, config, columns=names)

    def observe(
        self,
        decoded: DecodedBatch,
        ok_rows: npt.NDArray[np.intp],
        scores: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        rejects: dict[str, int],
    ) -> list[dict[str, Any]]:
        alerts = []
        if len(ok_rows):
            ok_offsets = offsets[ok_rows]
            x = decoded.features[ok_rows]
            alerts += self.drift.update(x[:, self.continuous], ok_offsets)
            if scores.size:
                alerts += self.drift.update_scores(
                    scores[:, self.spec.outputs.score_index], ok_offsets
                )
        alerts += self.quality.update(len(decoded), rejects, None, decoded.schema_ids, offsets)
        return [a.as_dict() for a in alerts]


def build_monitor(spec: ModelSpec, drift: dict[str, Any]) -> StreamMonitor | None:
    config = DriftConfig.model_validate(drift)
    if not config.enabled:
        return None
    return StreamMonitor(spec, config, load_profile(spec))


def build_profile(spec: ModelSpec, features: npt.NDArray[np.float32]) -> ReferenceProfile:
    """A reference profile from training-like data: feature columns and the model's scores."""
    from streamproc.backends.select import load_backend

    backend = load_backend(spec, prefer=["onnxruntime"])
    try:
        scores = backend.infer(np.ascontiguousarray(features, dtype=np.float32))
    finally:
        backend.close()
    return ReferenceProfile.from_matrix(
        features, spec.columns, model_version=spec.version,
        scores=scores[:, spec.outputs.score_index],
    )  # fmt: skip
