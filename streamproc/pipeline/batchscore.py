"""Batch and backfill scoring: a bounded input through the live pipeline's batch handler.

``streamproc score`` (streamproc.cli.score) reads a topic between two offsets or two times,
or Avro container files, and writes what the live pipeline would have written for those
events: predictions, dead letters and alerts, made by the same
:class:`~streamproc.pipeline.handler.BatchHandler` (the same decoder, validation, reason
codes, encoder and drift monitors) with the pipeline's model (:class:`SingleScorer`) or the
control topic's deployment (the rollout scorer, routing by key like the stream).

Work is split by *partition* (a topic partition, or one input file): each worker process
scores its partitions one after the other, with its own handler. Every partition has a
progress record (:class:`PartitionProgress`): the next input offset and running counts,
written together with the outputs it covers, so that a restarted job starts after the last
committed batch and nothing is scored twice:

- to a topic: the outputs and the progress record (on the compacted topic
  ``<output>.score-progress``, keyed ``<job>/<partition>``) go in one Kafka transaction per
  chunk (streamproc.kafka.backfill); readers use ``read_committed``;
- to files: each chunk is one part file per kind (written under a temporary name and
  renamed), then the progress file ``_progress/<job>-<partition>.json`` is replaced
  atomically; a part left by a crash after its rename is written again under the same name.

A model with windowed features (``features:`` in its model.yaml) gets the live pipeline's
window stage, with its state kept in memory for the job: before a partition's range (or its
resume point) the job replays that partition's history from its first offset into the state
without scoring it (:meth:`BatchHandler.warm`), so that each event of the range is scored
with the feature values the live pipeline computed, as ``streamproc features backfill``
does. The state is partitioned like the input, so the input must be keyed by the feature
key (a model with ``features.key`` is refused: the live pipeline repartitions its input
first); for files, ``--key-field`` names each record's key. No changelog is written.

Nothing here imports confluent_kafka: the Kafka source and sink are in
streamproc.kafka.backfill.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing as mp
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np

from streamproc import schemas
from streamproc.config import PipelineConfig
from streamproc.errors import ConfigError, DependencyMissingError, StreamprocError
from streamproc.types import Outputs, RawBatch

from .handler import BatchHandler, OutputTopics

log = logging.getLogger(__name__)
# Parquet's names for the part files' codecs (its deflate is GZIP: deflate in gzip framing)
_PARQUET_CODECS = {"deflate": "gzip", "snappy": "snappy", "null": "none"}

ScorerKind = Literal["single", "rollout"]


# -- the handler ---------------------------------------------------------------------------


def output_topics(base: str) -> OutputTopics:
    """Where a score job's outputs go: predictions on ``base``, the rest beside it."""
    return OutputTopics(base, f"{base}.dlq", f"{base}.alerts", f"{base}.metrics",
                        f"{base}.shadow")  # fmt: skip


def build_handler(
    cfg: PipelineConfig,
    topics: OutputTopics,
    *,
    scorer: ScorerKind = "single",
    instance: str = "score",
    history: bool = False,
    framed: bool = True,
) -> tuple[BatchHandler, list[Callable[[], None]]]:
    """The live pipeline's handler for ``cfg`` (decoder, validation, monitors, dead letters
    as :func:`~streamproc.pipeline.app.build_processor` wires them, ``insight:`` included),
    writing to ``topics``.
    Returns it with what to call when done. ``scorer``: the pipeline's model, or the control
    topic's deployment of it (no guard runs: a backfill judges no rollout). ``history``: a
    score job, which replays each partition's history into the window state of a model with
    windowed features; other callers (request-reply, Faust) keep no such state and refuse
    such a model."""
    from streamproc.backends.select import load_backend
    from streamproc.kafka.configuration import registry_config
    from streamproc.kafka.registry import Registry
    from streamproc.models.spec import load_model_spec
    from streamproc.personal import Redactor
    from streamproc.telemetry import CountingSensor, Sensor

    from .alerting import AlertRouter
    from .app import build_decoder, reader_schema, register_output_schemas
    from .features import FeatureStage, require_stateless
    from .insight import row_scores, wire_insight
    from .monitoring import build_monitor
    from .scoring import Scorer, SingleScorer

    registry = Registry(registry_config(cfg.registry))
    # The output subjects are the pipeline's (the same schemas): register them once.
    ids = register_output_schemas(registry, cfg)
    spec = load_model_spec(cfg.model)
    features = None
    if not history:
        require_stateless(spec, "this mode (request-reply, Faust)")
    elif spec.features is not None:
        from streamproc.features.factory import open_store

        if spec.features.key:
            raise ConfigError(
                f"model {spec.name} {spec.version} keys its windowed features by "
                f"{list(spec.features.key)}: score keeps window state per input partition, "
                "so the input must be keyed by the feature key (the live pipeline "
                "repartitions it first); compute the features with `streamproc features "
                "backfill` instead"
            )
        features = FeatureStage(spec, open_store(spec.features), changelog_topic=None)
    closers: list[Callable[[], None]] = []
    the_scorer: Scorer
    if scorer == "rollout":
        from .rollout_scorer import build_rollout_scorer

        rollout = build_rollout_scorer(cfg.kafka, cfg.topics.control, cfg.model,
                                       controller=False, pipeline=cfg.name)  # fmt: skip
        closers.append(rollout.close)
        the_scorer = rollout
    else:
        the_scorer = SingleScorer(spec, load_backend(spec))
    monitor = build_monitor(spec, cfg.drift)
    counters = CountingSensor()
    redactor = Redactor.from_settings(cfg.personal_data, reader_schema(spec))
    # The insight: section as the live pipeline wires it (outlier scores on the predictions,
    # probing alerts, sampled explanations). Explanations go beside this handler's outputs
    # when those are not the pipeline's own topics (a score job's): the live explanations
    # topic is the stream's record.
    ins = cfg.insight
    if ins.explanations.enabled and topics.predictions != cfg.topics.predictions:
        here = ins.explanations.model_copy(update={"topic": f"{topics.predictions}.explanations"})
        cfg = cfg.model_copy(update={"insight": ins.model_copy(update={"explanations": here})})
    the_scorer, watch = wire_insight(cfg, the_scorer, monitor, Sensor(), closers,
                                     redactor=redactor)  # fmt: skip
    handler = BatchHandler(
        decoder=build_decoder(cfg, spec if features is None else features.decoder_spec, registry),
        scorer=the_scorer,
        topics=topics,
        schema_ids=ids,
        processor_id=instance,
        pipeline=cfg.name,
        counters=counters,
        monitor=watch,
        # The metrics topic is the live processors' view: a backfill sends no snapshots
        # (its counts are in its summary). The first batch still makes one: it is dropped.
        snapshot_interval_s=1e12,
        router=AlertRouter(cfg.alerts),
        redactor=redactor,
        features=features,
        include_features=cfg.outputs.include_features,
        row_scores=row_scores(watch),
        # Files hold bare datums: predictions without the header there is no need to cut.
        framed_predictions=framed,
    )
    return handler, closers


