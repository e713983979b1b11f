"""The consume -> process -> produce -> commit loop on confluent-kafka.

The runner knows Kafka and nothing about models: a *handler* turns a :class:`RawBatch`
into :class:`Outputs`, and the runner writes them and commits the batch's offsets with the
configured guarantee (see :meth:`KafkaRunner._commit`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka import KafkaError as CkError

from streamproc.batching import MicroBatcher, Released, WindowPolicy
from streamproc.errors import DeliveryError, KafkaError, RegistryUnavailableError
from streamproc.telemetry import Sensor
from streamproc.types import Outputs, RawBatch, ReleaseReason

log = logging.getLogger(__name__)

Handler = Callable[[RawBatch], Outputs]


def wall_ms() -> float:
    return time.time() * 1000.0


@dataclass(frozen=True)
class RunnerSettings:
    topic: str
    exactly_once: bool = False
    flush_timeout_s: float = 30.0
    # at-least-once: how long produced batches may await acknowledgement before the runner
    # blocks on one flush and commits them all (0: flush and commit after every batch).
    # A flush waits one linger plus one broker round trip (~4-9 ms measured), so one per
    # interval instead of one per batch; a crash replays at most this much of the input.
    commit_interval_s: float = 0.1
    # ... and at most this many produced records may await acknowledgement.
    max_pending: int = 100_000
    registry_retry_initial_s: float = 0.1
    registry_retry_max_s: float = 5.0
    lag_interval_s: float = 1.0
    use_event_age: bool = False  # compute the oldest record timestamp for DEADLINE releases


def to_raw_batch(topic: str, msgs: list[Message], released: Released[Message]) -> RawBatch:
    """Columnar view of consumed records (the per-event calls are the client's own)."""
    n = len(msgs)
    partitions = np.fromiter((m.partition() for m in msgs), dtype=np.int32, count=n)
    offsets = np.fromiter((m.offset() for m in msgs), dtype=np.int64, count=n)
    stamps = np.fromiter((m.timestamp()[1] for m in msgs), dtype=np.int64, count=n)
    return RawBatch(
        topic=topic,
        values=[m.value() for m in msgs],
        keys=[m.key() for m in msgs],
        partitions=partitions,
        offsets=offsets,
        timestamps_ms=stamps,
        headers=[m.headers() for m in msgs],  # type: ignore[misc]  # list form: no dict config
        batch_id=uuid.uuid4().hex[:16],
        release=released.reason,
        wait_ms=released.wait_ms,
    )


def next_offsets(topic: str, raw: RawBatch) -> list[TopicPartition]:
    """The offset to commit per partition: one past the batch's last record."""
    out = []
    for p in np.unique(raw.partitions):
        last = int(raw.offsets[raw.partitions == p].max())
        out.append(TopicPartition(topic, int(p), last + 1))
    return out


def first_offsets(topic: str, raw: RawBatch) -> list[TopicPartition]:
    out = []
    for p in np.unique(raw.partitions):
        first = int(raw.offsets[raw.partitions == p].min())
        out.append(TopicPartition(topic, int(p), first))
    return out


class KafkaRunner:
    def __init__(
        self,
        *,
        consumer_conf: dict[str, Any],
        producer_conf: dict[str, Any],
        settings: RunnerSettings,
        handler: Handler,
        policy: WindowPolicy,
        sensor: Sensor | None = None,
        clock_ms: Callable[[], float] = wall_ms,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.sensor = sensor or Sensor()
        self._delivery_errors: list[str] = []
        self.consumer = Consumer(consumer_conf)
        self.producer = Producer(
            {**producer_conf, "on_delivery": self._on_delivery, "delivery.report.only.error": True}
        )
        self.batcher: MicroBatcher[Message] = MicroBatcher(policy, clock=clock_ms)
        self.stop_event = threading.Event()
        self._assignment: list[TopicPartition] = []
        self._last_lag = 0.0
        self.batches_committed = 0
        # at-least-once: next offsets of produced batches not yet committed (partition ->)
        self._uncommitted: dict[int, int] = {}
        self._unacked_batches = 0
        self._unacked_since = 0.0  # time.monotonic() of the oldest unacknowledged batch

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the in-flight batch, flush, commit, then return from :meth:`run`."""
        self.stop_event.set()

    def run(self) -> None:
        s = self.settings
        if s.exactly_once:
            # Fences any earlier producer with the same transactional.id and aborts its
            # open transaction, so a restarted replica never leaves one dangling.
            self.producer.init_transactions(s.flush_timeout_s)
        self.consumer.subscribe(
            [s.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        try:
            while not self.stop_event.is_set():
                self._step()
            for rel in self.batcher.release_all(ReleaseReason.SHUTDOWN):
                self._process(rel)
            self._flush_and_commit()
        finally:
            self.producer.flush(s.flush_timeout_s)  # anything not yet acknowledged
            self.consumer.close()  # leaves the group at once: partitions move without waiting

    def _step(self) -> None:
        max_size = self.batcher.policy.max_size
        want = max(1, max_size - len(self.batcher))
        if len(self.batcher):
            # Wakes when `want` records are here or the pending batch's deadline comes.
            msgs = self.consumer.consume(num_messages=want, timeout=self.batcher.timeout_s())
        else:
            # Nothing pending: take what is already fetched; else wake on the first record
            # (its arrival opens the window), not on a full batch.
            msgs = self.consumer.consume(num_messages=want, timeout=0)
            if not msgs:
                msgs = self.consumer.consume(num_messages=1, timeout=0.5)
        good = [m for m in msgs if m.error() is None]
        if len(good) != len(msgs):
            for m in msgs:
                err = m.error()
                if err is not None and err.code() != CkError._PARTITION_EOF and err.fatal():
                    raise KafkaError(f"consumer error: {err}", topic=m.topic(),
                                     partition=m.partition())  # fmt: skip
        if good:
            oldest = min(m.timestamp()[1] for m in good) if self.settings.use_event_age else None
            for rel in self.batcher.add(good, oldest):
                self._process(rel)
        for rel in self.batcher.release_due():
            self._process(rel)
        if not msgs and self._unacked_batches:
            self._flush_and_commit()  # idle: nothing to overlap with, make it durable now
        now = time.monotonic()
        if now - self._last_lag >= self.settings.lag_interval_s:
            self._last_lag = now
            self._report_lag()

    # -- one batch -------------------------------------------------------------------------

    def _process(self, rel: Released[Message]) -> None:
        raw = to_raw_batch(self.settings.topic, rel.items, rel)
        out = self._handle_with_retry(raw)
        self._commit(raw, out)
        stats = getattr(out, "stats", None)
        if stats is not None:
            self.sensor.on_batch(stats)

    def _handle_with_retry(self, raw: RawBatch) -> Outputs:
        """Run the handler; while the registry is down, pause and retry with backoff.

        A registry outage never turns good events into dead letters: the batch waits.
        """
        attempt = 0
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    return self.handler(raw)
                except RegistryUnavailableError as exc:
                    attempt += 1
                    delay = min(
                        self.settings.registry_retry_initial_s * 2 ** (attempt - 1),
                        self.settings.registry_retry_max_s,
                    )
                    log.warning("registry unavailable (attempt %d), retry in %.2fs: %s",
                                attempt, delay, exc)  # fmt: skip
                    self.sensor.on_registry_retry(attempt, delay)
                    if not paused and self._assignment:
                        paused = list(self._assignment)
                        self.consumer.pause(paused)
                    # The backoff wait: serves group callbacks, delivers nothing (paused).
                    self.consumer.poll(delay)
        finally:
            if paused:
                self.consumer.resume(paused)

    def _commit(self, raw: RawBatch, out: Outputs) -> None:
        """The commit protocol, in order. Offsets move only after the outputs are durable."""
        s = self.settings
        offsets = next_offsets(s.topic, raw)
        if s.exactly_once:
            try:
                # 1. open a transaction for this batch
                self.producer.begin_transaction()
                # 2. produce predictions, dead letters, alerts and snapshots into it
                self._produce_all(out)
                # 3. add the input offsets to the same transaction
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), s.flush_timeout_s
                )
                # 4. commit: flushes and makes outputs and offsets visible atomically;
                #    bounded by flush_timeout_s, after which the broker aborts it anyway.
                self.producer.commit_transaction(s.flush_timeout_s)
            except KafkaException as exc:
                self._abort_and_rewind(raw, exc)
                return
        else:
            # 1. produce predictions, dead letters, alerts and snapshots (queued; the
            #    broker acknowledges them while the next batch is being scored)
            self._produce_all(out)
            for tp in offsets:
                self._uncommitted[tp.partition] = max(
                    tp.offset, self._uncommitted.get(tp.partition, tp.offset)
                )
            if not self._unacked_batches:
                self._unacked_since = time.monotonic()
            self._unacked_batches += 1
            self.producer.poll(0)  # serve delivery reports without waiting
            if (
                time.monotonic() - self._unacked_since >= s.commit_interval_s
                or len(self.producer) > s.max_pending
            ):
                self._flush_and_commit()
            return
        self.batches_committed += 1

    def _flush_and_commit(self) -> None:
        """at-least-once, steps 2 and 3: wait for every acknowledgement, then commit."""
        s = self.settings
        if s.exactly_once or not self._unacked_batches:
            return
        # 2. flush: wait for every acknowledgement of the produced batches, at most
        #    flush_timeout_s; anything unacknowledged or failed means no commit (the
        #    process stops and a restart replays from the last commit).
        remaining = self.producer.flush(s.flush_timeout_s)
        if remaining or self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            raise DeliveryError(
                f"{remaining} records unacknowledged after {s.flush_timeout_s}s; "
                f"errors: {errors[:3]}",
                topic=s.topic,
            )
        offsets = [TopicPartition(s.topic, p, o) for p, o in self._uncommitted.items()]
        self._uncommitted.clear()
        batches, self._unacked_batches = self._unacked_batches, 0
        # 3. commit the next offsets synchronously: once this returns, a crash never
        #    replays these batches.
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Lost the partitions in a rebalance: the new owner replays from the last
            # commit (at-least-once allows the duplicate; nothing is lost).
            log.warning("offset commit failed after produce, batches will replay: %s", exc)
            return
        self.batches_committed += batches

    def _abort_and_rewind(self, raw: RawBatch, exc: KafkaException) -> None:
        err = exc.args[0]
        if not err.txn_requires_abort():
            raise KafkaError(f"transaction failed: {err}", topic=self.settings.topic) from exc
        log.warning("aborting transaction and replaying batch %s: %s", raw.batch_id, err)
        self.producer.abort_transaction(self.settings.flush_timeout_s)
        for tp in first_offsets(self.settings.topic, raw):
            if any(a.partition == tp.partition for a in self._assignment):
                self.consumer.seek(tp)

    def _produce_all(self, out: Outputs) -> None:
        produce = self.producer.produce
        for b in out.blocks:
            topic, keys, values, headers = b.topic, b.keys, b.values, b.headers
            i, n = 0, len(values)
            while i < n:
                try:
                    for i in range(i, n):  # noqa: B020 - resumes at the record that failed
                        produce(topic, values[i], keys[i], headers=headers)  # type: ignore[arg-type]
                    i = n
                except BufferError:
                    self._backpressure()
        for r in out.records:
            while True:
                try:
                    if r.partition is None:
                        produce(r.topic, r.value, r.key, headers=r.headers)  # type: ignore[arg-type]
                    else:
                        produce(
                            r.topic,
                            r.value,
                            r.key,
                            partition=r.partition,
                            headers=r.headers,  # type: ignore[arg-type]
                        )
                    break
                except BufferError:
                    self._backpressure()

    def _backpressure(self) -> None:
        """The producer queue is full: stop fetching and let deliveries drain a little."""
        if self._assignment:
            self.consumer.pause(self._assignment)
        self.producer.poll(0.05)
        if self._assignment:
            self.consumer.resume(self._assignment)

    def _on_delivery(self, err: CkError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    # -- group membership ------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self._assignment = list(parts)
        log.info("assigned %s", [p.partition for p in parts])

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Finish what we hold for these partitions and commit it before they move, so
        # the next owner starts exactly after it.
        for rel in self.batcher.release_all(ReleaseReason.REBALANCE):
            self._process(rel)
        self._flush_and_commit()
        self._assignment = []
        log.info("revoked %s", [p.partition for p in parts])

    def _on_lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Ownership is already gone: committing would fail. Drop what we hold; the new
        # owner replays it from the last committed offset.
        self.batcher.release_all(ReleaseReason.REBALANCE)
        self._uncommitted.clear()  # produced, never committed: replayed (at-least-once)
        self._unacked_batches = 0
        self._assignment = []
        log.warning("partitions lost %s", [p.partition for p in parts])

    def _report_lag(self) -> None:
        if not self._assignment:
            return
        try:
            positions = self.consumer.position(self._assignment)
        except KafkaException:
            return
        lag = {}
        for tp in positions:
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                lag[tp.partition] = max(0, high - tp.offset)
        self.sensor.on_lag(self.settings.topic, lag)
