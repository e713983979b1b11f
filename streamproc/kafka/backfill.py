"""Kafka sides of a score job (streamproc.pipeline.batchscore): the input range, the
transactional output with its progress records, and reading the progress back.

Each input partition has its own transactional producer, ``transactional.id``
``streamproc-score-<job>-<partition>``: a restarted job (any number of workers) fences the
producer a killed run left and aborts its open transaction at once, and what the partition
wrote is exactly what its committed progress record covers. The progress topic is
compacted: the latest record per ``<job>/<partition>`` key is the state.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import deque
from collections.abc import Iterator
from itertools import repeat
from operator import length_hint
from typing import TYPE_CHECKING, Any

import numpy as np
from confluent_kafka import (  # type: ignore[attr-defined]  # IsolationLevel: not in __all__
    Consumer,
    IsolationLevel,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from streamproc.errors import KafkaError
from streamproc.kafka.admin import Admin, check_secured
from streamproc.kafka.configuration import Connection, client_config, producer_config
from streamproc.kafka.runner import LazyHeaders
from streamproc.types import Outputs, RawBatch, ReleaseReason

if TYPE_CHECKING:
    from streamproc.pipeline.batchscore import PartitionProgress, ScoreJob

PROGRESS_CONFIG = {"cleanup.policy": "compact"}


def _consumer(conn: Connection) -> Consumer:
    return Consumer({
        **client_config(conn), "group.id": f"streamproc-score-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False, "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest", "isolation.level": "read_committed",
        # One partition is read at a time, to its end: fetch it in large pieces, well
        # ahead of the handler (librdkafka's defaults fetch 1 MB a partition at a time).
        "fetch.wait.max.ms": 5, "queued.min.messages": 500_000,
        "max.partition.fetch.bytes": 32 * 1024 * 1024, "fetch.queue.backoff.ms": 1,
        "queued.max.messages.kbytes": 64 * 1024,
    })  # fmt: skip


def _partitions(admin: AdminClient, topic: str, timeout_s: float) -> list[int]:
    md = admin.list_topics(topic, timeout=timeout_s)
    tm = md.topics.get(topic)
    if tm is None or tm.error is not None:
        raise KafkaError("topic does not exist", topic=topic)
    return sorted(tm.partitions)


def _list_offsets(
    admin: AdminClient, topic: str, specs: dict[int, Any], timeout_s: float
) -> dict[int, int]:
    req = {TopicPartition(topic, p): s for p, s in specs.items()}
    try:
        res = admin.list_offsets(req, isolation_level=IsolationLevel.READ_COMMITTED,
                                 request_timeout=timeout_s)  # fmt: skip
        return {tp.partition: fut.result().offset for tp, fut in res.items()}
    except KafkaException as exc:
        raise KafkaError(f"list_offsets failed: {exc}", topic=topic) from exc


def resolve_range(
    conn: Connection, topic: str, start: str, end: str, timeout_s: float = 10.0
) -> dict[int, tuple[int, int]]:
    """``--from`` / ``--to`` as [first, end) offsets per partition: offsets as given (within
    what the topic holds), a time through the broker's time index (the first record at or
    after it: ``offsets_for_times``), ``beginning`` and ``end`` (the last stable offset)."""
    from streamproc.pipeline.batchscore import Bound

    check_secured(conn)
    admin = AdminClient(client_config(conn))
    parts = _partitions(admin, topic, timeout_s)
    low = _list_offsets(admin, topic, dict.fromkeys(parts, OffsetSpec.earliest()), timeout_s)
    high = _list_offsets(admin, topic, dict.fromkeys(parts, OffsetSpec.latest()), timeout_s)

    def at(bound: Bound) -> dict[int, int]:
        if bound.kind == "beginning":
            return dict(low)
        if bound.kind == "end":
            return dict(high)
        if bound.kind == "offsets":
            every = bound.offsets.get(-1)
            unknown = set(bound.offsets) - {-1} - set(parts)
            if unknown:
                raise KafkaError(f"no partitions {sorted(unknown)}", topic=topic)
            return {p: max(low[p], min(high[p], bound.offsets.get(p, high[p] if every is None
                                                                   else every)))
                    for p in parts}  # fmt: skip
        spec = OffsetSpec.for_timestamp(bound.time_ms)
        found = _list_offsets(admin, topic, dict.fromkeys(parts, spec), timeout_s)
        # -1: no record at or after that time: the partition's end.
        return {p: high[p] if found[p] < 0 else min(found[p], high[p]) for p in parts}

    # Offsets per partition name the partitions to read: the others start at their end.
    lo, hi = at(Bound.parse(start)), at(Bound.parse(end))
    return {p: (lo[p], max(lo[p], hi[p])) for p in parts}


def _raw_batch(topic: str, partition: int, msgs: list[Message]) -> RawBatch:
    """:func:`~streamproc.kafka.runner.to_raw_batch` for records of one partition: the
    partition column without a call per record."""
    n = len(msgs)
    return RawBatch(
        topic=topic,
        values=list(map(Message.value, msgs)),
        keys=list(map(Message.key, msgs)),
        partitions=np.full(n, partition, dtype=np.int32),
        offsets=np.fromiter(map(Message.offset, msgs), dtype=np.int64, count=n),
        headers=LazyHeaders(msgs),
        batch_id=uuid.uuid4().hex[:16],
        release=ReleaseReason.SIZE,
    )


class KafkaRangeSource:
    """Committed records of one partition at a time between two offsets, as RawBatches.

    :meth:`prefetch` gives each partition to come a consumer of its own that starts fetching
    at once, so that the next partition's records are here when the last one ends (a
    single consumer reading the partitions in turn waited for each one's first fetches)."""

    def __init__(self, conn: Connection, topic: str | None, timeout_s: float = 30.0) -> None:
        assert topic is not None
        self.conn = conn
        self.name = topic
        self.topic = topic
        self.timeout_s = timeout_s
        self.consumer = _consumer(conn)
        self._ahead: dict[int, tuple[int, Consumer]] = {}

    def prefetch(self, starts: dict[int, int]) -> None:
        """Start fetching these partitions (partition -> first offset) now."""
        for p, o in starts.items():
            c = _consumer(self.conn)
            c.assign([TopicPartition(self.topic, p, o)])
            self._ahead[p] = (o, c)

    def batches(self, partition: int, start: int, end: int, size: int) -> Iterator[RawBatch]:
        if start >= end:
            return
        ahead = self._ahead.pop(partition, None)
        if ahead is not None and ahead[0] == start:
            c = ahead[1]
        else:
            if ahead is not None:
                ahead[1].close()
            c = self.consumer
            c.assign([TopicPartition(self.topic, partition, start)])
        try:
            yield from self._read(c, partition, start, end, size)
        finally:
            if c is self.consumer:
                c.unassign()
            else:
                c.close()

    def _read(
        self, c: Consumer, partition: int, start: int, end: int, size: int
    ) -> Iterator[RawBatch]:
        deadline = time.monotonic() + self.timeout_s
        expect = start
        while True:
            # consume(n) waits for n records (or the timeout): never ask for more than the
            # range holds, or its last batch would wait out the timeout.
            want = max(1, min(size, end - expect))
            msgs = c.consume(want, timeout=0.2)
            # The runner's way: per-record accessors through map (the loop stays in C); a
            # record-by-record Python loop only when a record carries an error.
            good: list[Message] = msgs
            if any(map(Message.error, msgs)):
                good = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        good.append(m)
                    elif err.fatal():
                        raise KafkaError(f"consumer error: {err}", topic=self.topic,
                                         partition=partition)  # fmt: skip
            last = (good[-1].offset() or 0) if good else -1  # one partition: in offset order
            if last >= end:
                good = [m for m in good if (m.offset() or 0) < end]
            if good:
                deadline = time.monotonic() + self.timeout_s
                expect = (good[-1].offset() or 0) + 1
                yield _raw_batch(self.topic, partition, good)
            if last >= end - 1:
                return
            # Transaction markers (or compaction) can leave the last offsets empty.
            pos = c.position([TopicPartition(self.topic, partition)])[0].offset
            if pos >= end:
                return
            if not msgs and time.monotonic() > deadline:
                raise KafkaError(f"read stalled at offset {pos} before {end}",
                                 topic=self.topic, partition=partition)  # fmt: skip

    def close(self) -> None:
        for _, c in self._ahead.values():
            c.close()
        self._ahead = {}
        self.consumer.close()