# -- progress ------------------------------------------------------------------------------


@dataclass
class PartitionProgress:
    """One partition of a job: where it stands and what it made so far (cumulative over
    restarts). ``next_offset`` is the first input offset not yet covered by written
    outputs; the partition is done when it reaches ``end_offset``."""

    job: str
    source: str  # the topic, or the input file
    partition: int
    start_offset: int
    end_offset: int
    next_offset: int
    read: int = 0
    predictions: int = 0
    dead_letters: int = 0
    alerts: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    parts: int = 0  # file sinks: part files written
    updated_ms: int = 0
    # Windowed features: the partition's first offset, from which its history is replayed
    # into the window state before next_offset; and how many records that took (this run).
    history_offset: int = 0
    history_read: int = 0

    @property
    def done(self) -> bool:
        return self.next_offset >= self.end_offset

    @property
    def key(self) -> str:
        return f"{self.job}/{self.partition}"

    def add(self, raw: RawBatch, out: Outputs, alerts: int) -> None:
        self.read += len(raw)
        self.predictions += out.n_predictions
        self.dead_letters += out.n_dead_letters
        self.alerts += alerts
        if out.stats is not None:
            for reason, n in out.stats.rejects.items():
                self.rejects[reason] = self.rejects.get(reason, 0) + n
        if len(raw):
            self.next_offset = max(self.next_offset, int(raw.offsets.max()) + 1)

    def to_json(self) -> bytes:
        self.updated_ms = time.time_ns() // 1_000_000
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PartitionProgress:
        return cls(**json.loads(data))


# -- sources and sinks -----------------------------------------------------------------------


