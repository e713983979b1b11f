"""The batch handler: raw records in, predictions / dead letters / alerts out.

Nothing here touches Kafka; :class:`~streamproc.kafka.runner.KafkaRunner` writes what
:meth:`BatchHandler.__call__` returns and commits. Work is per batch: one decode call, one
inference call per model version, one encode call, one drift update.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from streamproc import lineage
from streamproc.codecs.encoder import Features, IndexedLabels, PredictionEncoder
from streamproc.errors import StreamprocError
from streamproc.models.spec import ModelSpec
from streamproc.personal import Redactor
from streamproc.telemetry import BatchStats, CountingSensor, Sensor
from streamproc.types import (
    Alert,
    AlertState,
    BatchHandlerLike,
    DecodedBatch,
    JoinedKeys,
    Outputs,
    OutRecord,
    RawBatch,
    ReasonCode,
    RecordBlock,
    RejectedRecord,
)

from . import records
from .alerting import AlertRouter, AlertRules
from .features import FeatureStage
from .scoring import Scored, Scorer


class Decoder(Protocol):
    def decode(self, payloads: Sequence[bytes | None]) -> DecodedBatch: ...


class Monitor(Protocol):
    """What the pipeline needs of the drift package (see :mod:`streamproc.drift`): the
    alerts a batch raised. Subclass it explicitly; the default raises none."""

    def observe(
        self,
        decoded: DecodedBatch,
        ok_rows: npt.NDArray[np.intp],
        scores: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        rejects: dict[str, int],
        versions: Sequence[str] | None = None,  # per ok row, during a rollout only
    ) -> list[Alert]:
        return []

    def idle(self) -> None:
        """The pipeline found nothing to read: work held for a next batch may go out now
        (the explanations' linger)."""
        return None


class NullMonitor(Monitor):
    """No drift monitoring: :meth:`Monitor.observe`'s default."""


class RowScores(Protocol):
    """Per-event scores the predictions carry as ``outlier_score`` (``insight.outliers``:
    :class:`~streamproc.pipeline.insight.InsightMonitor`). Called once per batch, before
    encoding and before :meth:`Monitor.observe`, on the same thread."""

    def scores(
        self, features: npt.NDArray[np.float32], spec: ModelSpec
    ) -> npt.NDArray[np.float64] | None:
        """One score per row of ``features`` (the batch's scored events), or None: the
        field stays null. ``spec``: the stable version."""
        ...


class RejectedLabels(Protocol):
    """Where the records of the feedback topic that were not readable labels come from
    (:class:`~streamproc.kafka.feedback.FeedbackReader`): each becomes a dead letter."""

    def drain_rejected(self) -> list[RejectedRecord]:
        """The unreadable records since the last call."""
        ...


@dataclass(frozen=True)
class OutputTopics:
    predictions: str
    dlq: str
    alerts: str
    metrics: str
    shadow: str


@dataclass(frozen=True)
class SchemaIds:
    prediction: int
    dead_letter: int
    alert: int
    metrics: int


_REASON_NAMES = {int(r): r.name for r in ReasonCode}
# What a model may raise on a batch: its events become INFERENCE_FAILED dead letters.
_MODEL_ERRORS = (StreamprocError, RuntimeError, ValueError)


@dataclass
class Started:
    """A batch between :meth:`BatchHandler.start` and :meth:`BatchHandler.finish`."""

    raw: RawBatch
    dec: DecodedBatch
    errors: npt.NDArray[np.uint8]
    ok_rows: npt.NDArray[np.intp]
    scoring: Callable[[], Scored] | None  # waits for the scores; None: nothing to score
    infer_error: str  # the model failed already when scoring started
    decode_s: float
    submit_s: float
    state: list[OutRecord] = field(default_factory=list)  # window-state changelog entries
    closed: list[OutRecord] = field(default_factory=list)  # closed windows' aggregates


class BatchHandler(BatchHandlerLike):
    def __init__(
        self,
        *,
        decoder: Decoder,
        scorer: Scorer,
        topics: OutputTopics,
        schema_ids: SchemaIds,
        processor_id: str,
        pipeline: str,
        sensor: Sensor | None = None,
        counters: CountingSensor | None = None,
        monitor: Monitor | None = None,
        snapshot_interval_s: float = 10.0,
        router: AlertRouter | None = None,
        labels: RejectedLabels | None = None,
        redactor: Redactor | None = None,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000.0,
        features: FeatureStage | None = None,
        include_features: bool = False,
        row_scores: RowScores | None = None,
        framed_predictions: bool = True,
    ) -> None:
        self.decoder = decoder
        # False: predictions are bare Avro datums, no Confluent header (file outputs).
        self.framed_predictions = framed_predictions
        self.scorer = scorer
        self.topics = topics
        self.ids = schema_ids
        self.processor_id = processor_id
        self.pipeline = pipeline
        self.sensor = sensor or Sensor()
        self.counters = counters or CountingSensor()
        self.monitor: Monitor = monitor or NullMonitor()
        self.snapshot_interval_ms = snapshot_interval_s * 1000.0
        self.router = router or AlertRouter(AlertRules())
        self.labels = labels
        self.redactor = redactor  # personal fields configured: dead letters hold no raw value
        self.clock_ms = clock_ms
        # Windowed features (the decoder then reads the event fields only: see .features).
        self.features = features
        self.include_features = include_features  # predictions carry the model's inputs
        self.row_scores = row_scores  # predictions carry an outlier score
        self._last_snapshot = -float("inf")  # the first batch sends one, then every interval
        self._encoders: dict[str, PredictionEncoder] = {}

    def _encoder(self, version: str) -> PredictionEncoder:
        enc = self._encoders.get(version)
        if enc is None:
            enc = self._encoders[version] = PredictionEncoder(
                self.ids.prediction, framed=self.framed_predictions
            )
        return enc

    @property
    def overlaps(self) -> bool:
        """Whether :meth:`start` leaves the model working after it returns (an asynchronous
        backend): then a caller gains by starting the next batch before finishing this one."""
        return self.scorer.asynchronous

    def __call__(self, raw: RawBatch) -> Outputs:
        return self.finish(self.start(raw))

    def pending(self) -> list[OutRecord]:
        """The rollout guard's alerts decided since the last batch (a rollback), as records.
        Asked when there is nothing to read: the monitor's held work goes out too."""
        self.monitor.idle()
        alerts = self.scorer.drain_alerts()
        if not alerts:
            return []
        out, now_ms = Outputs(), int(self.clock_ms())
        for a in alerts:
            self._alert(a, now_ms, out)
        return out.records

    def assigned(self, partitions: list[int]) -> None:
        if self.features is not None:
            self.features.assigned(partitions)

    def revoked(self, partitions: list[int]) -> None:
        if self.features is not None:
            self.features.revoked(partitions)

    def defer_state(self) -> None:
        if self.features is not None:
            self.features.defer_state()

    def state_records(self) -> list[OutRecord]:
        return self.features.state_records() if self.features is not None else []

    def warm(self, raw: RawBatch) -> None:
        """Add ``raw``'s events to the window state without scoring them (no outputs): a
        ``score`` job replays the history before its range so that the range's first
        events see the state the live pipeline had."""
        if self.features is not None:
            self.features.apply(raw, self.decoder.decode(raw.values))

    def start(self, raw: RawBatch) -> Started:
        """Decode ``raw`` and start scoring its valid events. Raises only what decoding
        raises (a registry outage: the caller retries); a model error is kept for
        :meth:`finish`, which dead-letters the batch."""
        t0 = time.perf_counter()
        dec = self.decoder.decode(raw.values)
        state: list[OutRecord] = []
        closed: list[OutRecord] = []
        skip = None
        if self.features is not None:  # between decode and scoring: the window store
            fb = self.features.apply(raw, dec)
            dec, state, skip, closed = fb.dec, fb.state, fb.skip, fb.records
        t1 = time.perf_counter()
        errors = dec.errors.copy()
        ok = errors == 0
        if skip is not None and skip.any():  # already in the state: no output (.features)
            ok &= ~skip
        ok_rows = np.flatnonzero(ok)
        keys = raw.keys
        scoring: Callable[[], Scored] | None = None
        infer_error = ""
        if len(ok_rows):
            try:
                if len(ok_rows) == len(keys):  # the common case: no copies
                    scoring = self.scorer.start(dec.features, keys)
                else:
                    ok_keys = [keys[i] for i in ok_rows.tolist()]
                    scoring = self.scorer.start(dec.features[ok_rows], ok_keys)
            except _MODEL_ERRORS as exc:
                infer_error = f"{type(exc).__name__}: {exc}"
        return Started(raw, dec, errors, ok_rows, scoring, infer_error,
                       t1 - t0, time.perf_counter() - t1, state, closed)  # fmt: skip

    def finish(self, started: Started) -> Outputs:
        """Wait for the scores of a :meth:`start`-ed batch and build its outputs."""
        raw, dec, errors, ok_rows = started.raw, started.dec, started.errors, started.ok_rows
        infer_error = started.infer_error
        t1 = time.perf_counter()
        scored = None
        if started.scoring is not None:
            try:
                scored = started.scoring()
            except _MODEL_ERRORS as exc:
                infer_error = f"{type(exc).__name__}: {exc}"
        if infer_error:
            # A model that fails on a batch dead-letters it with the reason: no loss,
            # no crash loop; the operator replays the DLQ after fixing the model.
            errors[ok_rows] = ReasonCode.INFERENCE_FAILED
            ok_rows = ok_rows[:0]
            scored = None
        t2 = time.perf_counter()
        now_ms = int(self.clock_ms())
        out = Outputs(records=list(started.closed), state=started.state)
        primary = self.scorer.primary
        by_version: dict[str, int] = {}
        if scored is not None and len(ok_rows):
            self._predictions(raw, dec, ok_rows, scored, now_ms, out, by_version)
        t3 = time.perf_counter()
        rejects = self._dead_letters(raw, dec, errors, infer_error, now_ms, out)
        versions = None
        if scored is not None and len(scored.versions) > 1:  # a rollout: who predicted what
            names = np.array([v.version for v in scored.versions], dtype=object)
            versions = names[scored.version_index].tolist()
        alerts = self.monitor.observe(
            dec, ok_rows,
            scored.scores if scored is not None else np.zeros((0, 0), np.float32),
            raw.offsets, rejects, versions=versions,
        )  # fmt: skip
        alerts = [*alerts, *self.scorer.drain_alerts()]  # a rollout scorer's rollbacks
        for a in alerts:
            self._alert(a, now_ms, out)
        label_rejects = self._label_dead_letters(now_ms, out)
        t4 = time.perf_counter()
        latencies = (now_ms - dec.event_time_ms[ok_rows]).astype(np.float64)
        stats = BatchStats(
            model=primary.name,
            version=primary.version,
            backend=self.scorer.backend_name,
            size=len(raw),
            predictions=out.n_predictions,
            rejects=rejects,
            release=raw.release.value,
            wait_ms=raw.wait_ms,
            stage_s={
                "decode": started.decode_s,
                "infer": started.submit_s + t2 - t1,
                "encode": t3 - t2,
                "monitor": t4 - t3,
            },
            latencies_ms=latencies,
            by_version=by_version,
            label_rejects=label_rejects,
        )
        if now_ms - self._last_snapshot >= self.snapshot_interval_ms:
            self._last_snapshot = now_ms
            out.records.append(self._snapshot(now_ms))
        out.stats = stats
        return out

    # -- pieces ----------------------------------------------------------------------------

    def _predictions(
        self,
        raw: RawBatch,
        dec: DecodedBatch,
        ok_rows: npt.NDArray[np.intp],
        scored: Any,
        now_ms: int,
        out: Outputs,
        by_version: dict[str, int],
    ) -> None:
        outlier = None
        if self.row_scores is not None:  # one call for the batch, before any is encoded
            x = dec.features if len(ok_rows) == len(dec) else dec.features[ok_rows]
            outlier = self.row_scores.scores(x, self.scorer.primary)
        for vi, spec in enumerate(scored.versions):
            sel = np.flatnonzero(scored.version_index == vi)
            if not len(sel):
                continue
            rows = ok_rows[sel]
            self._emit(raw, dec, rows, spec, scored.scores[sel], now_ms, out,
                       self.topics.predictions, _pick(outlier, sel))  # fmt: skip
            by_version[spec.version] = len(rows)
            out.n_predictions += len(rows)
        for spec, sel, scores in scored.shadow:
            self._emit(raw, dec, ok_rows[sel], spec, scores, now_ms, out, self.topics.shadow,
                       _pick(outlier, sel))  # fmt: skip

    def _emit(
        self,
        raw: RawBatch,
        dec: DecodedBatch,
        rows: npt.NDArray[np.intp],
        spec: Any,
        scores: npt.NDArray[np.float32],
        now_ms: int,
        out: Outputs,
        topic: str,
        outlier: npt.NDArray[np.float64] | None = None,
    ) -> None:
        o = spec.outputs
        # The two labels and which one each event gets: no string per event.
        labels = IndexedLabels(
            o.labels[:2], (scores[:, o.score_index] >= o.threshold).view(np.uint8)
        )
        if len(rows) == len(raw):  # every event of the batch (rows are sorted, unique)
            keys = raw.keys if isinstance(raw.keys, JoinedKeys) else list(raw.keys)
            ids = dec.event_ids
        else:
            idx = rows.tolist()
            keys, ids = [raw.keys[i] for i in idx], [dec.event_ids[i] for i in idx]
        feats = None
        if self.include_features:  # the version's own column names, the matrix it scored
            feats = Features(spec.columns, dec.features[rows])
        values = self._encoder(spec.version).encode(
            ids,
            keys,
            spec.name,
            spec.version,
            scores,
            o.score_index,
            labels,
            dec.event_time_ms[rows],
            now_ms,
            feats,
            outlier,
        )
        # Lineage, the same on every record of a block: model, version, batch and writer
        # schema id, packed in one header (streamproc.lineage: each header costs the client
        # per record). The input's partition and offset are not repeated: event_id names it.
        sids = dec.schema_ids[rows]
        if not len(sids):
            return
        groups: list[tuple[int, list[int] | None]] = [(int(sids[0]), None)]
        if not (sids == sids[0]).all():  # several writer schemas: a block per schema id
            groups = [(s, np.flatnonzero(sids == s).tolist()) for s in np.unique(sids).tolist()]
        for sid, idx in groups:
            header = [(lineage.HEADER, lineage.encode(spec.name, spec.version, raw.batch_id, sid))]
            if idx is None:
                out.blocks.append(RecordBlock(topic, keys, values, header))
            else:
                out.blocks.append(
                    RecordBlock(topic, [keys[i] for i in idx], [values[i] for i in idx], header)
                )

    def _dead_letters(
        self,
        raw: RawBatch,
        dec: DecodedBatch,
        errors: npt.NDArray[np.uint8],
        infer_error: str,
        now_ms: int,
        out: Outputs,
    ) -> dict[str, int]:
        bad = np.flatnonzero(errors != 0)
        rejects: dict[str, int] = {}
        for i in bad:
            code = int(errors[i])
            reason = _REASON_NAMES.get(code, str(code))
            rejects[reason] = rejects.get(reason, 0) + 1
            detail = infer_error if code == ReasonCode.INFERENCE_FAILED else dec.details[i]
            sid = int(dec.schema_ids[i])
            hdrs = raw.headers[int(i)] or []
            rejected = records.Rejected(reason, code, detail, raw.topic, int(raw.partitions[i]),
                                        int(raw.offsets[i]), sid if sid >= 0 else None,
                                        raw.keys[i], raw.values[i], hdrs)  # fmt: skip
            self._dead_letter(out, now_ms, rejected)
        return rejects

    def _label_dead_letters(self, now_ms: int, out: Outputs) -> dict[str, int]:
        """Dead letters for the feedback records that were not readable labels."""
        rejects: dict[str, int] = {}
        if self.labels is None:
            return rejects
        for r in self.labels.drain_rejected():
            rejects[r.reason.name] = rejects.get(r.reason.name, 0) + 1
            rejected = records.Rejected(r.reason.name, int(r.reason), r.detail, r.topic,
                                        r.partition, r.offset, r.schema_id, r.key, r.value,
                                        r.headers)  # fmt: skip
            self._dead_letter(out, now_ms, rejected)
        return rejects

    def _dead_letter(self, out: Outputs, now_ms: int, rejected: records.Rejected) -> None:
        rec = records.dead_letter(rejected, topic=self.topics.dlq, schema_id=self.ids.dead_letter,
                                  processor=self.processor_id, now_ms=now_ms,
                                  redactor=self.redactor)  # fmt: skip
        out.records.append(rec)
        out.n_dead_letters += 1

    def _alert(self, alert: Alert, now_ms: int, out: Outputs) -> None:
        if not self.router.routes(alert):
            return
        spec = self.scorer.primary
        a = alert.stamped(model_name=spec.name, model_version=spec.version, time_ms=now_ms,
                          alert_id=alert.alert_id or uuid.uuid4().hex)  # fmt: skip
        out.records.append(records.alert(a, topic=self.topics.alerts, schema_id=self.ids.alert))
        self.router.notify(a)
        self.sensor.on_alert(str(a.type), str(a.severity), a.feature, a.state == AlertState.FIRING)

    def _snapshot(self, now_ms: int) -> OutRecord:
        return records.metrics_snapshot(
            self.counters, topic=self.topics.metrics, schema_id=self.ids.metrics,
            processor=self.processor_id, pipeline=self.pipeline, spec=self.scorer.primary,
            now_ms=now_ms,
        )  # fmt: skip


def _pick(
    values: npt.NDArray[np.float64] | None, sel: npt.NDArray[np.intp]
) -> npt.NDArray[np.float64] | None:
    """``values[sel]``; no copy when ``sel`` takes them all in order (one version)."""
    if values is None or len(sel) == len(values):
        return values
    return values[sel]
