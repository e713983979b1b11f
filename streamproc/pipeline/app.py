"""Build a running processor from a :class:`~streamproc.config.PipelineConfig`."""

from __future__ import annotations

import gc
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamproc import schemas
from streamproc.backends.nvml import gpu_stats as gpus
from streamproc.batching import WindowPolicy
from streamproc.config import PipelineConfig
from streamproc.errors import ModelError, StreamprocError
from streamproc.features.spec import changelog_topic, repartition_group, repartition_topic
from streamproc.kafka.configuration import consumer_config, producer_config, registry_config
from streamproc.kafka.feedback import FeedbackReader
from streamproc.kafka.registry import Registry
from streamproc.kafka.runner import KafkaRunner, RunnerSettings
from streamproc.models.spec import ModelSpec, load_model_spec
from streamproc.personal import Redactor
from streamproc.telemetry import CountingSensor, Sensor, SensorGroup
from streamproc.telemetry.health import ProcessorReadiness
from streamproc.telemetry.prometheus import PrometheusSensor
from streamproc.types import BatchHandlerLike

from .alerting import AlertRouter
from .features import FeatureStage
from .handler import BatchHandler, Monitor, OutputTopics, SchemaIds
from .insight import row_scores, wire_insight
from .monitoring import StreamMonitor, VersionedMonitor, build_monitor, load_profile
from .scoring import Scorer

if TYPE_CHECKING:  # numba loads with the decoder: only commands that decode pay for it
    from streamproc.codecs.decoder import BatchDecoder

log = logging.getLogger(__name__)


def register_output_schemas(registry: Registry, cfg: PipelineConfig) -> SchemaIds:
    t = cfg.topics
    return SchemaIds(
        prediction=registry.register(
            schemas.subject_for(t.predictions), schemas.schema_text("Prediction")
        ),
        dead_letter=registry.register(
            schemas.subject_for(t.dlq), schemas.schema_text("DeadLetter")
        ),
        alert=registry.register(schemas.subject_for(t.alerts), schemas.schema_text("Alert")),
        metrics=registry.register(
            schemas.subject_for(t.metrics), schemas.schema_text("MetricsSnapshot")
        ),
    )


def input_schema_text(cfg: PipelineConfig) -> str:
    """The input subject's schema: the one the model reads (its ``reader_schema``; a
    packaged schema of that name, such as ``Transaction`` or ``Payment``, as packaged),
    else ``Transaction``, the reference event."""
    try:
        path = load_model_spec(cfg.model).reader_schema_path
    except StreamprocError:
        return schemas.schema_text("Transaction")
    if path is None:
        return schemas.schema_text("Transaction")
    try:
        return schemas.schema_text(path.stem)
    except OSError:
        return path.read_text() if path.exists() else schemas.schema_text("Transaction")


def apply_schemas(registry: Registry, cfg: PipelineConfig) -> dict[str, int]:
    """Register the input schema (BACKWARD compatible) and every output schema."""
    subject = schemas.subject_for(cfg.topics.input)
    sid = registry.register(subject, input_schema_text(cfg))
    registry.set_compatibility(subject, "BACKWARD")
    ids = register_output_schemas(registry, cfg)
    shadow = registry.register(schemas.subject_for(cfg.topics.shadow),
                               schemas.schema_text("Prediction"))  # fmt: skip
    out = {
        subject: sid,
        schemas.subject_for(cfg.topics.predictions): ids.prediction,
        schemas.subject_for(cfg.topics.shadow): shadow,
        schemas.subject_for(cfg.topics.dlq): ids.dead_letter,
        schemas.subject_for(cfg.topics.alerts): ids.alert,
        schemas.subject_for(cfg.topics.metrics): ids.metrics,
    }
    if cfg.topics.feedback:
        feedback = schemas.subject_for(cfg.topics.feedback)
        out[feedback] = registry.register(feedback, schemas.schema_text("Label"))
    return out


def ensure_topics(cfg: PipelineConfig) -> None:
    """Create the pipeline's missing topics as ``topics.policy`` makes them."""
    from streamproc.kafka.topics import ensure_pipeline_topics

    ensure_pipeline_topics(cfg)


def count_tenants(
    cfg: PipelineConfig, handler: BatchHandlerLike, registry: Registry, prom: PrometheusSensor
) -> BatchHandlerLike:
    """``handler``, counting events per tenant when the pipeline names a ``tenant_field``."""
    if not cfg.tenant_field:
        return handler
    from .tenants import TenantCounter, TenantCountingHandler, prometheus_counter

    return TenantCountingHandler(handler, TenantCounter(cfg.tenant_field, registry.schema),
                                 prometheus_counter(prom.registry, cfg.name))  # fmt: skip