class Source(Protocol):
    """A bounded, partitioned input: records of ``partition`` from ``start`` to ``end``."""

    name: str

    def batches(self, partition: int, start: int, end: int, size: int) -> Iterator[RawBatch]: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Where outputs go. :meth:`write` takes a batch's outputs; :meth:`commit` makes every
    output written so far durable together with ``progress`` (all or nothing)."""

    def write(self, out: Outputs) -> None: ...

    def commit(self, progress: PartitionProgress) -> None: ...

    def close(self) -> None: ...


def open_source(job: ScoreJob) -> Source:
    if job.files:
        return AvroFileSource(job)
    from streamproc.kafka.backfill import KafkaRangeSource

    return KafkaRangeSource(job.config.kafka, job.topic)


def open_sink(job: ScoreJob, progress: PartitionProgress) -> Sink:
    if job.out_dir is not None:
        return FileSink(job, progress)
    from streamproc.kafka.backfill import KafkaTransactionalSink

    return KafkaTransactionalSink(job, progress.partition)


# -- the job ---------------------------------------------------------------------------------


@dataclass
class ScoreJob:
    """What ``streamproc score`` runs. Exactly one of ``topic`` / ``files`` is the input;
    ``out_topic`` or ``out_dir`` the output."""

    config: PipelineConfig
    name: str
    topic: str | None = None
    files: list[Path] = field(default_factory=list)
    start: str = "beginning"  # --from
    end: str = "end"  # --to
    out_topic: str | None = None
    out_dir: Path | None = None
    out_format: Literal["avro", "parquet"] = "avro"
    out_codec: Literal["deflate", "null", "snappy"] = "deflate"  # part files (Parquet's too)
    key_field: str | None = None  # files: the field whose value is each record's key
    scorer: ScorerKind = "single"
    batch_size: int = 4096
    commit_interval_s: float = 1.0  # at most this long between commits (and at each part)
    part_events: int = 100_000  # file outputs: input events per part file
    workers: int = 1

    @property
    def topics(self) -> OutputTopics:
        base = self.out_topic or (f"{self.topic}.scored" if self.topic else "scored")
        return output_topics(base)

    @property
    def progress_topic(self) -> str:
        return f"{self.topics.predictions}.score-progress"


@dataclass
class Summary:
    job: str
    read: int = 0
    predictions: int = 0
    dead_letters: int = 0
    alerts: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    partitions: dict[int, dict[str, Any]] = field(default_factory=dict)
    resumed: int = 0  # events already scored by an earlier run of the job
    seconds: float = 0.0
    workers: int = 1
    output: str = ""

    @property
    def accounted(self) -> bool:
        return self.read == self.predictions + self.dead_letters

    def as_dict(self) -> dict[str, Any]:
        scored_now = self.read - self.resumed
        return {
            "job": self.job,
            "output": self.output,
            "read": self.read,
            "predictions": self.predictions,
            "dead_letters": self.dead_letters,
            "dead_letters_by_reason": dict(sorted(self.rejects.items())),
            "alerts": self.alerts,
            "accounted": self.accounted,
            "resumed_events": self.resumed,
            "scored_now": scored_now,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(scored_now / self.seconds, 1) if self.seconds > 0 else 0.0,
            "workers": self.workers,
            "partitions": {str(p): v for p, v in sorted(self.partitions.items())},
        }


def plan(job: ScoreJob) -> list[PartitionProgress]:
    """Each partition's progress: the committed one of an earlier run, else a new one over
    the range ``--from`` .. ``--to`` resolves to now."""
    stored = load_progress(job)
    first: dict[int, int] = {}  # each partition's first offset (window state's history)
    if job.files:
        ranges = {i: (0, count_records(f)) for i, f in enumerate(job.files)}
        names = {i: str(f) for i, f in enumerate(job.files)}
    else:
        from streamproc.kafka.backfill import resolve_range

        assert job.topic is not None
        ranges = resolve_range(job.config.kafka, job.topic, job.start, job.end)
        names = dict.fromkeys(ranges, job.topic)
        if job.start != "beginning":
            whole = resolve_range(job.config.kafka, job.topic, "beginning", "end")
            first = {p: lo for p, (lo, _) in whole.items()}
    out = []
    for p, (lo, hi) in sorted(ranges.items()):
        prev = stored.get(p)
        if prev is not None:
            out.append(prev)
        else:
            out.append(PartitionProgress(job.name, names[p], p, lo, hi, lo,
                                         history_offset=first.get(p, lo)))  # fmt: skip
    return out


def load_progress(job: ScoreJob) -> dict[int, PartitionProgress]:
    if job.out_dir is not None:
        return FileSink.load(job)
    from streamproc.kafka.backfill import read_progress

    return read_progress(job.config.kafka, job.progress_topic, job.name)


def score_partition(
    job: ScoreJob,
    handler: BatchHandler,
    source: Source,
    progress: PartitionProgress,
    on_batch: Callable[[int], None] = lambda n: None,
    sink: Sink | None = None,
) -> PartitionProgress:
    """Score one partition from its progress to its end, committing as it goes (to
    ``sink``, else one opened here; closed here either way)."""
    if progress.done:
        if sink is not None:
            sink.close()
        return progress
    sink = sink or open_sink(job, progress)
    try:
        if handler.features is not None:
            _replay_history(job, handler, source, progress)
        last_commit = time.monotonic()
        since_part = 0
        alerts_topic = handler.topics.alerts
        for raw in source.batches(progress.partition, progress.next_offset,
                                  progress.end_offset, job.batch_size):  # fmt: skip
            out = handler(raw)
            # The live metrics topic is not a backfill's: drop the handler's snapshot.
            out.records = [r for r in out.records if r.topic != handler.topics.metrics]
            alerts = sum(1 for r in out.records if r.topic == alerts_topic)
            sink.write(out)
            progress.add(raw, out, alerts)
            since_part += len(raw)
            on_batch(len(raw))
            now = time.monotonic()
            file_part = job.out_dir is not None and since_part >= job.part_events
            if file_part or (job.out_dir is None and now - last_commit >= job.commit_interval_s):
                sink.commit(progress)
                last_commit, since_part = now, 0
        progress.next_offset = max(progress.next_offset, progress.end_offset)
        sink.commit(progress)
    finally:
        sink.close()
        handler.revoked([progress.partition])  # its window state, if any: done with it
    return progress


def _replay_history(job: ScoreJob, handler: BatchHandler, source: Source,
                    progress: PartitionProgress) -> None:  # fmt: skip
    """The window state of ``progress``'s partition as the live pipeline had it at
    ``next_offset``: every record from the partition's first offset, unscored."""
    handler.revoked([progress.partition])
    progress.history_read = 0
    t0 = time.monotonic()
    for raw in source.batches(progress.partition, progress.history_offset,
                              progress.next_offset, job.batch_size):  # fmt: skip
        handler.warm(raw)
        progress.history_read += len(raw)
    if progress.history_read:
        log.info("partition %d: window state from %d records of history (offsets %d-%d) "
                 "in %.1fs", progress.partition, progress.history_read,
                 progress.history_offset, progress.next_offset, time.monotonic() - t0)  # fmt: skip


