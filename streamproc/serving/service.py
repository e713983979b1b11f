"""The serving core, free of any web framework: input validation with the pipeline's
reason codes, the batcher, scoring in the worker thread, and what each batch feeds (the
sensor, the drift monitor, the alert router, the cache).

Two kinds of input reach it:

- tensors (the Open Inference Protocol): a float matrix of the model's columns, checked
  column by column against the model's input rules (:func:`check_matrix`);
- records (JSON objects of the input schema): each turned into a row by the same feature
  plan the decoders use (:func:`streamproc.codecs.features.extract_row`).

A row that breaks a rule rejects its request (HTTP 400) with the :class:`ReasonCode` of
each bad row; nothing of a rejected request is scored.

Alerts (the drift monitor's on HTTP rows, the rollout guard's rollbacks) go where a stream
batch's go: the log, the webhook router, the sensor, and the :data:`AlertSink` the service
is given (:func:`build_service`: the pipeline's alerts topic, as the processor writes it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamproc.backends.base import Backend
from streamproc.batching import WindowPolicy
from streamproc.codecs.features import check_number
from streamproc.config import PipelineConfig
from streamproc.models.spec import FeatureSpec, ModelSpec
from streamproc.pipeline.alerting import AlertRouter
from streamproc.pipeline.handler import Monitor
from streamproc.pipeline.scoring import Scored, Scorer, SingleScorer
from streamproc.telemetry import BatchStats, Sensor
from streamproc.types import Alert, DecodedBatch, ReasonCode

from .auth import Authenticator
from .batcher import AsyncBatcher, Batch, Scores
from .cache import CachedScorer, PredictionCache

log = logging.getLogger(__name__)

AlertSink = Callable[[Alert], None]
"""Where the service's stamped alerts are written besides the log, the router and the sensor
(:class:`streamproc.serving.alert_sink.AlertPublisher`: the pipeline's alerts topic). It may
raise: the service logs and counts the failure, and the request that raised the alert is
answered as if nothing happened."""


@dataclass(frozen=True)
class Rejection:
    """Why one row (a record, or a tensor row) was refused."""

    index: int
    reason: ReasonCode
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason.name, "reason_code": int(self.reason),
                "detail": self.detail}  # fmt: skip


@dataclass(frozen=True)
class ColumnRules:
    """The model's input rules per column, as arrays (one check per rule for a matrix)."""

    names: list[str]
    lo: npt.NDArray[np.float64]  # -inf where no min
    hi: npt.NDArray[np.float64]  # +inf where no max
    features: list[FeatureSpec | None]  # a value column's feature; None: a symbol's column
    onehot: list[tuple[str, int, int]]  # (field, first column, width)
    index: list[tuple[str, int]]  # (field, column) of index-encoded symbols

    @classmethod
    def of(cls, spec: ModelSpec) -> ColumnRules:
        lo: list[float] = []
        hi: list[float] = []
        feats: list[FeatureSpec | None] = []
        onehot: list[tuple[str, int, int]] = []
        index: list[tuple[str, int]] = []
        for f in spec.inputs:
            width = len(f.columns)
            if f.encoding == "onehot":
                onehot.append((f.field, len(lo), width))
                lo += [0.0] * width
                hi += [1.0] * width
                feats += [None] * width
            elif f.encoding == "index":
                index.append((f.field, len(lo)))
                lo += [0.0]
                hi += [float(len(f.symbols) - 1)]
                feats += [None]
            else:
                lo += [-math.inf if f.min is None else f.min] * width
                hi += [math.inf if f.max is None else f.max] * width
                feats += [f] * width
        return cls(spec.columns, np.array(lo), np.array(hi), feats, onehot, index)


def check_matrix(rules: ColumnRules, x: npt.NDArray[np.float32]) -> list[Rejection]:
    """The rows of ``x`` that break the model's input rules, with the first reason of each,
    column by column, then symbol by symbol: a value column by the decoders' own check
    (NaN/inf: NAN_FEATURE unless the feature allows NaN; below min or above max:
    OUT_OF_RANGE); a symbol's column NaN (NAN_FEATURE) or outside its range
    (OUT_OF_RANGE); a one-hot group that is not one 1 among 0s, or an index that is not a
    whole number (UNKNOWN_ENUM).

    >>> from streamproc.models.spec import FeatureSpec
    >>> spec = ModelSpec(name="m", version="1.0.0", inputs=(FeatureSpec(field="a", min=0),
    ...     FeatureSpec(field="c", encoding="onehot", symbols=("X", "Y"))))
    >>> x = np.array([[1, 1, 0], [-1, 0, 1], [np.nan, 0, 1], [1, 1, 1]], np.float32)
    >>> [(r.index, r.reason.name) for r in check_matrix(ColumnRules.of(spec), x)]
    [(1, 'OUT_OF_RANGE'), (2, 'NAN_FEATURE'), (3, 'UNKNOWN_ENUM')]
    """
    # The common case, every row valid, in a few whole-matrix operations; a row that fails
    # them (or holds a NaN a feature allows) is looked at again, column by column.
    with np.errstate(invalid="ignore"):
        ok = ((x >= rules.lo) & (x <= rules.hi) & np.isfinite(x)).all(axis=1)
    for _, first, width in rules.onehot:  # in [0, 1] already: one 1 and the rest 0
        block = x[:, first : first + width]
        ok &= (block.sum(axis=1) == 1) & (block.max(axis=1) == 1)
    for _, c in rules.index:
        ok &= x[:, c] == np.floor(x[:, c])
    if ok.all():
        return []
    out: list[Rejection] = []
    for i in np.flatnonzero(~ok).tolist():
        why = _why(rules, x[i].astype(np.float64), i)
        if why is not None:
            out.append(why)
    return out


def _why(rules: ColumnRules, row: npt.NDArray[np.float64], i: int) -> Rejection | None:
    for c, v in enumerate(row.tolist()):
        name, f = rules.names[c], rules.features[c]
        if f is not None:
            code, detail = check_number(f, v, name)
            if code:
                return Rejection(i, ReasonCode(code), detail)
        elif math.isnan(v):
            return Rejection(i, ReasonCode.NAN_FEATURE, f"{name}={v} is not a finite number")
        elif not rules.lo[c] <= v <= rules.hi[c]:
            return Rejection(i, ReasonCode.OUT_OF_RANGE,
                             f"{name}={v} is outside [{rules.lo[c]}, {rules.hi[c]}]")  # fmt: skip
    for field, first, width in rules.onehot:
        block = row[first : first + width]
        if not (((block == 0) | (block == 1)).all() and block.sum() == 1):
            detail = f"{field}: one-hot columns {block.tolist()} are not one 1 among 0s"
            return Rejection(i, ReasonCode.UNKNOWN_ENUM, detail)
    for field, c in rules.index:
        if row[c] != math.floor(row[c]):
            return Rejection(i, ReasonCode.UNKNOWN_ENUM, f"{field}={row[c]} is not a symbol index")
    return None  # a NaN, or an infinity, that the feature allows


class RecordReader:
    """JSON records of the model's reader schema -> feature rows, by the decoders' feature
    plan (the same null, min/max, NaN and enum rules, the same reason codes). Only the
    fields the model reads are required; ``id_field`` is echoed when given."""

    def __init__(self, spec: ModelSpec, reader_schema: Mapping[str, Any]) -> None:
        from streamproc.codecs.features import plan_features
        from streamproc.codecs.tree import build

        self.spec = spec
        self.plans = plan_features(spec, build(dict(reader_schema)))

    def read(self, records: Sequence[Any]) -> tuple[npt.NDArray[np.float32], list[Rejection]]:
        from streamproc.codecs.features import extract_row

        n_features = self.spec.n_features
        x = np.zeros((len(records), n_features), np.float32)
        bad: list[Rejection] = []
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                bad.append(Rejection(i, ReasonCode.CORRUPT, "a record must be a JSON object"))
                continue
            try:
                row, code, detail = extract_row(rec, self.plans)
            except KeyError as exc:
                field = exc.args[0] if exc.args else "?"
                bad.append(Rejection(i, ReasonCode.MISSING_FEATURE, f"{field} is absent"))
                continue
            except (TypeError, ValueError) as exc:
                bad.append(Rejection(i, ReasonCode.CORRUPT, f"not a value of the schema: {exc}"))
                continue
            if code:
                bad.append(Rejection(i, ReasonCode(code), detail))
                continue
            x[i] = row
        return x, bad


def _row_versions(scored: Scored) -> list[str]:
    names = [v.version for v in scored.versions]
    return [names[i] for i in scored.version_index.tolist()]


class InferenceService:
    """What the HTTP layer calls: the model's description, validation, the batcher."""

    def __init__(
        self,
        *,
        spec: ModelSpec,
        scorer: Scorer,
        policy: WindowPolicy,
        max_queue_rows: int,
        max_request_rows: int = 4096,
        max_body_bytes: int = 16 * 2**20,
        retry_after_s: int = 1,
        auth: Authenticator | None = None,
        cache: PredictionCache | None = None,
        sensor: Sensor | None = None,
        monitor: Monitor | None = None,
        router: AlertRouter | None = None,
        reader_schema: Mapping[str, Any] | None = None,
        pipeline: str = "",
        registry: Any = None,  # the Prometheus registry /metrics serves (None: no /metrics)
        closers: Sequence[Callable[[], None]] = (),
        alert_sink: AlertSink | None = None,
        drain_every_s: float = 1.0,
    ) -> None:
        self.spec = spec
        self.base_scorer = scorer
        self.cache = cache
        self.scorer: Scorer = CachedScorer(scorer, cache) if cache is not None else scorer
        self.auth = auth or Authenticator.from_settings([], {})
        self.sensor = sensor or Sensor()
        self.monitor = monitor
        self.router = router
        self.alert_sink = alert_sink
        self.alerts_undelivered = 0
        self.pipeline = pipeline
        self.registry = registry
        self.max_request_rows = max_request_rows
        self.max_body_bytes = max_body_bytes
        self.retry_after_s = retry_after_s
        self.rules = ColumnRules.of(spec)
        self.n_features = spec.n_features  # ModelSpec builds its column list on every read
        self.records = RecordReader(spec, reader_schema) if reader_schema is not None else None
        # Idle for drain_every_s, the batcher's thread sends what the rollout guard decided
        # meanwhile (a rollback), as a runner with nothing to read does.
        self.batcher = AsyncBatcher(policy, self._score_batch, max_queue_rows,
                                    idle=self.drain_alerts, idle_s=drain_every_s)  # fmt: skip
        self.closers = list(closers)
        self.ready = False
        self._seq = 0  # rows scored: the monitors' offsets
        self.n_outputs = self._probe_outputs()

    # -- what is served ----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    def versions(self) -> list[str]:
        """The versions loaded now (a rollout: stable and candidate)."""
        from streamproc.pipeline.rollout_scorer import RolloutScorer

        s = self.base_scorer
        if isinstance(s, RolloutScorer):
            return sorted(s.snapshot.backends)
        return [s.primary.version]

    def _backend(self, version: str) -> tuple[ModelSpec, Backend] | None:
        from streamproc.pipeline.rollout_scorer import RolloutScorer

        s = self.base_scorer
        if isinstance(s, RolloutScorer):
            snap = s.snapshot
            if version in snap.backends:
                return snap.specs[version], snap.backends[version]
            return None
        if isinstance(s, SingleScorer) and s.spec.version == version:
            return s.spec, s.backend
        return None

    def _probe_outputs(self) -> int:
        """Columns of the output tensor, from one row of zeros (also warms the backend)."""
        found = self._backend(self.base_scorer.primary.version)
        if found is None:
            return len(self.spec.outputs.labels)
        out = np.asarray(found[1].infer(np.zeros((1, self.spec.n_features), np.float32)))
        return int(out.shape[1]) if out.ndim == 2 else 1

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """On the server's event loop, before the first request."""
        self.batcher.start()
        self.ready = True

    async def close(self) -> None:
        """Answer every accepted request, send the alerts decided since, then stop following
        the control topic and flush the alerts (the closers)."""
        self.ready = False
        await self.batcher.close()
        await asyncio.to_thread(self.drain_alerts)
        for close in self.closers:
            try:
                close()
            except Exception as exc:  # closing the rest matters more than one failure
                log.warning("closing the service: %s", exc)

    # -- scoring (the worker thread) -------------------------------------------------------

    def _score_batch(self, batch: Batch) -> Scores:
        t0 = time.perf_counter()
        x = batch.features()
        keys = batch.keys()
        pinned = [(r, a, b) for r, a, b in batch.pieces if r.version is not None]
        if not pinned:
            scored = self.scorer.score(x, keys)
            scores, versions = scored.scores, _row_versions(scored)
        else:
            scores, versions = self._score_pinned(batch, x, keys)
        t1 = time.perf_counter()
        self._report(batch, x, scores, versions, t1 - t0)
        return Scores(scores, versions)

    def _score_pinned(
        self, batch: Batch, x: npt.NDArray[np.float32], keys: list[bytes | None]
    ) -> tuple[npt.NDArray[np.float32], list[str]]:
        """A batch where some requests named their version: those rows go to that version's
        backend (through the cache), the others through the scorer (the rollout's routing)."""
        n = len(x)
        named = np.zeros(n, np.bool_)
        by_version: dict[str, list[int]] = {}
        at = 0
        for r, a, b in batch.pieces:
            if r.version is not None:
                named[at : at + b - a] = True
                by_version.setdefault(r.version, []).extend(range(at, at + b - a))
            at += b - a
        versions = [""] * n
        parts: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]] = []
        routed = np.flatnonzero(~named)
        if len(routed):
            scored = self.scorer.score(x[routed], [keys[i] for i in routed.tolist()])
            parts.append((routed, scored.scores))
            for i, v in zip(routed.tolist(), _row_versions(scored), strict=True):
                versions[i] = v
        for version, idx in by_version.items():
            rows = np.asarray(idx, np.intp)
            found = self._backend(version)
            if found is None:
                raise LookupError(f"{self.name} {version} is no longer loaded")
            spec, backend = found
            xv = x[rows]
            out = self._cached_infer(spec, backend, xv)
            parts.append((rows, out))
            for i in idx:
                versions[i] = version
        width = max(p[1].shape[1] for p in parts)
        scores = np.zeros((n, width), np.float32)
        for rows, out in parts:
            scores[rows] = out
        return scores, versions

    def _cached_infer(
        self, spec: ModelSpec, backend: Backend, x: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        cache = self.cache
        if cache is None:
            return np.asarray(backend.infer(x), np.float32)
        names = [spec.version] * len(x)
        hits = cache.get_many(spec.name, names, x)
        miss = [i for i, h in enumerate(hits) if h is None]
        out = np.zeros((len(x), self.n_outputs), np.float32)
        if miss:
            m = np.asarray(miss, np.intp)
            scored = np.asarray(backend.infer(x[m]), np.float32)
            cache.put_many(spec.name, names[: len(miss)], x[m], scored)
            out[m] = scored
        for i, h in enumerate(hits):
            if h is not None:
                out[i] = h
        return out

    def _report(
        self,
        batch: Batch,
        x: npt.NDArray[np.float32],
        scores: npt.NDArray[np.float32],
        versions: list[str],
        infer_s: float,
    ) -> None:
        """The batch's metrics, drift and alerts, as a stream batch reports them."""
        n = len(x)
        now_s = time.perf_counter()
        latencies = np.empty(n, np.float64)
        at = 0
        for r, a, b in batch.pieces:
            latencies[at : at + b - a] = (now_s - r.arrived_s) * 1000.0
            at += b - a
        by_version: dict[str, int] = {}
        for v in versions:
            by_version[v] = by_version.get(v, 0) + 1
        primary = self.base_scorer.primary
        self.sensor.on_batch(BatchStats(
            model=primary.name, version=primary.version, backend=self.base_scorer.backend_name,
            size=n, predictions=n, rejects={}, release=batch.reason.value, wait_ms=batch.wait_ms,
            stage_s={"infer": infer_s}, latencies_ms=latencies, by_version=by_version,
        ))  # fmt: skip
        alerts: list[Alert] = []
        if self.monitor is not None:
            now_ms = int(time.time() * 1000)
            decoded = DecodedBatch(
                features=x, event_ids=[""] * n, event_time_ms=np.full(n, now_ms, np.int64),
                errors=np.zeros(n, np.uint8), details=[""] * n,
                schema_ids=np.full(n, -1, np.int32),
            )  # fmt: skip
            offsets = np.arange(self._seq, self._seq + n, dtype=np.int64)
            split = versions if len(by_version) > 1 else None  # a rollout: who scored what
            ok = np.arange(n, dtype=np.intp)
            try:
                alerts += self.monitor.observe(decoded, ok, scores, offsets, {}, split)
            except Exception as exc:  # monitoring never fails a request
                log.warning("drift monitor failed on an HTTP batch: %s", exc)
        self._seq += n
        alerts += self.base_scorer.drain_alerts()
        for alert in alerts:
            self._alert(alert)

    def drain_alerts(self) -> None:
        """Send the rollout guard's alerts decided since the last batch (a rollback)."""
        for alert in self.base_scorer.drain_alerts():
            self._alert(alert)

    def _alert(self, alert: Alert) -> None:
        primary = self.base_scorer.primary
        a = alert.stamped(model_name=primary.name, model_version=primary.version,
                          time_ms=int(time.time() * 1000), alert_id=uuid.uuid4().hex)  # fmt: skip
        if self.router is not None and not self.router.routes(a):
            return
        log.warning("alert %s %s %s: %s", a.type, a.state, a.feature or "", a.message)
        if self.alert_sink is not None:
            try:
                self.alert_sink(a)
            except Exception as exc:  # an alert never fails the request that raised it
                self.alerts_undelivered += 1
                self.sensor.on_alert_undelivered(str(a.type))
                log.error("alert %s %s not written to the alerts topic: %s", a.type,
                          a.alert_id, exc)  # fmt: skip
        if self.router is not None:
            self.router.notify(a)
        self.sensor.on_alert(str(a.type), str(a.severity), a.feature, a.state == "FIRING")

    def rejected(self, rejections: Sequence[Rejection]) -> None:
        """Count refused rows as the stream counts dead letters (by reason)."""
        counts: dict[str, int] = {}
        for r in rejections:
            counts[r.reason.name] = counts.get(r.reason.name, 0) + 1
        primary = self.base_scorer.primary
        self.sensor.on_batch(BatchStats(
            model=primary.name, version=primary.version, backend=self.base_scorer.backend_name,
            size=len(rejections), predictions=0, rejects=counts, release="size", wait_ms=0.0,
            stage_s={},
        ))  # fmt: skip


def ensure_control_topics(cfg: PipelineConfig) -> None:
    """The control topic and its audit and replicas topics, as ``run`` creates them: a
    server started before any processor still publishes the configured version."""
    from streamproc.kafka.topics import ensure_pipeline_topics

    ensure_pipeline_topics(cfg, kinds={"control"})


def build_service(
    cfg: PipelineConfig,
    *,
    follow_control: bool = True,
    scorer: Scorer | None = None,
    env: Mapping[str, str] | None = None,
    instance: str = "",
    alert_sink: AlertSink | None = None,
) -> InferenceService:
    """The service of a pipeline: its model (following the control topic's deployment of it
    unless ``follow_control`` is False or a ``scorer`` is given), its drift monitor, alert
    routing, metrics, the ``serving:`` section's tenants and cache.

    Its alerts also go to ``alert_sink``; by default, when ``follow_control`` (Kafka in use),
    to the pipeline's alerts topic as ``Alert`` records, as the processor writes them (the
    producer is flushed and closed with the service). With ``follow_control=False`` (no
    Kafka) and no sink they go to the log, the webhook and the metrics only."""
    from streamproc.models.spec import load_model_spec
    from streamproc.pipeline.app import reader_schema
    from streamproc.pipeline.features import require_stateless
    from streamproc.pipeline.monitoring import (
        StreamMonitor,
        VersionedMonitor,
        build_monitor,
        load_profile,
    )
    from streamproc.telemetry.prometheus import PrometheusSensor

    s = cfg.serving
    auth = Authenticator.from_settings(s.tenants, env)  # a missing key fails before loading
    spec = load_model_spec(cfg.model)
    require_stateless(spec, "streamproc serve")
    closers: list[Callable[[], None]] = []
    drain_every_s = 1.0  # idle, how often the rollout guard's alerts are looked for
    if scorer is None:
        if follow_control:
            from streamproc.pipeline.rollout_scorer import build_rollout_scorer, live_guard_settings

            ensure_control_topics(cfg)
            guardrails, every = live_guard_settings(cfg.rollout)
            drain_every_s = max(0.05, min(drain_every_s, every))  # never a busy loop
            rollout = build_rollout_scorer(
                cfg.kafka, cfg.topics.control, cfg.model, guardrails=guardrails,
                decide_interval_s=every, pipeline=cfg.name,
                instance=instance or f"serve-{socket.gethostname()}",
            )  # fmt: skip
            closers.append(rollout.close)
            scorer = rollout
        else:
            from streamproc.backends.select import load_backend

            scorer = SingleScorer(spec, load_backend(spec))
    if alert_sink is None and follow_control:
        from streamproc.serving.alert_sink import AlertPublisher

        publisher = AlertPublisher.for_pipeline(cfg)
        closers.append(publisher.close)  # flushes the queued alerts
        alert_sink = publisher
    monitor: Monitor | None = build_monitor(spec, cfg.drift)
    from streamproc.pipeline.rollout_scorer import RolloutScorer

    if isinstance(monitor, StreamMonitor) and isinstance(scorer, RolloutScorer):
        drift, rollout_scorer = cfg.drift, scorer

        def monitor_for(version: ModelSpec) -> StreamMonitor:
            return StreamMonitor(version, drift, load_profile(version))

        monitor = VersionedMonitor(monitor, lambda: rollout_scorer.primary, monitor_for)
    prom = PrometheusSensor(pipeline=cfg.name)
    prom.on_model(scorer.primary.name, scorer.primary.version, scorer.backend_name,
                  scorer.device)  # fmt: skip
    b = s.batching or cfg.batching
    policy = WindowPolicy(b.max_batch_size, b.max_wait_ms, b.max_event_age_ms)
    return InferenceService(
        spec=spec, scorer=scorer, policy=policy, max_queue_rows=s.max_queue_rows,
        max_request_rows=s.max_request_rows, max_body_bytes=s.max_body_bytes,
        retry_after_s=s.retry_after_s, auth=auth,
        cache=PredictionCache.from_settings(s.cache), sensor=prom, monitor=monitor,
        router=AlertRouter(cfg.alerts), reader_schema=reader_schema(spec), pipeline=cfg.name,
        registry=prom.registry, closers=closers, alert_sink=alert_sink,
        drain_every_s=drain_every_s,
    )  # fmt: skip