def reader_schema(spec: ModelSpec) -> dict[str, Any]:
    import json

    path = spec.reader_schema_path
    if path is not None and path.exists():
        return dict(json.loads(path.read_text()))
    return schemas.schema_dict("Transaction")


@dataclass
class Processor:
    """A wired processor; :meth:`run` blocks until :meth:`stop`."""

    config: PipelineConfig
    runner: KafkaRunner
    handler: BatchHandler
    counters: CountingSensor
    prometheus: PrometheusSensor
    metrics_port: int | None
    closers: list[Callable[[], None]] = field(default_factory=list)  # run on exit of run()
    # Runners ahead of this one, in threads of their own (the repartition stage).
    upstream: list[KafkaRunner] = field(default_factory=list)

    def run(self) -> None:
        errors: list[BaseException] = []
        threads = [self._start(r, errors) for r in self.upstream]
        try:
            self.runner.run()
        finally:
            for r in self.upstream:
                r.request_stop()
            for t in threads:
                t.join()
            for close in self.closers:
                close()
        if errors:
            raise errors[0]

    def _start(self, runner: KafkaRunner, errors: list[BaseException]) -> threading.Thread:
        def target() -> None:
            try:
                runner.run()
            except BaseException as exc:  # stops the processor, raised by run()
                log.exception("the repartition stage failed")
                errors.append(exc)
                self.runner.request_stop()

        t = threading.Thread(target=target, daemon=True, name="repartition")
        t.start()
        return t

    def stop(self) -> None:
        self.runner.request_stop()