def score_partitions(
    job: ScoreJob,
    handler: BatchHandler,
    source: Source,
    todo: list[PartitionProgress],
    on_batch: Callable[[int], None] = lambda n: None,
) -> list[PartitionProgress]:
    """Score partitions one after the other. While one is scored, the next one's records
    are fetched and its sink opened (a transactional producer's start waits on the broker):
    one partition ahead, so memory stays bounded however many partitions a worker has."""
    from concurrent.futures import Future, ThreadPoolExecutor

    todo = [p for p in todo if not p.done]
    prefetch = getattr(source, "prefetch", None)
    done = []
    with ThreadPoolExecutor(1) as pool:
        sinks: dict[int, Future[Sink]] = {}

        def ahead(i: int) -> None:
            if i < len(todo) and i not in sinks:
                if prefetch is not None:
                    prefetch({todo[i].partition: todo[i].next_offset})
                sinks[i] = pool.submit(open_sink, job, todo[i])

        for i, pr in enumerate(todo):
            ahead(i)
            ahead(i + 1)
            done.append(score_partition(job, handler, source, pr, on_batch, sinks[i].result()))
    return done


def _worker(job: ScoreJob, progresses: list[PartitionProgress], queue: Any, index: int) -> None:
    """One worker process: its own handler, its partitions one after the other."""
    try:
        handler, closers = build_handler(job.config, job.topics, scorer=job.scorer,
                                         instance=f"score-{job.name}-{index}",
                                         history=True, framed=job.out_dir is None)  # fmt: skip
        source = open_source(job)
        try:
            for done in score_partitions(job, handler, source, progresses,
                                         lambda n: queue.put(("events", n))):  # fmt: skip
                queue.put(("partition", done.to_json()))
        finally:
            source.close()
            for close in closers:
                close()
        queue.put(("done", index))
    except BaseException as exc:  # reported to the parent, which fails the job
        queue.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise


def run(
    job: ScoreJob,
    on_start: Callable[[int, int], None] = lambda total, done: None,
    on_events: Callable[[int], None] = lambda n: None,
) -> Summary:
    """Run ``job`` to its end with ``job.workers`` processes (1: in this process) and
    return its summary. ``on_start(total, already_done)`` and ``on_events(n)`` drive a
    progress display."""
    t0 = time.monotonic()
    if job.out_topic is None and job.out_dir is None:
        raise ConfigError("score needs an output: --out-topic TOPIC or --out-dir DIR")
    if job.files and not job.key_field:
        from streamproc.models.spec import load_model_spec

        spec = load_model_spec(job.config.model)
        if spec.features is not None:
            raise ConfigError(
                f"model {spec.name} {spec.version} computes windowed features "
                "per key: score files with --key-field FIELD (each record's key)"
            )
    if job.out_dir is None:
        from streamproc.kafka.backfill import ensure_output_topics

        ensure_output_topics(job)
    todo = plan(job)
    total = sum(p.end_offset - p.start_offset for p in todo)
    resumed = sum(p.next_offset - p.start_offset for p in todo)
    on_start(total, resumed)
    pending = [p for p in todo if not p.done]
    results: dict[int, PartitionProgress] = {p.partition: p for p in todo if p.done}
    workers = max(1, min(job.workers, len(pending)))
    if pending and workers == 1:
        handler, closers = build_handler(job.config, job.topics, scorer=job.scorer,
                                         instance=f"score-{job.name}-0",
                                         history=True, framed=job.out_dir is None)  # fmt: skip
        source = open_source(job)
        try:
            for pr in score_partitions(job, handler, source, pending, on_events):
                results[pr.partition] = pr
        finally:
            source.close()
            for close in closers:
                close()
    elif pending:
        results.update(_run_processes(job, pending, workers, on_events))
    summary = Summary(job.name, workers=workers, resumed=resumed,
                      output=str(job.out_dir or job.topics.predictions))  # fmt: skip
    for p in sorted(results):
        pr = results[p]
        summary.read += pr.read
        summary.predictions += pr.predictions
        summary.dead_letters += pr.dead_letters
        summary.alerts += pr.alerts
        summary.rejects.update(pr.rejects)
        summary.partitions[p] = {"source": pr.source, "from": pr.start_offset,
                                 "to": pr.end_offset, "read": pr.read,
                                 "predictions": pr.predictions,
                                 "dead_letters": pr.dead_letters,
                                 "history_read": pr.history_read}  # fmt: skip
    summary.seconds = time.monotonic() - t0
    return summary


