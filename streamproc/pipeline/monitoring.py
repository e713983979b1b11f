"""The drift package wired to the batch handler: inputs, scores and data quality per batch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from streamproc.drift import (
    AccuracyMonitor,
    AlertEvent,
    DriftConfig,
    DriftMonitor,
    QualityMonitor,
    ReferenceProfile,
)
from streamproc.drift.alerts import AlertType
from streamproc.drift.base import Detector
from streamproc.drift.monitors import AlertMaker
from streamproc.drift.seasonal import SeasonalDriftMonitor, SeasonalReference
from streamproc.drift.window import CategoryDetector
from streamproc.errors import ConfigError
from streamproc.models.spec import ModelSpec
from streamproc.types import Alert, DecodedBatch

from .handler import Monitor

PROFILE_FILE = "reference_profile.json"


def load_profile(spec: ModelSpec) -> ReferenceProfile | None:
    """The version's stored reference profile (``reference_profile.json``), if any."""
    path = (spec.home or Path(".")) / PROFILE_FILE
    return ReferenceProfile.load(path) if path.exists() else None


class LabelSource(Protocol):
    """Where the accuracy monitor's labels come from
    (:class:`~streamproc.kafka.feedback.FeedbackReader`)."""

    def drain(self) -> tuple[list[str], npt.NDArray[np.object_]]:
        """The event ids and labels read since the last call."""
        ...


class StreamMonitor(Monitor):
    """Implements :class:`streamproc.pipeline.handler.Monitor` for one model version.

    Without a stored profile, the first ``reference_events`` events become the reference.
    """

    def __init__(
        self,
        spec: ModelSpec,
        config: DriftConfig,
        profile: ReferenceProfile | None,
        feedback: LabelSource | None = None,
    ):
        self.spec = spec
        self.quality = QualityMonitor(profile, config)
        self.feedback = feedback
        # Where joined labels go per model version during a rollout: the pipeline sets it
        # to the rollout guard's observe_feedback (the accuracy guardrail's input).
        self.on_feedback: Callable[[str, npt.NDArray[np.bool_]], None] | None = None
        self.accuracy = AccuracyMonitor(
            config, reference_error_rate=profile.error_rate if profile is not None else None
        )
        # Predicted label by positive (0/1): picked per batch by a numpy index.
        self._label_names = np.array(spec.outputs.labels[:2], dtype=object)
        names = spec.columns
        self.continuous = np.arange(len(names))
        self.discrete = np.arange(0)
        self.discrete_drift: Detector | None = None
        self.drift: DriftMonitor
        self._discrete_alerts: AlertMaker | None = None
        if profile is not None:
            # CUSUMs on standardised values suit continuous columns; columns with a few
            # distinct values (0/1, one-hot, small counts) false-alarm under them and get a
            # G-test of their category frequencies instead. The false-alarm budget is split
            # over the columns: each part gets its share, so both together keep the budget.
            flags = np.array([c.discrete for c in profile.columns], dtype=np.bool_)
            self.continuous = np.flatnonzero(~flags)
            self.discrete = np.flatnonzero(flags)
            d = len(names)
            budget = config.false_alarms_per_million
            cont_cfg = config.model_copy(
                update={"false_alarms_per_million": budget * max(self.continuous.size, 1) / d}
            )
            cont = replace(profile, columns=[profile.columns[i] for i in self.continuous])
            cont_names = [names[i] for i in self.continuous]
            if config.seasonality != "none":  # against the reference at the event's time
                seasonal = SeasonalReference.of(profile, config.seasonality)
                self.drift = SeasonalDriftMonitor(seasonal, cont_cfg, columns=cont_names)
            else:
                self.drift = DriftMonitor(cont, cont_cfg, columns=cont_names)
            if self.discrete.size and config.detector != "null":
                nd = int(self.discrete.size)
                self.discrete_drift = CategoryDetector(
                    [profile.columns[i] for i in self.discrete],
                    arl=config.design_arl(nd, budget * nd / d),
                    window=config.window_events,
                    recovery=config.recovery_events,
                )
                self._discrete_alerts = AlertMaker(
                    AlertType.INPUT_DRIFT, [names[i] for i in self.discrete], config
                )
        else:
            if config.seasonality != "none":
                raise ConfigError(
                    f"drift.seasonality is {config.seasonality!r} but model {spec.name} "
                    f"{spec.version} has no reference profile with a seasonal reference"
                )
            self.drift = DriftMonitor(None, config, columns=names)

    def observe(
        self,
        decoded: DecodedBatch,
        ok_rows: npt.NDArray[np.intp],
        scores: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        rejects: dict[str, int],
        versions: Sequence[str] | None = None,
    ) -> list[Alert]:
        alerts: list[Alert] = []
        if len(ok_rows):
            if len(ok_rows) == len(decoded):  # every event decoded: no copies
                ok_offsets, x, when = offsets, decoded.features, decoded.event_time_ms
            else:
                ok_offsets, x = offsets[ok_rows], decoded.features[ok_rows]
                when = decoded.event_time_ms[ok_rows]
            alerts += self.drift.update(x[:, self.continuous], ok_offsets, event_time_ms=when)
            if self.discrete_drift is not None and self._discrete_alerts is not None:
                self.discrete_drift.update(x[:, self.discrete], ok_offsets)
                alerts += self._discrete_alerts.make(self.discrete_drift.transitions)
            if scores.size:
                alerts += self.drift.update_scores(
                    scores[:, self.spec.outputs.score_index], ok_offsets, event_time_ms=when
                )
        # A writer schema counts as in use once an event decodes with it: the schema id of a
        # dead letter (an unknown id, random bytes after a magic byte) raises no new_schema.
        sids = decoded.schema_ids
        if len(ok_rows) != len(decoded):
            sids = np.full(len(decoded), -1, dtype=np.int64)
            sids[ok_rows] = decoded.schema_ids[ok_rows]
        alerts += self.quality.update(len(decoded), rejects, None, sids, offsets)
        if self.feedback is not None:
            alerts += self._accuracy(decoded, ok_rows, scores, versions)
        return alerts

    def _accuracy(
        self,
        decoded: DecodedBatch,
        ok_rows: npt.NDArray[np.intp],
        scores: npt.NDArray[np.float32],
        versions: Sequence[str] | None,
    ) -> list[AlertEvent]:
        """Remember this batch's predicted labels (and, in a rollout, their versions); join
        the labels that came meanwhile; hand each version's outcomes to ``on_feedback``."""
        assert self.feedback is not None
        o = self.spec.outputs
        if len(ok_rows) and scores.size:
            positive = scores[:, o.score_index] >= o.threshold
            predicted = self._label_names[positive.view(np.int8)]
            event_ids = decoded.event_ids
            if len(ok_rows) != len(event_ids):  # some rows are dead letters
                event_ids = list(map(event_ids.__getitem__, ok_rows.tolist()))
            self.accuracy.record_predictions(event_ids, predicted, versions)
        ids, labels = self.feedback.drain()
        if not len(ids):
            return []
        alerts = self.accuracy.record_labels(ids, labels)
        outcomes, self.accuracy.outcomes = self.accuracy.outcomes, {}
        if self.on_feedback is not None:
            for version, correct in outcomes.items():
                self.on_feedback(version, np.array(correct, dtype=np.bool_))
        return alerts