# A score sink commits a transaction a second: wait longer for fuller produce requests
# (fewer of them for librdkafka's threads to build, compress and send) than the live
# pipeline does (linger.ms 2).
SINK_TUNING: dict[str, Any] = {"linger.ms": 50, "batch.num.messages": 100_000}


def transactional_id(job: str, partition: int) -> str:
    return f"streamproc-score-{job}-{partition}"


class KafkaTransactionalSink:
    """Outputs of one input partition, in transactions that also hold its progress."""

    def __init__(self, job: ScoreJob, partition: int, timeout_s: float = 30.0) -> None:
        self.job = job
        self.partition = partition
        self.timeout_s = timeout_s
        self.errors: list[str] = []
        conf = producer_config(job.config.kafka, transactional_id(job.name, partition))
        conf.update(SINK_TUNING)
        conf.update(job.config.kafka.extra)  # the user's settings win
        conf["on_delivery"] = self._on_delivery
        conf["delivery.report.only.error"] = True
        self.producer = Producer(conf)
        try:
            # Fences a producer of an earlier run of this partition and aborts what it left
            # open: then only committed outputs and progress remain.
            self.producer.init_transactions(timeout_s)
        except KafkaException as exc:
            raise KafkaError(f"cannot start the score job's transactions: {exc}") from exc
        self.open = False

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def _begin(self) -> None:
        if not self.open:
            self.producer.begin_transaction()
            self.open = True

    def write(self, out: Outputs) -> None:
        self._begin()
        produce = self.producer.produce
        for b in out.blocks:
            values, keys = iter(b.values), iter(b.keys)
            while True:  # the runner's loop: the records go through map, in C
                try:
                    deque(map(produce, repeat(b.topic), values, keys, repeat(-1), repeat(None),
                              repeat(None), repeat(0), repeat(b.headers)), maxlen=0)  # fmt: skip
                    break
                except BufferError:
                    i = len(b.values) - length_hint(values) - 1
                    values, keys = iter(b.values[i:]), iter(b.keys[i:])
                    self.producer.poll(0.05)
        for r in out.records:
            while True:
                try:
                    produce(r.topic, r.value, r.key, headers=r.headers)  # type: ignore[arg-type]
                    break
                except BufferError:
                    self.producer.poll(0.05)

    def commit(self, progress: PartitionProgress) -> None:
        self._begin()
        self.producer.produce(self.job.progress_topic, progress.to_json(),
                              progress.key.encode())  # fmt: skip
        try:
            self.producer.commit_transaction(self.timeout_s)
        except KafkaException as exc:
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(self.timeout_s)
            raise KafkaError(f"score transaction failed; run the job again to resume: {exc}",
                             topic=self.job.topic, partition=self.partition) from exc  # fmt: skip
        finally:
            self.open = False
        if self.errors:  # a committed transaction has every record: kept as a guard
            raise KafkaError(f"records failed: {self.errors[:3]}")

    def close(self) -> None:
        if self.open:
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(self.timeout_s)
        self.producer.close()