def _run_processes(
    job: ScoreJob, pending: list[PartitionProgress], workers: int, on_events: Callable[[int], None]
) -> dict[int, PartitionProgress]:
    # Spawned, not forked: the parent's Kafka clients (threads) do not survive a fork, and a
    # fresh interpreter loads the model and its kernels on its own.
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    # Larger partitions first, each to the least loaded worker (by events left).
    shares: list[list[PartitionProgress]] = [[] for _ in range(workers)]
    load = [0] * workers
    for pr in sorted(pending, key=lambda p: p.next_offset - p.end_offset):
        i = load.index(min(load))
        shares[i].append(pr)
        load[i] += pr.end_offset - pr.next_offset
    procs = [ctx.Process(target=_worker, args=(job, s, queue, i), daemon=True)
             for i, s in enumerate(shares)]  # fmt: skip
    for p in procs:
        p.start()
    results: dict[int, PartitionProgress] = {}
    finished = 0
    try:
        while finished < len(procs):
            try:
                kind, data = queue.get(timeout=1.0)
            except Exception:  # queue.Empty: check that no worker died without a word
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise StreamprocError(
                        f"score worker exited with {dead[0].exitcode}; run the same command "
                        "again to resume"
                    ) from None
                continue
            if kind == "events":
                on_events(data)
            elif kind == "partition":
                pr = PartitionProgress.from_json(data)
                results[pr.partition] = pr
            elif kind == "done":
                finished += 1
            elif kind == "error":
                raise StreamprocError(f"score worker failed: {data}")
    finally:
        for p in procs:
            if p.is_alive() and finished < len(procs):
                p.terminate()
            p.join(30)
    return results