class VersionedMonitor(Monitor):
    """A :class:`StreamMonitor` for whichever version is stable now: when ``stable()`` names
    another version (a promotion, a rollback), the next batch starts a monitor against that
    version's own reference profile, so a promoted model is judged against its own
    reference, not its predecessor's. The label reader carries over; the drift state and the
    predictions awaiting labels start afresh with the new version."""

    def __init__(
        self,
        first: StreamMonitor,
        stable: Callable[[], ModelSpec],
        build: Callable[[ModelSpec], StreamMonitor],
    ) -> None:
        self.current = first
        self._stable = stable
        self._build = build

    @property
    def accuracy(self) -> AccuracyMonitor:
        """The current version's accuracy monitor."""
        return self.current.accuracy

    @property
    def feedback(self) -> LabelSource | None:
        """The label reader (shared by every version's monitor)."""
        return self.current.feedback

    def _follow(self) -> StreamMonitor:
        spec = self._stable()
        cur = self.current
        if spec.version != cur.spec.version:
            nxt = self._build(spec)
            nxt.on_feedback = cur.on_feedback
            self.current = cur = nxt
        return cur

    def observe(
        self,
        decoded: DecodedBatch,
        ok_rows: npt.NDArray[np.intp],
        scores: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        rejects: dict[str, int],
        versions: Sequence[str] | None = None,
    ) -> list[Alert]:
        return self._follow().observe(decoded, ok_rows, scores, offsets, rejects, versions)


def build_monitor(
    spec: ModelSpec,
    drift: DriftConfig | Mapping[str, Any],
    feedback: LabelSource | None = None,
) -> StreamMonitor | None:
    """The monitor of ``spec`` under the pipeline's ``drift:`` section (or a mapping of it);
    None when drift monitoring is off."""
    config = drift if isinstance(drift, DriftConfig) else DriftConfig.model_validate(drift)
    if not config.enabled:
        return None
    return StreamMonitor(spec, config, load_profile(spec), feedback)


def build_profile(
    spec: ModelSpec,
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.integer] | None = None,
    *,
    event_time_ms: npt.NDArray[np.int64] | None = None,
    seasonality: str = "none",
) -> ReferenceProfile:
    """A reference profile from training data: feature columns, the model's scores and, with
    labels (index into ``spec.outputs.labels``), its reference error rate. With the rows'
    event times and a ``seasonality`` (daily, weekly), also the seasonal reference that
    ``drift.seasonality`` monitors against."""
    from streamproc.backends.select import load_backend

    backend = load_backend(spec, prefer=["onnxruntime"])
    try:
        scores = backend.infer(np.ascontiguousarray(features, dtype=np.float32))
    finally:
        backend.close()
    score = scores[:, spec.outputs.score_index]
    error_rate = None
    if labels is not None:
        error_rate = float(np.mean((score >= spec.outputs.threshold) != (labels == 1)))
    prof = ReferenceProfile.from_matrix(
        features, spec.columns, model_version=spec.version, scores=score, error_rate=error_rate
    )
    if seasonality != "none":
        if event_time_ms is None:
            raise ConfigError(f"a {seasonality} seasonal reference needs the rows' event times")
        prof.seasonal = SeasonalReference.fit(
            features, event_time_ms, spec.columns, seasonality, scores=score
        ).to_dict()
    return prof