def read_progress(
    conn: Connection, topic: str, job: str, timeout_s: float = 30.0
) -> dict[int, PartitionProgress]:
    """The committed progress of ``job``: the last record per partition key."""
    from streamproc.pipeline.batchscore import PartitionProgress

    check_secured(conn)
    admin = AdminClient(client_config(conn))
    md = admin.list_topics(topic, timeout=timeout_s)
    tm = md.topics.get(topic)
    if tm is None or tm.error is not None:
        return {}
    parts = sorted(tm.partitions)
    ends = _list_offsets(admin, topic, dict.fromkeys(parts, OffsetSpec.latest()), timeout_s)
    starts = _list_offsets(admin, topic, dict.fromkeys(parts, OffsetSpec.earliest()), timeout_s)
    out: dict[int, PartitionProgress] = {}
    prefix = f"{job}/".encode()
    source = KafkaRangeSource(conn, topic, timeout_s)
    try:
        for p in parts:
            for raw in source.batches(p, starts[p], ends[p], 1000):
                for k, v in zip(raw.keys, raw.values, strict=True):
                    if k is not None and k.startswith(prefix) and v is not None:
                        pr = PartitionProgress.from_json(v)
                        out[pr.partition] = pr
    finally:
        source.close()
    return out


def ensure_output_topics(job: ScoreJob) -> None:
    """The job's output topics (as many partitions as the pipeline's) and its compacted
    progress topic."""
    t = job.topics
    admin = Admin(job.config.kafka)
    names = [t.predictions, t.dlq, t.alerts]
    if job.scorer == "rollout":
        names.append(t.shadow)
    admin.ensure_topics(names, partitions=job.config.topics.partitions)
    admin.ensure_topics([job.progress_topic], partitions=1, config=PROGRESS_CONFIG)