# -- ranges ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """One end of a range, as ``--from`` / ``--to`` give it.

    >>> Bound.parse("beginning").kind, Bound.parse("end").kind, Bound.parse("42").offsets
    ('beginning', 'end', {-1: 42})
    >>> Bound.parse("0:10,1:20").offsets
    {0: 10, 1: 20}
    >>> Bound.parse("2024-05-01T12:00Z").time_ms
    1714564800000
    """

    kind: Literal["beginning", "end", "offsets", "time"]
    offsets: dict[int, int] = field(default_factory=dict)  # -1: every partition
    time_ms: int = 0

    @classmethod
    def parse(cls, text: str) -> Bound:
        from datetime import UTC, datetime

        t = text.strip()
        if t.lower() in ("beginning", "earliest", "start"):
            return cls("beginning")
        if t.lower() in ("end", "latest", "now"):
            return cls("end")
        if t.lstrip("-").isdigit():
            return cls("offsets", {-1: int(t)})
        if ":" in t and all(
            part.split(":")[0].strip().isdigit() and part.split(":")[1].strip().isdigit()
            for part in t.split(",") if part.count(":") == 1
        ) and all(part.count(":") == 1 for part in t.split(",")):  # fmt: skip
            return cls("offsets", {int(p): int(o) for p, o in
                                   (part.split(":") for part in t.split(","))})  # fmt: skip
        try:
            when = datetime.fromisoformat(t)
        except ValueError as exc:
            raise ConfigError(
                f"cannot read {text!r} as a range bound: beginning, end, an offset, "
                "PARTITION:OFFSET,... or an ISO time (2024-05-01T12:00Z)"
            ) from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return cls("time", time_ms=int(when.timestamp() * 1000))


# -- Avro container files ----------------------------------------------------------------------


def count_records(path: Path) -> int:
    """Records in an Avro container file (its blocks' counts: nothing is decompressed)."""
    from streamproc.codecs import container

    with path.open("rb") as f:
        return container.count_records(f)


class AvroFileSource:
    """Avro container files as partitions (file i is partition i, record j its offset j).

    Each record is written again as Confluent-framed Avro under the file's writer schema,
    registered on the input subject, so that the pipeline's own decoder reads it: the same
    validation and reason codes as the stream."""

    def __init__(self, job: ScoreJob) -> None:
        from streamproc.kafka.configuration import registry_config
        from streamproc.kafka.registry import Registry

        self.job = job
        self.name = "files"
        self.registry = Registry(registry_config(job.config.registry))
        self.subject = schemas.subject_for(job.config.topics.input)
        self._walkers: dict[str, Any] = {}  # by writer schema: its walk program (None: none)
        self._sids: dict[str, int] = {}  # by writer schema: its id on the input subject

    def _register(self, path: Path, schema: Any) -> int:
        try:
            return self.registry.register(self.subject, json.dumps(schema))
        except StreamprocError as exc:
            raise ConfigError(
                f"{path}: its writer schema was refused on {self.subject} "
                f"(must be compatible with the pipeline's): {exc}"
            ) from exc

    def batches(self, partition: int, start: int, end: int, size: int) -> Iterator[RawBatch]:
        from streamproc.codecs import container

        path = self.job.files[partition]
        with path.open("rb") as f:
            head = container.read_header(f)
            text = json.dumps(head.schema, sort_keys=True)
            if text not in self._walkers:  # files of one schema: planned and registered once
                self._walkers[text] = _walk_program(head.schema, self.job.key_field)
            walker = self._walkers[text]
            if walker is None:  # a schema the walk does not handle: record by record
                f.seek(0)
                yield from self._record_batches(path, partition, start, end, size)
                return
            if text not in self._sids:
                self._sids[text] = self._register(path, head.schema)
            sid = self._sids[text]
            yield from _block_batches(f, head, walker, sid, str(path), partition, start, end,
                                      size, self.job.key_field is not None)  # fmt: skip

    def _record_batches(
        self, path: Path, partition: int, start: int, end: int, size: int
    ) -> Iterator[RawBatch]:
        """fastavro's reader, each record written again: schemas the walk does not take."""
        import uuid

        import fastavro

        from streamproc.codecs.wire import header

        key_field = self.job.key_field
        with path.open("rb") as f:
            reader = fastavro.reader(f)
            schema = reader.writer_schema
            sid = self._register(path, schema)
            parsed = fastavro.parse_schema(schema)
            head = header(sid)
            values: list[bytes | None] = []
            keys: list[bytes | None] = []
            offset = first = 0
            for offset, rec in enumerate(reader):
                if offset < start:
                    continue
                if offset >= end:
                    break
                if not values:
                    first = offset
                buf = io.BytesIO()
                buf.write(head)
                fastavro.schemaless_writer(buf, parsed, rec)
                values.append(buf.getvalue())
                k = rec.get(key_field) if key_field and isinstance(rec, dict) else None
                keys.append(None if k is None else str(k).encode())
                if len(values) >= size:
                    yield _file_batch(str(path), partition, first, values, keys, uuid.uuid4())
                    values, keys = [], []
            if values:
                yield _file_batch(str(path), partition, first, values, keys, uuid.uuid4())

    def close(self) -> None:
        pass


def _walk_program(schema: Any, key_field: str | None) -> Any:
    """The program that walks records of ``schema`` (every field skipped, the key field's
    string located), or None where the walk does not apply: a recursive schema, or a key
    field that is not a string (its text is made by the record-by-record path)."""
    from streamproc.codecs import tree
    from streamproc.codecs.features import non_null_branches, resolve_path
    from streamproc.codecs.program import Unsupported, build_program
    from streamproc.codecs.resolve import project_reader

    try:
        writer = tree.build(schema)
        if writer.kind != "record":
            return None
        key_path = None
        reader = tree.build(project_reader(schema, [key_field] if key_field else []))
        if key_field:
            found = resolve_path(reader, key_field)
            if found is None:
                return None
            key_path, leaf = found
            if not {b.kind for b in non_null_branches(leaf)} <= {"string", "bytes"}:
                return None
        program = build_program(writer, reader, [], key_path, None)
    except (Unsupported, ValueError, KeyError, TypeError):
        return None
    from streamproc.codecs.container import specialised_walker

    return specialised_walker(writer, key_path, program)


def _block_batches(
    f: Any, head: Any, prog: Any, sid: int, src: str, partition: int,
    start: int, end: int, size: int, with_keys: bool,
) -> Iterator[RawBatch]:  # fmt: skip
    """Batches of ``size`` records (``start`` .. ``end``) of a container file, read block
    by block: blocks are gathered until they hold ``size`` records, their datums walked in
    one pass (no Python object per record but its key); what is left over after the last
    full batch goes into the next one."""
    import uuid

    from streamproc.codecs import container
    from streamproc.codecs.wire import header

    inflate = container.decompressor(head.codec)
    frame_head = header(sid)
    group: list[bytes] = []
    counts: list[int] = []
    first = offset = 0  # the group's first record; the next block's first record
    # Records walked but not yet in a batch: datums, starts, ends, key offsets and
    # lengths (in the datums), the first one's offset.
    pend: tuple[bytes, Any, Any, Any, Any, int] | None = None

    def walk() -> list[tuple[container.Split, int]]:
        """The group's records (as many splits as needed: one, or one per block when a
        block is corrupt, so the others keep their records), with their first offsets."""
        split = container.split_block(b"".join(group), sum(counts), prog, frame_head)
        if split.ok or len(group) == 1:
            return [(split, first)]
        out, at = [], first
        for d, c in zip(group, counts, strict=True):
            out.append((container.split_block(d, c, prog, frame_head), at))
            at += c
        return out

    def take(split: container.Split, at: int) -> None:
        """Add a split's records within start..end to the pending ones."""
        nonlocal pend
        v = split.values
        lo, hi = max(start - at, 0), min(end - at, len(v))
        if lo >= hi:
            return
        s0, e1 = int(v.starts[lo]), int(v.ends[hi - 1])
        raw = v.raw if (s0, e1) == (0, len(v.raw)) else v.raw[s0:e1]
        cols = (v.starts[lo:hi] - s0, v.ends[lo:hi] - s0, split.key_off[lo:hi] - s0,
                split.key_len[lo:hi])  # fmt: skip
        if pend is None:
            pend = (raw, *cols, at + lo)
            return
        p_raw, p_starts, p_ends, p_off, p_len, p_first = pend
        k = len(p_raw)
        pend = (p_raw + raw, np.concatenate([p_starts, cols[0] + k]),
                np.concatenate([p_ends, cols[1] + k]), np.concatenate([p_off, cols[2] + k]),
                np.concatenate([p_len, cols[3]]), p_first)  # fmt: skip

    def batches(final: bool) -> Iterator[RawBatch]:
        nonlocal pend
        if pend is None:
            return
        raw, starts, ends, key_off, key_len, at = pend
        n = len(starts)
        full = n if final else n - n % size
        values = container.FramedValues(raw, starts, ends, frame_head)
        for i in range(0, full, size):
            j = min(i + size, full)
            keys: list[bytes | None] = (
                container.keys(raw, key_off[i:j], key_len[i:j]) if with_keys else [None] * (j - i)
            )
            yield RawBatch(
                topic=src, values=cast("list[bytes | None]", values.view(i, j)), keys=keys,
                partitions=np.full(j - i, partition, dtype=np.int32),
                offsets=np.arange(at + i, at + j, dtype=np.int64),
                headers=_NoHeaders(j - i), batch_id=uuid.uuid4().hex[:16],
            )  # fmt: skip
        if full == n:
            pend = None
        else:
            s0 = int(starts[full])
            pend = (raw[s0:], starts[full:] - s0, ends[full:] - s0, key_off[full:] - s0,
                    key_len[full:], at + full)  # fmt: skip

    for count, data in container.read_blocks(f, head):
        if offset + count <= start:
            offset += count
            continue
        if offset >= end:
            break
        if not group:
            first = offset
        group.append(inflate(data))
        counts.append(count)
        offset += count
        if sum(counts) >= size:
            for split, at in walk():
                take(split, at)
            group, counts = [], []
            yield from batches(final=False)
    if group:
        for split, at in walk():
            take(split, at)
    yield from batches(final=True)


class _NoHeaders(Sequence[None]):
    """Records of a file have no headers: ``[None] * n`` without the list."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [None] * len(range(*i.indices(self.n)))
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return None


def _file_batch(src: str, partition: int, first: int, values: list[bytes | None],
                keys: list[bytes | None], batch: Any) -> RawBatch:  # fmt: skip
    n = len(values)
    return RawBatch(topic=src, values=values, keys=keys,
                    partitions=np.full(n, partition, dtype=np.int32),
                    offsets=np.arange(first, first + n, dtype=np.int64),
                    headers=[None] * n, batch_id=batch.hex[:16])  # fmt: skip


def _long(n: int) -> bytes:
    """Avro's zig-zag varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


class AvroContainerWriter:
    """An Avro object container file from already-encoded records (Confluent-framed
    values: the 5-byte header is cut). One block per :meth:`write`, compressed with
    ``codec`` (deflate by default; null or snappy); any Avro reader reads it (fastavro,
    avro-tools, Spark)."""

    def __init__(self, path: Path, schema_text: str, codec: str = "deflate") -> None:
        from streamproc.codecs.container import compressor

        self.path = path
        self.sync = os.urandom(16)
        self.compress = compressor(codec)
        self.f = path.open("wb")
        meta = {"avro.schema": schema_text.encode(), "avro.codec": codec.encode()}
        head = bytearray(b"Obj\x01")
        head += _long(len(meta))
        for k, v in meta.items():
            head += _long(len(k)) + k.encode() + _long(len(v)) + v
        head += _long(0) + self.sync
        self.f.write(head)

    def write(self, framed: Sequence[bytes], cut: int = 5) -> None:
        """One block of these records, ``cut`` bytes (the Confluent header) off each: 0
        for bare datums."""
        if not framed:
            return
        from streamproc.codecs.container import strip
        from streamproc.codecs.encoder import EncodedRecords

        n = len(framed)
        if isinstance(framed, EncodedRecords):  # as the encoder laid them out: no join
            buf, ends = framed.buf, framed.ends
        elif cut:
            buf = np.frombuffer(b"".join(framed), np.uint8)
            ends = np.cumsum(np.fromiter(map(len, framed), np.int64, n))
        else:
            buf, ends = np.frombuffer(b"".join(framed), np.uint8), None
        if cut:
            out = np.empty(buf.size, np.uint8)
            buf = out[: strip(buf, ends, cut, out)]
        body = self.compress(buf.tobytes())
        self.f.write(_long(n) + _long(len(body)) + body + self.sync)

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


HEADER_SIZE = 5  # the Confluent framing of dead letters and alerts, cut in files

_KINDS = {"predictions": "Prediction", "deadletters": "DeadLetter", "alerts": "Alert"}


def arrow_schema(avro: dict[str, Any]) -> Any:
    """The Arrow schema (pyarrow) of an Avro record schema: optional fields (a union with
    null) nullable, the others not; enums as strings, maps as maps of strings
    (tests/pipeline/test_score.py reads the part files back).
    """
    import pyarrow as pa

    prims = {"null": pa.null(), "boolean": pa.bool_(), "int": pa.int32(), "long": pa.int64(),
             "float": pa.float32(), "double": pa.float64(), "bytes": pa.binary(),
             "string": pa.string()}  # fmt: skip
    named: dict[str, Any] = {}

    def field(name: str, t: Any) -> Any:
        if isinstance(t, list):
            rest = [b for b in t if b != "null"]
            if len(rest) != 1:
                raise ConfigError(f"no Parquet column for the Avro union {t} of field {name}")
            return pa.field(name, of(rest[0]), nullable=len(rest) < len(t))
        return pa.field(name, of(t), nullable=t == "null")

    def of(t: Any) -> Any:
        if isinstance(t, str):
            if t in prims:
                return prims[t]
            return named[t]
        logical, kind = t.get("logicalType"), t["type"]
        if kind == "long" and logical in ("timestamp-millis", "timestamp-micros"):
            return pa.timestamp("ms" if logical == "timestamp-millis" else "us", tz="UTC")
        if kind == "int" and logical == "date":
            return pa.date32()
        if kind in prims:
            return prims[kind]
        if kind == "enum":
            out: Any = pa.string()
        elif kind == "fixed":
            out = pa.binary(t["size"])
        elif kind == "array":
            return pa.list_(field("item", t["items"]))
        elif kind == "map":
            return pa.map_(pa.string(), field("value", t["values"]))
        elif kind == "record":
            out = pa.struct([field(f["name"], f["type"]) for f in t["fields"]])
        else:
            return of(kind)  # {"type": "string"} and the like
        for name in (t["name"], f"{t.get('namespace')}.{t['name']}"):
            named[name] = out
        return out

    return pa.schema(list(of(avro)))


class FileSink:
    """Part files under ``out_dir``: ``<kind>-p<partition>-<part>.avro`` (or ``.parquet``),
    kind one of predictions, deadletters, alerts. A part is written under a temporary name,
    renamed, then the progress file is replaced: a crash in between leaves a part that the
    resumed job writes again under the same name, from the same offset."""

    def __init__(self, job: ScoreJob, progress: PartitionProgress) -> None:
        if job.out_format == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError as exc:
                raise DependencyMissingError("pyarrow", "parquet") from exc
        assert job.out_dir is not None
        self.job = job
        self.dir = job.out_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "_progress").mkdir(exist_ok=True)
        self.progress = progress
        self.topics = job.topics
        self._buf: dict[str, list[bytes]] = {k: [] for k in _KINDS}
        # Predictions as the encoder made them, a list per batch (one Avro block each).
        self._chunks: list[list[bytes]] = []

    def write(self, out: Outputs) -> None:
        t = self.topics
        for b in out.blocks:
            if b.topic == t.predictions and b.values:
                self._chunks.append(b.values)
        for r in out.records:
            kind = {t.dlq: "deadletters", t.alerts: "alerts"}.get(r.topic)
            if kind is not None and r.value is not None:  # None: state tombstones only
                self._buf[kind].append(r.value)

    def commit(self, progress: PartitionProgress) -> None:
        part = progress.parts
        if self._chunks or any(self._buf.values()):
            for kind, values in self._buf.items():
                chunks = self._chunks if kind == "predictions" else [values]
                if not any(chunks):
                    continue
                name = f"{kind}-p{progress.partition:05d}-{part:06d}.{self.job.out_format}"
                tmp = self.dir / f".{name}.tmp"
                self._write_part(tmp, kind, chunks)
                os.replace(tmp, self.dir / name)
            self._buf = {k: [] for k in _KINDS}
            self._chunks = []
            progress.parts = part + 1
        path = self._progress_path(self.dir, progress.job, progress.partition)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(progress.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if progress.done:  # parts a crashed run left beyond the last one: not ours
            for kind in _KINDS:
                for stale in self.dir.glob(f"{kind}-p{progress.partition:05d}-*"):
                    if int(stale.stem.rsplit("-", 1)[1]) >= progress.parts:
                        stale.unlink()

    def _write_part(self, path: Path, kind: str, chunks: list[list[bytes]]) -> None:
        text = schemas.schema_text(_KINDS[kind])
        if self.job.out_format == "avro":
            w = AvroContainerWriter(path, text, self.job.out_codec)
            # Predictions are bare datums (the handler of a file job makes them so).
            cut = 0 if kind == "predictions" else HEADER_SIZE
            for values in chunks:  # a block per batch (at most 10,000 records)
                for i in range(0, len(values), 10_000):
                    w.write(values if len(values) <= 10_000 else values[i : i + 10_000], cut)
            w.close()
            return
        values = [v for c in chunks for v in c]
        import fastavro
        import pyarrow as pa
        import pyarrow.parquet as pq

        avro_schema = json.loads(text)
        parsed = fastavro.parse_schema(avro_schema)
        cut = 0 if kind == "predictions" else HEADER_SIZE
        rows = [fastavro.schemaless_reader(io.BytesIO(v[cut:]), parsed, None) for v in values]
        # The columns' types from the Avro schema, not inferred from the rows: every part of
        # a kind has the same schema (a part whose keys are all null still has a string
        # column), a map stays a map, timestamps stay milliseconds in UTC.
        pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema(avro_schema)), path,
                       compression=_PARQUET_CODECS[self.job.out_codec])  # fmt: skip

    @staticmethod
    def _progress_path(out_dir: Path, job: str, partition: int) -> Path:
        return out_dir / "_progress" / f"{job}-{partition:05d}.json"

    @staticmethod
    def load(job: ScoreJob) -> dict[int, PartitionProgress]:
        assert job.out_dir is not None
        out: dict[int, PartitionProgress] = {}
        for path in sorted((job.out_dir / "_progress").glob(f"{job.name}-*.json")):
            with contextlib.suppress(ValueError, TypeError):
                pr = PartitionProgress.from_json(path.read_bytes())
                if pr.job == job.name:
                    out[pr.partition] = pr
        return out

    def close(self) -> None:
        pass
