"""The insight package wired to the batch handler: outliers, probing and explanations.

:class:`InsightMonitor` implements :class:`~streamproc.pipeline.handler.Monitor` around the
drift monitor (whose alerts it passes on). The handler gives a monitor no record keys, so
the scorer is wrapped in a :class:`KeyTap`, which keeps the keys and the :class:`Scored` of
the batch whose scores were just collected; :meth:`BatchHandler.finish` collects them right
before it calls the monitor, on the same thread, so the two always belong to one batch.

With ``insight.outliers`` on, the monitor is also the handler's
:class:`~streamproc.pipeline.handler.RowScores` (:func:`row_scores`): the handler asks it for
the batch's outlier scores before encoding, so each prediction carries its ``outlier_score``,
and :meth:`InsightMonitor.observe` feeds the outlier-share alert those same scores.

Explanations are a side output: the :class:`~streamproc.insight.explain.ExplanationWorker`
produces them to their topic through a producer of its own, outside the pipeline's
transactions, so they are at most once (a crash loses what was queued; a replay may
explain other events).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streamproc.config import (
    ExplanationSettings,
    InsightSettings,
    KafkaSettings,
    PipelineConfig,
    RegistrySettings,
)
from streamproc.drift.profile import ReferenceProfile
from streamproc.errors import ConfigError, DependencyMissingError, ModelError
from streamproc.insight.explain import (
    DeepShap,
    Explainer,
    ExplanationWorker,
    IntegratedGradients,
    KernelShap,
    Layer,
    SamplePolicy,
    background_from_profile,
)
from streamproc.insight.outliers import OutlierRateMonitor, OutlierScorer
from streamproc.insight.probing import ProbingDetector
from streamproc.insight.process import ExplanationProcess, Explanations
from streamproc.models.spec import ModelSpec
from streamproc.personal import Redactor
from streamproc.telemetry import Sensor
from streamproc.types import Alert, DecodedBatch

from .handler import Monitor, NullMonitor, RowScores
from .monitoring import load_profile
from .scoring import Scored, Scorer

log = logging.getLogger(__name__)


class KeyTap(Scorer):
    """A scorer that remembers the keys and scores of the batch it finished last."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.last: tuple[Sequence[bytes | None], Scored] | None = None

    @property
    def primary(self) -> ModelSpec:
        return self.inner.primary

    @property
    def backend_name(self) -> str:
        return self.inner.backend_name

    @property
    def device(self) -> str:
        return self.inner.device

    @property
    def asynchronous(self) -> bool:
        return self.inner.asynchronous

    def score(self, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]) -> Scored:
        return self.start(features, keys)()

    def start(
        self, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]
    ) -> Callable[[], Scored]:
        finish = self.inner.start(features, keys)

        def done() -> Scored:
            self.last = None
            scored = finish()
            self.last = (keys, scored)
            return scored

        return done

    def drain_alerts(self) -> list[Alert]:
        return self.inner.drain_alerts()

    def route(self, keys: Sequence[bytes | None]) -> list[ModelSpec]:
        return self.inner.route(keys)

    def take(self) -> tuple[Sequence[bytes | None], Scored] | None:
        last, self.last = self.last, None
        return last


