"""Drift monitoring follows the version that is stable: a promoted model is judged against
its own reference profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamproc.drift import DriftConfig
from streamproc.models.spec import ModelSpec, load_model_spec
from streamproc.pipeline.monitoring import StreamMonitor, VersionedMonitor, load_profile
from streamproc.types import DecodedBatch

MODELS = Path(__file__).resolve().parents[2] / "deploy" / "models" / "fraud"


def _batch(spec: ModelSpec, n: int = 64) -> DecodedBatch:
    rng = np.random.default_rng(7)
    return DecodedBatch(
        features=rng.normal(size=(n, spec.n_features)).astype(np.float32),
        event_ids=[f"e{i}" for i in range(n)],
        event_time_ms=np.zeros(n, np.int64),
        errors=np.zeros(n, np.uint8),
        details=[""] * n,
        schema_ids=np.ones(n, np.int32),
    )


def test_the_monitor_switches_to_the_new_stable_versions_reference():
    v1, v2 = load_model_spec(MODELS / "1.0.0"), load_model_spec(MODELS / "1.1.0")
    p1, p2 = load_profile(v1), load_profile(v2)
    assert p1 is not None and p2 is not None and p1.model_version != p2.model_version
    config = DriftConfig()
    built: list[str] = []

    def build(spec: ModelSpec) -> StreamMonitor:
        built.append(spec.version)
        return StreamMonitor(spec, config, load_profile(spec))

    stable = [v1]
    first = StreamMonitor(v1, config, p1)

    def on_feedback(version: str, correct: np.ndarray) -> None: ...

    first.on_feedback = on_feedback
    monitor = VersionedMonitor(first, lambda: stable[0], build)
    batch = _batch(v1)
    rows = np.arange(len(batch), dtype=np.intp)
    scores = np.zeros((len(batch), 2), np.float32)
    offsets = np.arange(len(batch), dtype=np.int64)

    monitor.observe(batch, rows, scores, offsets, {})
    assert monitor.current is first and built == []  # same version: no new monitor

    stable[0] = v2  # promoted
    monitor.observe(batch, rows, scores, offsets, {})
    assert built == ["1.1.0"]
    assert monitor.current.spec.version == "1.1.0"
    assert monitor.current.drift.profile is not None
    assert monitor.current.drift.profile.model_version == p2.model_version
    assert monitor.current.on_feedback is on_feedback  # the guard still gets the labels

    monitor.observe(batch, rows, scores, offsets, {})
    assert built == ["1.1.0"]  # built once per switch, not per batch
    stable[0] = v1  # rolled back
    monitor.observe(batch, rows, scores, offsets, {})
    assert monitor.current.spec.version == "1.0.0" and built == ["1.1.0", "1.0.0"]