def settle_collector(young_threshold: int = 100_000) -> None:
    """Ready Python's cyclic garbage collector for a stream, once the processor is built.

    What exists now (modules, the model, the clients) lives as long as the process: frozen,
    out of the collector's reach, so a collection scans only what the stream allocates (a
    full collection in mid-stream stalls every event in flight). The stream itself
    allocates a tracked ``Message`` per record, and nearly all of them are freed with their
    batch: at the default threshold of 700 the collector still runs hundreds of collections
    per million events; with ``young_threshold`` at 100,000 it runs none, since the batches'
    objects are freed before so many pile up (figures: benchmarks/README.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, 10, 10)


def build_decoder(
    cfg: PipelineConfig, spec: ModelSpec, registry: Registry, sensor: Sensor | None = None
) -> BatchDecoder:
    """The input decoder; a specialised one waits (``decoding.warm_timeout_s``) for the
    kernel of the input subject's latest schema, so the first batches are not interpreted.
    Writer schemas met later are compiled in the background."""
    from streamproc.codecs.decoder import BatchDecoder
    from streamproc.codecs.kernel_cache import Specialiser

    d = cfg.decoding
    specialiser = None
    if d.mode == "specialised":
        specialiser = Specialiser(d.kernel_cache, max_ops=d.max_instructions, background=True)
    decoder = BatchDecoder(
        spec, reader_schema(spec), registry, max_message_bytes=cfg.delivery.max_message_bytes,
        compiled=d.mode != "reference", specialiser=specialiser, sensor=sensor,
    )  # fmt: skip
    if specialiser is None:
        return decoder
    subject = schemas.subject_for(cfg.topics.input)
    try:
        latest = registry.latest_id(subject)
        if latest is not None and decoder.prepare(latest, d.warm_timeout_s):
            log.info("decoder kernel for %s (schema id %d) ready", subject, latest)
    except StreamprocError as exc:  # the first batch meets the registry again, with retries
        log.warning("could not prepare the decoder for %s: %s", subject, exc)
    return decoder


def build_features(
    cfg: PipelineConfig,
    spec: ModelSpec,
    sensor: Sensor,
    closers: list[Callable[[], None]],
    registry: Registry,
    input_topic: str,
) -> FeatureStage | None:
    """The window-store stage of a model with a ``features`` section: its store, and the
    compacted changelog topic behind it (as many partitions as the input)."""
    if spec.features is None:
        return None
    from streamproc.features.factory import open_store
    from streamproc.kafka.changelog import ChangelogReader

    check_feature_fields(spec)
    t = cfg.topics
    topic = changelog_topic(cfg.group_id, spec.name)  # made by ensure_features_topics
    closed_id = None
    if spec.features.closed_topic:  # closed tumbling/hopping windows' aggregates
        closed_id = registry.register(schemas.subject_for(spec.features.closed_topic),
                                      schemas.schema_text("WindowAggregate"))  # fmt: skip
    reader = ChangelogReader(cfg.kafka, topic, input_topic=input_topic, group_id=cfg.group_id)
    closers.append(reader.close)
    return FeatureStage(spec, open_store(spec.features), changelog_topic=topic, source=reader,
                        sensor=sensor, closed_schema_id=closed_id,
                        repartitioned=input_topic != t.input)  # fmt: skip


def build_repartition(
    cfg: PipelineConfig, spec: ModelSpec, registry: Registry, instance: str, txn_id: str
) -> tuple[str, KafkaRunner]:
    """The stage that re-keys the input by the feature key (``features.key`` names event
    fields): the topic it writes, and its runner (see :mod:`.repartition`)."""
    from streamproc.kafka.clients import FramedDecoder

    from .repartition import RepartitionHandler

    assert spec.features is not None
    t = cfg.topics
    topic = repartition_topic(t.input, spec.name)  # made by ensure_features_topics
    eos = cfg.delivery.guarantee == "exactly-once"
    group = repartition_group(cfg.group_id)
    runner = KafkaRunner(
        consumer_conf=consumer_config(cfg.kafka, group, eos, instance_id=f"{instance}.repartition"),
        producer_conf=producer_config(cfg.kafka, f"{txn_id}.repartition" if eos else None),
        settings=RunnerSettings(topic=t.input, exactly_once=eos,
                                flush_timeout_s=cfg.delivery.flush_timeout_s,
                                commit_interval_s=cfg.delivery.commit_interval_ms / 1000.0,
                                max_pending=cfg.delivery.max_pending,
                                registry_retry_initial_s=cfg.registry.retry_initial_ms / 1000.0,
                                registry_retry_max_s=cfg.registry.retry_max_ms / 1000.0),
        handler=RepartitionHandler(FramedDecoder(registry), spec.features.key, topic),
        policy=WindowPolicy(max_size=cfg.batching.max_batch_size,
                            max_wait_ms=cfg.batching.max_wait_ms),
    )  # fmt: skip
    log.info("repartitioning %s by %s into %s", t.input, list(spec.features.key), topic)
    return topic, runner


def check_feature_fields(spec: ModelSpec) -> None:
    """The features' value fields and the time field must be fields of the reader schema
    (the event inputs are checked by the decoder)."""
    from streamproc.codecs import tree as avro_tree
    from streamproc.codecs.features import resolve_path

    assert spec.features is not None
    reader = avro_tree.build(reader_schema(spec))
    for name in [*spec.features.value_fields, *spec.features.key, spec.time_field]:
        if resolve_path(reader, name) is None:
            raise ModelError(f"model {spec.name}: feature field {name!r} is not a field of "
                             f"the reader schema {reader.name}")  # fmt: skip


def build_processor(
    cfg: PipelineConfig,
    *,
    scorer: Scorer | None = None,
    monitor: Monitor | None = None,
    extra_sensor: Sensor | None = None,
) -> Processor:

    instance = cfg.instance_id or socket.gethostname()
    t = cfg.topics
    registry = Registry(registry_config(cfg.registry))
    # Served before the slow steps (topics, schemas, the model) so that /healthz answers while
    # they run and /readyz says which one is missing; the GPUs are read only where it scores.
    ready = ProcessorReadiness(lambda: registry.latest_id(schemas.subject_for(t.input)))
    prom = PrometheusSensor(pipeline=cfg.name, gpu_stats=lambda: gpus() if cuda else [])
    port: int | None = None
    cuda = False
    if cfg.metrics.port is not None:
        port = prom.serve(cfg.metrics.port, cfg.metrics.host, readiness=ready)
        log.info("metrics on http://%s:%d/metrics (/healthz, /readyz)", cfg.metrics.host, port)
    ensure_topics(cfg)
    ids = register_output_schemas(registry, cfg)
    spec = load_model_spec(cfg.model)
    closers: list[Callable[[], None]] = []
    stream_monitor: StreamMonitor | None = None
    feedback = None
    if monitor is None:
        # Labels are read only for the accuracy monitor: with drift off, nobody would take
        # them (or dead-letter the unreadable ones).
        if cfg.topics.feedback and cfg.drift.enabled:
            feedback = FeedbackReader(
                cfg.kafka, registry, cfg.topics.feedback, spec.outputs.labels,
                group_id=f"{cfg.group_id}-labels-{instance}",
            ).start()  # fmt: skip
            closers.append(feedback.stop)
        monitor = stream_monitor = build_monitor(spec, cfg.drift, feedback)
    if scorer is None:  # follow the control topic's deployment of this model
        from .rollout_scorer import build_rollout_scorer, live_guard_settings

        guardrails, every = live_guard_settings(cfg.rollout)
        rollout = build_rollout_scorer(cfg.kafka, t.control, cfg.model,
                                       guardrails=guardrails, decide_interval_s=every,
                                       pipeline=cfg.name, instance=instance)  # fmt: skip
        closers.append(rollout.close)
        scorer = rollout
        if stream_monitor is not None:
            if rollout.guard is not None:  # the guard judges accuracy on labels too
                stream_monitor.on_feedback = rollout.guard.observe_feedback
            drift, labels = cfg.drift, feedback

            def monitor_for(version: ModelSpec) -> StreamMonitor:
                return StreamMonitor(version, drift, load_profile(version), labels)

            # Drift is judged against the reference of the version that is stable now.
            monitor = VersionedMonitor(stream_monitor, lambda: rollout.primary, monitor_for)
    ready.model_loaded(scorer.primary.name, scorer.primary.version)
    cuda = scorer.device.startswith("cuda")
    counters = CountingSensor()
    sensors: list[Sensor] = [counters, prom]
    if extra_sensor is not None:
        sensors.append(extra_sensor)
    sensor = SensorGroup(sensors)
    # a rollout: its stable version's backend and device
    sensor.on_model(spec.name, spec.version, scorer.backend_name, scorer.device)
    eos = cfg.delivery.guarantee == "exactly-once"
    # A stable id per replica: a restarted replica fences its predecessor and aborts the
    # transaction it left open, instead of waiting for the transaction timeout.
    txn_id = cfg.delivery.transactional_id or f"{cfg.group_id}-{instance}"
    source = t.input  # what the processor reads: the input, or its repartition topic
    upstream: list[KafkaRunner] = []
    if spec.features is not None:  # its changelog (and repartition, closed) topics
        from streamproc.kafka.topics import ensure_features_topics

        ensure_features_topics(cfg, spec.name, spec.features)
    if spec.features is not None and spec.features.key:
        source, stage = build_repartition(cfg, spec, registry, instance, txn_id)
        upstream.append(stage)
    features = build_features(cfg, spec, sensor, closers, registry, source)
    decoder = build_decoder(cfg, spec if features is None else features.decoder_spec,
                            registry, sensor)  # fmt: skip
    # The insight: section (outliers, probing, explanations); unchanged where it is all off.
    keys = Redactor.from_settings(cfg.personal_data, reader_schema(spec))  # probing alerts
    scorer, monitor = wire_insight(cfg, scorer, monitor, sensor, closers, redactor=keys)
    handler = BatchHandler(
        decoder=decoder,
        scorer=scorer,
        topics=OutputTopics(t.predictions, t.dlq, t.alerts, t.metrics, t.shadow),
        schema_ids=ids,
        processor_id=instance,
        pipeline=cfg.name,
        sensor=sensor,
        counters=counters,  # fed by the runner once each batch is committed
        monitor=monitor,
        snapshot_interval_s=cfg.metrics.snapshot_interval_s,
        router=AlertRouter(cfg.alerts),
        labels=feedback,  # its unreadable records become dead letters
        redactor=Redactor.from_settings(cfg.personal_data, reader_schema(spec)),
        features=features,
        include_features=cfg.outputs.include_features,
        row_scores=row_scores(monitor),  # insight.outliers: predictions carry outlier_score
    )
    runner = KafkaRunner(
        consumer_conf=consumer_config(cfg.kafka, cfg.group_id, eos, instance_id=instance),
        producer_conf=producer_config(cfg.kafka, txn_id if eos else None),
        settings=RunnerSettings(
            topic=source,
            exactly_once=eos,
            flush_timeout_s=cfg.delivery.flush_timeout_s,
            commit_interval_s=cfg.delivery.commit_interval_ms / 1000.0,
            max_pending=cfg.delivery.max_pending,
            registry_retry_initial_s=cfg.registry.retry_initial_ms / 1000.0,
            registry_retry_max_s=cfg.registry.retry_max_ms / 1000.0,
            use_event_age=cfg.batching.max_event_age_ms is not None,
        ),
        handler=count_tenants(cfg, handler, registry, prom),
        policy=WindowPolicy(
            max_size=cfg.batching.max_batch_size,
            max_wait_ms=cfg.batching.max_wait_ms,
            max_event_age_ms=cfg.batching.max_event_age_ms,
        ),
        sensor=sensor,
    )
    ready.partitions = lambda: runner.assigned_partitions
    closers.append(prom.close)
    return Processor(cfg, runner, handler, counters, prom, port, closers, upstream)