class InsightMonitor(Monitor, RowScores):
    """Outlier scores and their share, probing keys, and explanation requests per batch, on
    top of ``inner`` (the drift monitor)."""

    def __init__(
        self,
        inner: Monitor,
        tap: KeyTap,
        settings: InsightSettings,
        *,
        profile_for: Callable[[ModelSpec], ReferenceProfile | None] = load_profile,
        worker: Explanations | None = None,
        sensor: Sensor | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.inner = inner
        self.tap = tap
        self.settings = settings
        self.profile_for = profile_for
        self.worker = worker
        self.sensor = sensor or Sensor()
        self.redactor = redactor
        e = settings.explanations
        self.policy = SamplePolicy(e.share, e.min_score)
        self._keys = {k.encode() for k in e.keys}
        self.specs: dict[str, ModelSpec] = {}
        self._version = ""
        self.outliers: OutlierRateMonitor | None = None
        self.probing: ProbingDetector | None = None
        self.last_outlier_scores: npt.NDArray[np.float64] = np.zeros(0)
        self._written: npt.NDArray[np.float64] | None = None  # by scores(), for observe()

    def idle(self) -> None:
        self.inner.idle()
        if self.worker is not None:
            self.worker.flush_due()

    def _follow(self, spec: ModelSpec) -> None:
        """(Re)build the per-version state against ``spec``'s reference profile."""
        if spec.version == self._version:
            return
        self._version = spec.version
        s = self.settings
        profile = self.profile_for(spec) if (s.outliers.enabled or s.probing.enabled) else None
        if (s.outliers.enabled or s.probing.enabled) and profile is None:
            raise ConfigError(
                f"insight outliers / probing need the reference profile of {spec.name} "
                f"{spec.version}: run `streamproc models profile {spec.name} {spec.version}`"
            )
        self.outliers = self.probing = None
        if profile is not None and s.outliers.enabled:
            o = s.outliers
            arl = 1e6 / o.false_alarms_per_million
            self.outliers = OutlierRateMonitor(OutlierScorer(profile, quantile=o.quantile),
                                               arl=arl, ratio=o.alert_ratio,
                                               recovery=o.recovery_events)  # fmt: skip
        if profile is not None and s.probing.enabled:
            p = s.probing
            red = self.redactor

            def show(key: bytes) -> str:
                shown = red.key(key) if red is not None else key
                return (shown or b"").decode("utf-8", "replace")

            self.probing = ProbingDetector(
                [c.median for c in profile.columns], [c.scale for c in profile.columns],
                threshold=spec.outputs.threshold, band=p.band, radius=p.radius,
                horizon=p.horizon, min_suspicious=p.min_suspicious, max_keys=p.max_keys,
                show_key=show,
            )  # fmt: skip

    def scores(
        self, features: npt.NDArray[np.float32], spec: ModelSpec
    ) -> npt.NDArray[np.float64] | None:
        """The outlier scores of this batch's scored rows against ``spec``'s (the stable
        version's) reference, kept for :meth:`observe`; None with outliers off."""
        self._written = None
        self._follow(spec)
        if self.outliers is None:
            return None
        self._written = self.outliers.scorer.score(features)
        return self._written

    def request(self, event_ids: Sequence[str]) -> None:
        """Explain these events when they pass (explanations on request)."""
        self.policy.request(event_ids)

    def observe(
        self,
        decoded: DecodedBatch,
        ok_rows: npt.NDArray[np.intp],
        scores: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        rejects: dict[str, int],
        versions: Sequence[str] | None = None,
    ) -> list[Alert]:
        alerts = self.inner.observe(decoded, ok_rows, scores, offsets, rejects, versions)
        taken = self.tap.take()
        written, self._written = self._written, None
        if not len(ok_rows) or not scores.size or taken is None:
            return alerts
        keys, scored = taken
        for v in scored.versions:
            self.specs[v.version] = v
        spec = self.tap.primary
        self._follow(spec)
        if len(ok_rows) == len(decoded):
            x, off, ids = decoded.features, offsets, decoded.event_ids
        else:
            x, off = decoded.features[ok_rows], offsets[ok_rows]
            ids = [decoded.event_ids[i] for i in ok_rows.tolist()]
        s = scores[:, spec.outputs.score_index]
        if self.outliers is not None:
            # The scores the predictions carry, where the handler asked for them (row_scores)
            o = written if written is not None and len(written) == len(x) else None
            if o is None:
                o = self.outliers.scorer.score(x)
            self.last_outlier_scores = o
            alerts += self.outliers.update(o, off)
        if self.probing is not None and len(keys) == len(s):
            alerts += self.probing.update(keys, x, s, off)
        if self.worker is not None:
            self._explain(ids, keys, x, s, versions, spec)
        return alerts

    def _explain(
        self,
        ids: Sequence[str],
        keys: Sequence[bytes | None],
        x: npt.NDArray[np.float32],
        s: npt.NDArray[np.float32],
        versions: Sequence[str] | None,
        spec: ModelSpec,
    ) -> None:
        assert self.worker is not None
        rows = self.policy.pick(ids, s)
        if self._keys and len(keys) == len(s):
            extra = [i for i, k in enumerate(keys) if k in self._keys]
            rows = np.union1d(rows, np.asarray(extra, dtype=np.intp)).astype(np.intp)
        if len(rows):  # the sampled rows alone are copied, and only those the queue takes
            self.worker.submit_rows(ids, versions if versions is not None else spec.version,
                                    x, rows)  # fmt: skip
        c = self.worker.counts
        self.sensor.on_gauge("streamproc_explanations_dropped", float(c.dropped), {})
        self.sensor.on_gauge("streamproc_explanations_sent", float(c.explained), {})
        self.sensor.on_gauge("streamproc_explanations_failed", float(c.failed), {})


def chain_of(spec: ModelSpec) -> list[Layer]:
    """The model's layers as arrays, for DeepSHAP: a chain graph the torch backend rebuilds
    (the ``torch`` extra); DependencyMissingError or ModelError where there is none."""
    from streamproc.backends.torch_backend import chain_layers, load_module

    return chain_layers(load_module(spec))


def explainer_factory(
    settings: InsightSettings,
    specs: dict[str, ModelSpec],
    profile_for: Callable[[ModelSpec], ReferenceProfile | None] = load_profile,
    load: Callable[[ModelSpec], Any] | None = None,
) -> Callable[[str], Explainer]:
    """``version -> explainer``, built on first use (on the worker's thread) and cached.
    ``load`` gives a version's inference function (default: its own backend instance of
    ``settings.explanations.backend``)."""
    e = settings.explanations
    cache: dict[str, Explainer] = {}

    def default_load(spec: ModelSpec) -> Any:
        from streamproc.backends.select import load_backend

        return load_backend(spec, prefer=[e.backend]).infer

    def build(version: str) -> Explainer:
        got = cache.get(version)
        if got is not None:
            return got
        spec = specs[version]
        profile = profile_for(spec)
        if profile is None:
            raise ConfigError(f"no reference profile for {spec.name} {version}: no background")
        bg = background_from_profile(profile, k=e.background_rows)
        index = spec.outputs.score_index
        ex: Explainer
        if e.method == "integrated_gradients":
            from streamproc.backends.torch_backend import load_module

            ex = IntegratedGradients(load_module(spec), bg.mean(axis=0), index)
        elif e.method in ("deep_shap", "auto"):
            try:
                ex = DeepShap(chain_of(spec), bg, index)
            except (DependencyMissingError, ModelError) as exc:
                if e.method == "deep_shap":
                    raise
                log.info("explaining %s %s with Kernel SHAP: no DeepSHAP (%s)", spec.name,
                         version, exc)  # fmt: skip
                ex = KernelShap((load or default_load)(spec), bg, index, samples=e.samples)
        else:
            ex = KernelShap((load or default_load)(spec), bg, index, samples=e.samples)
        cache[version] = ex
        return ex

    return build


def explanation_isolation(e: ExplanationSettings) -> Literal["process", "thread"]:
    """``e.isolation``, except in a daemonic process (a ``score --workers N`` worker), which
    may not start children: there the explainer runs on a thread."""
    if e.isolation == "process" and mp.current_process().daemon:
        log.info("explanations on a thread: a daemonic process cannot start the explainer's")
        return "thread"
    return e.isolation


@dataclass(frozen=True)
class KafkaExplanationSink:
    """Opens the explanations' producer (and its closer) where the worker runs: in the
    explanation process, so it pickles as this configuration, not as a client."""

    kafka: KafkaSettings
    registry: RegistrySettings
    topic: str

    def __call__(self) -> tuple[Callable[[list[dict[str, Any]]], None], Callable[[], None]]:
        from streamproc.kafka.clients import EventProducer

        producer = EventProducer(self.kafka, self.registry, self.topic, schema="Explanation")

        def sink(records: list[dict[str, Any]]) -> None:
            for r in records:
                producer.send(r, key=r["event_id"])
            producer.producer.poll(0)  # serve delivery reports

        return sink, producer.close


def row_scores(monitor: Monitor | None) -> RowScores | None:
    """What writes each prediction's ``outlier_score``: the insight monitor where
    ``insight.outliers`` is on (the handler's ``row_scores``), else None (the field is null)."""
    if isinstance(monitor, InsightMonitor) and monitor.settings.outliers.enabled:
        return monitor
    return None


def wire_insight(
    cfg: PipelineConfig,
    scorer: Scorer,
    monitor: Monitor | None,
    sensor: Sensor,
    closers: list[Callable[[], None]],
    *,
    redactor: Redactor | None = None,
) -> tuple[Scorer, Monitor | None]:
    """The scorer and monitor to build the handler with: unchanged where ``insight:`` turns
    nothing on; else the scorer wrapped in a :class:`KeyTap` and an :class:`InsightMonitor`
    around ``monitor``, its explanation worker producing to its topic."""
    s = cfg.insight
    if not (s.outliers.enabled or s.probing.enabled or s.explanations.enabled):
        return scorer, monitor
    tap = KeyTap(scorer)
    worker: Explanations | None = None
    if s.explanations.enabled:
        from streamproc.kafka.admin import Admin

        topic = cfg.explanations_topic
        Admin(cfg.kafka).ensure_topics([topic], partitions=cfg.topics.partitions)
        specs: dict[str, ModelSpec] = {scorer.primary.version: scorer.primary}
        e = s.explanations
        sinks = KafkaExplanationSink(cfg.kafka, cfg.registry, topic)
        if explanation_isolation(e) == "process":
            worker = ExplanationProcess(
                functools.partial(explainer_factory, s), specs, scorer.primary.columns, sinks,
                queue_size=e.queue_size, batch=e.batch, model_name=scorer.primary.name,
                max_cpu_share=e.max_cpu_share, nice=e.nice, linger_ms=e.linger_ms,
            ).start()  # fmt: skip
            proc = worker
            # The child starts an interpreter and loads its model (torch, for DeepSHAP):
            # at a prompt stop, seconds may pass before it has explained what it was sent.
            closers.append(lambda: proc.close(timeout_s=60.0))
        else:
            sink, close_sink = sinks()
            thread = ExplanationWorker(
                explainer_factory(s, specs), scorer.primary.columns, sink,
                queue_size=e.queue_size, batch=e.batch, model_name=scorer.primary.name,
                max_cpu_share=e.max_cpu_share, nice=e.nice,
            ).start()  # fmt: skip
            worker = thread

            def close() -> None:
                thread.close()
                close_sink()

            closers.append(close)
    mon = InsightMonitor(monitor or NullMonitor(), tap, s, worker=worker, sensor=sensor,
                         redactor=redactor)  # fmt: skip
    if worker is not None:
        mon.specs = specs  # the worker reads the versions the monitor meets
    return tap, mon
