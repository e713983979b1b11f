"""The consume -> process -> produce -> commit loop on confluent-kafka.

The runner knows Kafka and nothing about models: a *handler* turns a :class:`RawBatch`
into :class:`Outputs`, and the runner writes them and commits the batch's offsets with the
configured guarantee (see :meth:`KafkaRunner._commit`). It uses its clients only through
:class:`ConsumerLike` and :class:`ProducerLike`, built by factories (confluent-kafka's by
default), so tests/kafka/test_runner_protocol.py drives the protocol on fakes, with no broker.

A handler that ``overlaps`` (its model runs on a GPU apart from the host) also offers
``start(raw)`` and ``finish(started)``. The runner then keeps one batch in flight: it starts
batch k+1 (decoding it while the GPU scores batch k), then finishes, produces and commits
batch k. A batch stays in flight for one more look at the consumer at most, and that look
does not wait: when no next batch is due, the batch is finished at once. Under exactly-once,
when batch k's transaction aborts, batch k+1 is dropped unfinished and read again with k
(:meth:`KafkaRunner._process_all`).

A registry outage holds back only the events that need a writer schema the decoder has not
cached (:meth:`KafkaRunner._handle_with_retry`): per partition, the events before the first
such event are processed and committed as usual; that partition is paused, rewound to that
event and resumed after an exponential backoff, when it is read again from there; the other
partitions keep flowing. Per-partition order holds (nothing after a waiting event is
produced before it), offsets never pass a waiting event, and nothing becomes a dead letter
because of an outage.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from operator import length_hint
from typing import Any, Literal, Protocol, overload

import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka import KafkaError as CkError

from streamproc.batching import MicroBatcher, Released, WindowPolicy
from streamproc.errors import DeliveryError, KafkaError, RegistryUnavailableError
from streamproc.telemetry import Sensor
from streamproc.types import BatchHandlerLike, Outputs, OutRecord, RawBatch, ReleaseReason

log = logging.getLogger(__name__)

# Consumer errors a retry cannot cure: the principal lacks an ACL or its credentials fail.
_DENIED = frozenset({
    CkError.TOPIC_AUTHORIZATION_FAILED, CkError.GROUP_AUTHORIZATION_FAILED,
    CkError.CLUSTER_AUTHORIZATION_FAILED, CkError._AUTHENTICATION,
})  # fmt: skip

Handler = Callable[[RawBatch], Outputs]


class PlainHandler(BatchHandlerLike):
    """A function as a handler that does not overlap."""

    def __init__(self, fn: Handler) -> None:
        self.fn = fn

    def __call__(self, raw: RawBatch) -> Outputs:
        return self.fn(raw)


RebalanceCallback = Callable[[Any, list[TopicPartition]], None]


class ConsumerLike(Protocol):
    """The consumer methods the runner calls: :class:`confluent_kafka.Consumer` has them;
    a test passes a fake (``consumer_factory``)."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None: ...

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]: ...

    def pause(self, partitions: list[TopicPartition]) -> None: ...

    def resume(self, partitions: list[TopicPartition]) -> None: ...

    def seek(self, partition: TopicPartition) -> None: ...

    @overload
    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[True] = ...
    ) -> None: ...
    @overload
    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[False]
    ) -> list[TopicPartition]: ...

    def consumer_group_metadata(self) -> Any: ...

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]: ...

    def close(self) -> None: ...


class ProducerLike(Protocol):
    """The producer methods the runner calls: :class:`confluent_kafka.Producer` has them.
    Its configuration carries the runner's ``on_delivery`` callback, which a fake calls for
    a failed record as the client does."""

    def produce(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        partition: int = -1,
        callback: Callable[[Any, Any], None] | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None: ...

    def poll(self, timeout: float = -1) -> int: ...

    def flush(self, timeout: float = -1) -> int: ...

    def __len__(self) -> int: ...

    def init_transactions(self, timeout: float = -1) -> None: ...

    def begin_transaction(self) -> None: ...

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None: ...

    def commit_transaction(self, timeout: float = -1) -> None: ...

    def abort_transaction(self, timeout: float = -1) -> None: ...

    def close(self) -> bool: ...


ConsumerFactory = Callable[[dict[str, Any]], ConsumerLike]
ProducerFactory = Callable[[dict[str, Any]], ProducerLike]


def wall_ms() -> float:
    return time.time() * 1000.0


@dataclass(frozen=True)
class RunnerSettings:
    topic: str
    exactly_once: bool = False
    flush_timeout_s: float = 30.0
    # at-least-once: at most this often, commit the input offsets of the batches produced so
    # far once all their records are acknowledged (KafkaRunner._commit_if_due).
    commit_interval_s: float = 1.0
    # ... and no more than this many produced records may await acknowledgement.
    max_pending: int = 100_000
    registry_retry_initial_s: float = 0.1
    registry_retry_max_s: float = 5.0
    lag_interval_s: float = 1.0
    use_event_age: bool = False  # compute the oldest record timestamp for DEADLINE releases


@dataclass
class _Hold:
    """A partition that waits for the registry: rewound to ``offset`` (its first event that
    needs a schema the registry did not give) and paused until ``resume_at``."""

    offset: int
    attempt: int
    resume_at: float  # KafkaRunner.monotonic()
    paused: bool = True


class LazyHeaders(Sequence[Any]):
    """Each record's headers, read from the client's message only when asked for (a dead
    letter keeps them); the happy path never builds them."""

    __slots__ = ("_msgs",)

    def __init__(self, msgs: list[Message]) -> None:
        self._msgs = msgs

    def __len__(self) -> int:
        return len(self._msgs)

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [m.headers() for m in self._msgs[i]]
        return self._msgs[i].headers()


def to_raw_batch(topic: str, msgs: list[Message], released: Released[Message]) -> RawBatch:
    """Columnar view of consumed records. ``map`` over the client's accessors keeps the
    per-record loop in C (a generator or comprehension costs ~0.2 us/record more)."""
    n = len(msgs)
    return RawBatch(
        topic=topic,
        values=list(map(Message.value, msgs)),
        keys=list(map(Message.key, msgs)),
        partitions=np.fromiter(map(Message.partition, msgs), dtype=np.int32, count=n),
        offsets=np.fromiter(map(Message.offset, msgs), dtype=np.int64, count=n),
        headers=LazyHeaders(msgs),
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
        handler: BatchHandlerLike,
        policy: WindowPolicy,
        sensor: Sensor | None = None,
        clock_ms: Callable[[], float] = wall_ms,
        monotonic: Callable[[], float] = time.monotonic,
        consumer_factory: ConsumerFactory = Consumer,
        producer_factory: ProducerFactory = Producer,
    ) -> None:
        """``clock_ms`` times the batch windows; ``monotonic`` (seconds) the commit interval,
        the registry backoffs and the lag reports. The factories build the clients from
        their configurations (a test passes fakes)."""
        self.settings = settings
        self.handler = handler
        self.sensor = sensor or Sensor()
        self.monotonic = monotonic
        self.consumer: ConsumerLike = consumer_factory(consumer_conf)
        # Delivery reports for failed records only: a successful record costs no Python call.
        # Success is learnt from an empty producer queue or a flush (at-least-once,
        # _commit_if_due) or from commit_transaction (exactly-once).
        reports = {"on_delivery": self._on_delivery, "delivery.report.only.error": True}
        self.producer: ProducerLike = producer_factory({**producer_conf, **reports})
        self.batcher: MicroBatcher[Message] = MicroBatcher(policy, clock=clock_ms)
        # When the last consume returned: what the next one returns arrived after that.
        self._looked_ms: float | None = None
        self.stop_event = threading.Event()
        self._assignment: list[TopicPartition] = []
        self._joined = False  # the group assigned this replica its share (maybe none) once
        self._last_lag = 0.0
        self.batches_committed = 0
        # at-least-once: the next input offset per partition of the batches produced since the
        # last commit, failed deliveries (the runner raises on any), and the last commit.
        self._uncommitted: dict[int, int] = {}
        # at-least-once: the handler's state records (Outputs.state) of those batches, the
        # latest per (topic, partition, key), produced once their outputs are acknowledged.
        self._state: dict[tuple[str, int | None, bytes | None], OutRecord] = {}
        self._delivery_errors: list[str] = []
        self._last_commit = self.monotonic()
        # Partitions waiting for the registry (_handle_with_retry), and those held since the
        # records still pending here were read (_process_all drops their records).
        self._held: dict[int, _Hold] = {}
        self._newly_held: set[int] = set()
        # exactly-once: the batches to read again after an aborted transaction: the aborted
        # one, and the one that was in flight then (see _process_all).
        self._aborted: list[RawBatch] = []
        # An overlapping handler's started batch, not yet finished (the module docstring).
        self._overlap: BatchHandlerLike | None = handler if handler.overlaps else None
        self._inflight: tuple[RawBatch, Any] | None = None
        # Records for no batch (handler.pending) whose transaction aborted: sent again.
        self._pending: list[OutRecord] = []
        if self._overlap is not None:
            log.info("one batch in flight: the next batch is decoded while the model scores")
        elif not settings.exactly_once:
            # Commits happen between batches (_process): the handler's state as it stands at
            # a commit is the state of the batches produced, which is what may be written.
            handler.defer_state()

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
            self._process_all(self.batcher.release_all(ReleaseReason.SHUTDOWN))
            self._finish_inflight()
            self._aborted = []  # stopping: a restart reads it again from the last commit
            self._send_pending()
            self._flush_and_commit()
        finally:
            self.producer.flush(s.flush_timeout_s)  # anything not yet acknowledged
            self.consumer.close()  # leaves the group at once: partitions move without waiting
            self.producer.close()  # no reconnecting to a broker that may be gone next

    def _step(self) -> None:
        max_size = self.batcher.policy.max_size
        want = max(1, max_size - len(self.batcher))
        # The records a consume returns arrived after the previous consume returned, and
        # may have waited there while the last batch was processed: the window counts from
        # then (MicroBatcher.add). Counting from now added a batch's processing time to the
        # wait of every event that came in meanwhile (benchmarks/README.md, "The window's
        # start").
        arrived = self._looked_ms
        held = self._inflight  # a batch in flight waits for no consume: it is finished below
        idle_s = 0.5
        if self._held:
            idle_s = self._resume_due(idle_s)
        if len(self.batcher):
            # Wakes when `want` records are here or the pending batch's deadline comes.
            wait = 0.0 if held is not None else self.batcher.timeout_s()
            msgs = self.consumer.consume(num_messages=want, timeout=wait)
        else:
            # Nothing pending: take what is already fetched; else wake on the first record
            # (its arrival opens the window), not on a full batch.
            msgs = self.consumer.consume(num_messages=want, timeout=0)
            if not msgs and held is None:
                msgs = self.consumer.consume(num_messages=1, timeout=idle_s)
                arrived = None  # it came in during this wait: it arrived now
        self._looked_ms = self.batcher.clock()
        good = msgs
        errs = list(map(Message.error, msgs))
        # any(), not errs.count(None): the client's KafkaError == None raises (SystemError).
        if any(errs):
            good = [m for m, e in zip(msgs, errs, strict=True) if e is None]
            for m, err in zip(msgs, errs, strict=True):
                if err is None or err.code() == CkError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaError(f"consumer error: {err}", topic=m.topic(),
                                     partition=m.partition())  # fmt: skip
                if err.code() in _DENIED:  # retrying never grants an ACL: stop, say which
                    raise KafkaError(
                        f"not allowed to read {m.topic()}: {err.str()}; the principal needs "
                        "the ACLs of `streamproc acls plan -c PIPELINE --principal ...`",
                        topic=m.topic(), partition=m.partition(),
                    )  # fmt: skip
                # Transient (a topic not there yet, a broker going away): the client retries.
                log.warning("consumer error on %s[%s]: %s", m.topic(), m.partition(), err)
        if good:
            oldest = min(m.timestamp()[1] for m in good) if self.settings.use_event_age else None
            self._process_all(self.batcher.add(good, oldest, arrived))
        self._process_all(self.batcher.release_due())
        if held is not None and self._inflight is held:  # no next batch was due: finish it
            self._finish_inflight()
            self._process_all([])  # rewinds if its transaction aborted
        if not msgs and self._inflight is None and not len(self.batcher):
            self._send_pending()  # idle: an alert decided between batches goes out now
        if not msgs and self._uncommitted:
            self._commit_if_due()  # idle: the last batches' offsets need no new batch
        now = self.monotonic()
        if now - self._last_lag >= self.settings.lag_interval_s:
            self._last_lag = now
            self._report_lag()

    # -- one batch -------------------------------------------------------------------------

    def _process_all(self, releases: list[Released[Message]]) -> None:
        """Process released batches in order. Once a batch's transaction is aborted
        (exactly-once), the batches after it are not processed: committing them would move
        the offsets past the aborted batch. It, the batch that was in flight then (if any)
        and every record read after them are read again (:meth:`_rewind`)."""
        for i in range(len(releases) + 1):
            if self._aborted:
                later = [m for r in releases[i:] for m in r.items]
                later += [m for r in self.batcher.release_all(ReleaseReason.REBALANCE)
                          for m in r.items]  # fmt: skip
                self._rewind(self._aborted, later)
                self._aborted = []
                return
            if i < len(releases):
                self._process(releases[i])
                if self._newly_held:
                    releases[i + 1 :] = self._drop_held(releases[i + 1 :])

    def _process(self, rel: Released[Message]) -> None:
        raw = to_raw_batch(self.settings.topic, rel.items, rel)
        if self._overlap is not None:
            got = self._handle_with_retry(raw, rel.items, self._overlap.start)
            if got is None:  # every event of it waits for the registry
                return
            raw, started = got
            self._finish_inflight()  # the batch before it: outputs and commits keep order
            if self._aborted:  # its transaction aborted: this one is read again after it
                self._aborted.append(raw)
                return
            self._inflight = (raw, started)
            return
        if not self.settings.exactly_once:
            # at-least-once: a due commit of the batches before this one, before the handler
            # changes its state with this one (see defer_state; no wait when the producer's
            # queue is empty, a flush of up to flush_timeout_s when it stayed busy)
            self._commit_if_due()
        done = self._handle_with_retry(raw, rel.items, self.handler)
        if done is None:  # every event of it waits for the registry
            return
        raw, out = done
        self._deliver(raw, out)

    def _finish_inflight(self) -> None:
        if self._inflight is None or self._overlap is None:
            return
        raw, started = self._inflight
        self._inflight = None
        self._deliver(raw, self._overlap.finish(started))

    def _deliver(self, raw: RawBatch, out: Outputs) -> None:
        self._commit(raw, out)
        if out.stats is not None:
            self.sensor.on_batch(out.stats)

    def _handle_with_retry(
        self, raw: RawBatch, msgs: list[Message], handle: Callable[[RawBatch], Any]
    ) -> tuple[RawBatch, Any] | None:
        """Run the handler; the events that wait for the registry are held back.

        When the handler raises :class:`RegistryUnavailableError` (the decoder names the
        rows that need a schema the registry did not give; None: all of them), each
        partition with such a row is held from its first one (:meth:`_hold`) and the
        handler runs again on what comes before, in every partition: the batch that
        returns, with the handler's result, may be smaller than ``raw``; None when nothing
        is left. Nothing waits here: the loop goes on with the other partitions.
        """
        while True:
            try:
                result = handle(raw)
            except RegistryUnavailableError as exc:
                n = len(raw)
                stuck = np.arange(n) if not exc.rows else np.asarray(exc.rows, dtype=np.int64)
                first: dict[int, int] = {}
                for p, o in zip(raw.partitions[stuck].tolist(), raw.offsets[stuck].tolist(),
                                strict=True):  # fmt: skip
                    if o < first.get(p, o + 1):
                        first[p] = o
                limit = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
                for p, o in first.items():
                    limit[raw.partitions == p] = o
                    self._hold(p, o, exc)
                keep = np.flatnonzero(raw.offsets < limit)
                if not keep.size:
                    return None
                msgs = [msgs[i] for i in keep.tolist()]
                raw = replace(
                    raw,
                    values=[raw.values[i] for i in keep.tolist()],
                    keys=[raw.keys[i] for i in keep.tolist()],
                    partitions=raw.partitions[keep],
                    offsets=raw.offsets[keep],
                    headers=LazyHeaders(msgs),
                )
                continue
            if self._held:  # a held partition read again and decoded: its backoff restarts
                for p in np.unique(raw.partitions).tolist():
                    h = self._held.get(p)
                    if h is not None and not h.paused:
                        del self._held[p]
            return raw, result

    def _hold(self, partition: int, offset: int, exc: RegistryUnavailableError) -> None:
        """Pause a partition, rewind it to ``offset`` and resume it after the backoff."""
        s = self.settings
        if partition not in {a.partition for a in self._assignment}:
            return  # not ours any more: its new owner reads it from the last commit
        h = self._held.get(partition)
        attempt = 1 if h is None else h.attempt + 1
        delay = min(s.registry_retry_initial_s * 2 ** (attempt - 1), s.registry_retry_max_s)
        tp = TopicPartition(s.topic, partition, offset)
        # Pause first: librdkafka resumes a paused partition from the seek position; a pause
        # after the seek would reset it to the last record handed to us.
        self.consumer.pause([tp])
        self.consumer.seek(tp)
        self._held[partition] = _Hold(offset, attempt, self.monotonic() + delay)
        self._newly_held.add(partition)
        log.warning("registry unavailable for schema id(s) %s: partition %d waits at offset %d, "
                    "retry %d in %.2fs: %s", list(exc.schema_ids), partition, offset, attempt,
                    delay, exc)  # fmt: skip
        self.sensor.on_registry_retry(attempt, delay)

    def _drop_held(self, releases: list[Released[Message]]) -> list[Released[Message]]:
        """Drop the records of the partitions held since they were read, here and in the
        batcher: they are read again from the held offset once the partition resumes."""
        gone, self._newly_held = self._newly_held, set()

        def keep(items: list[Message]) -> list[Message]:
            return [m for m in items if m.partition() not in gone]

        out = [Released(k, r.reason, r.wait_ms) for r in releases if (k := keep(r.items))]
        if len(self.batcher):
            pending = [m for r in self.batcher.release_all(ReleaseReason.REBALANCE)
                       for m in r.items]  # fmt: skip
            # Held again from when the last look returned: they arrived before it.
            out += self.batcher.add(keep(pending), arrived_ms=self._looked_ms)
        return out

    def _resume_due(self, idle_s: float) -> float:
        """Resume the held partitions whose backoff is over; how long an idle look may wait
        (no longer than until the next one is due)."""
        now = self.monotonic()
        due = [p for p, h in self._held.items() if h.paused and h.resume_at <= now]
        if due:
            for p in due:
                self._held[p].paused = False
            self.consumer.resume([TopicPartition(self.settings.topic, p) for p in due])
        waits = [h.resume_at - now for h in self._held.values() if h.paused]
        return min([idle_s, *waits]) if waits else idle_s

    def _release_holds(self, parts: list[TopicPartition]) -> None:
        """Forget the holds of partitions given up; resume them (a pause outlives them)."""
        gone = [tp for tp in parts if self._held.pop(tp.partition, None) is not None]
        self._newly_held -= {tp.partition for tp in gone}
        if gone:
            self.consumer.resume([TopicPartition(self.settings.topic, tp.partition)
                                  for tp in gone])  # fmt: skip

    def _commit(self, raw: RawBatch, out: Outputs) -> None:
        """The commit protocol for one batch, in order: produce its outputs (predictions,
        dead letters, alerts, snapshots), have them acknowledged (a flush), then move its
        input offsets. Offsets never move past a record whose outputs are not durable.

        exactly-once: one transaction per batch; outputs (the handler's state records too)
        and offsets become visible together.
        at-least-once: the batch is produced now and its offsets kept; a due commit before
        a later batch (step 1, or :meth:`_process` before its handler runs when no batch is
        in flight), a revoke or a stop flushes and then commits them
        (:meth:`_flush_and_commit`). The handler's state records (``Outputs.state``, a window
        store's changelog, or with no batch in flight :meth:`BatchHandlerLike.state_records`
        asked at the commit) are produced only once that flush has acknowledged the outputs
        they follow, and flushed themselves before the offsets move: state that is durable
        never holds an event whose prediction is not.
        Every wait is bounded: the timeout of each step is in its comment.
        """
        s = self.settings
        offsets = next_offsets(s.topic, raw)
        if s.exactly_once:
            try:
                # 1. open a transaction for this batch (local state: no wait)
                self.producer.begin_transaction()
                # 2. produce predictions, dead letters, alerts, snapshots and state into it;
                #    no wait unless the producer's queue is full (_backpressure: 50 ms a look)
                self._produce_all(out)
                self._produce_records(out.state)
                # 3. add the input offsets to the same transaction: waits for the group
                #    coordinator, up to flush_timeout_s
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), s.flush_timeout_s
                )
                # 4. flush and commit: waits up to flush_timeout_s for every record to be
                #    acknowledged and for outputs and offsets to become visible atomically. A
                #    failed record makes it abortable (_abort_and_rewind); a timeout is not:
                #    it raises, and the broker aborts the transaction after its timeout.
                self.producer.commit_transaction(s.flush_timeout_s)
            except KafkaException as exc:
                self._abort_and_rewind(raw, exc)
                return
        else:
            # 1. if a commit is due, flush and commit the offsets of the batches produced
            #    before this one (_commit_if_due: no wait when the producer's queue is
            #    empty; a flush of up to flush_timeout_s when it stayed busy). With no batch
            #    in flight _process did this before the handler ran.
            if self._overlap is not None:
                self._commit_if_due()
            # 2. produce predictions, dead letters, alerts and snapshots; no wait unless the
            #    producer's queue is full (_backpressure: 50 ms a look); only a failed record
            #    reports back (_on_delivery)
            self._produce_all(out)
            # 3. remember the batch's input offsets (and state records) until a commit
            #    covers its records
            for tp in offsets:
                self._uncommitted[tp.partition] = tp.offset
            for r in out.state:
                self._state[(r.topic, r.partition, r.key)] = r
            # 4. serve the reports that have arrived (failures only), without waiting
            #    (timeout 0); a failed record stops the runner before any later offset moves
            self.producer.poll(0)
            self._raise_on_failed_delivery()
            # 5. backpressure: while too many records await acknowledgement, serve reports
            #    10 ms at a time, until a stop at the latest: a record the client gives up
            #    on (message.timeout.ms) leaves the queue and fails the next batch's step 4
            while len(self.producer) > s.max_pending and not self.stop_event.is_set():
                self.producer.poll(0.01)
            return
        self.batches_committed += 1

    def _send_pending(self) -> None:
        """Produce the records the handler has for no batch (:meth:`BatchHandlerLike.pending`).

        exactly-once: in a transaction of their own, with no offsets (1. begin: no wait;
        2. produce; 3. commit: waits up to flush_timeout_s for them to be acknowledged and
        visible). A transaction that must be aborted keeps them for the next idle look;
        any other failure stops the runner, as a batch's would.
        at-least-once: produced now; the next flush (a commit, a revoke, the stop) waits for
        them, and a failed one stops the runner at the next batch (_on_delivery).
        """
        self._pending += self.handler.pending()
        if not self._pending:
            return
        records, self._pending = self._pending, []
        if not self.settings.exactly_once:
            self._produce_records(records)
            self.producer.poll(0)  # serves failure reports already in, without waiting
            return
        try:
            self.producer.begin_transaction()
            self._produce_records(records)
            self.producer.commit_transaction(self.settings.flush_timeout_s)
        except KafkaException as exc:
            err = exc.args[0]
            if not err.txn_requires_abort():
                raise KafkaError(f"transaction failed: {err}", topic=self.settings.topic) from exc
            log.warning("aborting the transaction of %d records sent between batches; "
                        "sending them again: %s", len(records), err)  # fmt: skip
            self.producer.abort_transaction(self.settings.flush_timeout_s)
            self._pending = records + self._pending

    def _commit_if_due(self) -> None:
        """at-least-once, at most every ``commit_interval_s``: commit once the producer's
        queue is empty, which means every record produced so far is acknowledged (checked
        before a batch is produced, so no wait). A queue that stayed busy for another whole
        interval is flushed instead: the loop waits until every record in flight is
        acknowledged."""
        s = self.settings
        waited = self.monotonic() - self._last_commit
        if waited < s.commit_interval_s or not self._uncommitted:
            return
        self.producer.poll(0)  # serves failed records' reports: len() counts unserved ones
        if len(self.producer) == 0 or waited >= 2 * s.commit_interval_s:
            self._flush_and_commit(periodic=True)

    def _flush_and_commit(self, periodic: bool = False) -> None:
        """at-least-once: flush, so that every record produced so far is acknowledged, then
        commit the input offsets of every batch produced before the flush.

        Periodic (from :meth:`_commit_if_due`; the commit is asynchronous: one lost in a
        crash only means a longer replay) and before giving partitions up or stopping
        (synchronous: once it returns, a crash never replays these batches). A flush with
        records in flight blocks the loop until they are acknowledged (librdkafka sends
        what lingers at once). A failed delivery raises :class:`DeliveryError` and commits
        nothing.
        """
        s = self.settings
        if s.exactly_once or not self._uncommitted:
            return
        # Bounded by flush_timeout_s; records not acknowledged by then are still retried by
        # the client (up to its message.timeout.ms) and fail through _on_delivery if lost.
        remaining = self.producer.flush(s.flush_timeout_s)
        self._last_commit = self.monotonic()
        self._raise_on_failed_delivery()
        if remaining:
            if periodic:  # a slow broker: keep the offsets, try again at the next interval
                log.warning("%d records unacknowledged after %ss; offsets not committed yet",
                            remaining, s.flush_timeout_s)  # fmt: skip
                return
            raise DeliveryError(
                f"{remaining} records unacknowledged after {s.flush_timeout_s}s", topic=s.topic
            )
        # The outputs are acknowledged: now the state that follows them (the latest record
        # per key of the batches', then what the handler kept for the commit), then offsets.
        state, self._state = [*self._state.values(), *self.handler.state_records()], {}
        if state:
            self._produce_records(state)
            remaining = self.producer.flush(s.flush_timeout_s)
            self._raise_on_failed_delivery()
            if remaining:
                raise DeliveryError(f"{remaining} state records unacknowledged after "
                                    f"{s.flush_timeout_s}s", topic=s.topic)  # fmt: skip
        offsets = [TopicPartition(s.topic, p, o) for p, o in self._uncommitted.items()]
        self._uncommitted = {}
        try:
            if periodic:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Lost the partitions in a rebalance: the new owner replays from the last
            # commit (at-least-once allows the duplicate; nothing is lost).
            log.warning("offset commit failed after produce, batches will replay: %s", exc)
            return
        self.batches_committed += 1

    def _raise_on_failed_delivery(self) -> None:
        if self._delivery_errors:
            raise DeliveryError(f"records not acknowledged: {self._delivery_errors[:3]}",
                                topic=self.settings.topic)  # fmt: skip

    def _abort_and_rewind(self, raw: RawBatch, exc: KafkaException) -> None:
        err = exc.args[0]
        if not err.txn_requires_abort():
            raise KafkaError(f"transaction failed: {err}", topic=self.settings.topic) from exc
        log.warning("aborting transaction and replaying batch %s: %s", raw.batch_id, err)
        self.producer.abort_transaction(self.settings.flush_timeout_s)
        self._aborted = [raw]  # _process_all rewinds to it once the batch is done

    def _rewind(self, batches: list[RawBatch], later: list[Message]) -> None:
        """Seek each partition back to the earliest record of ``batches`` (the aborted one,
        and the one in flight then) or of the records read after them (``later``, dropped
        here), so all of them are read again."""
        first: dict[int, int] = {}
        for raw in batches:
            for tp in first_offsets(self.settings.topic, raw):
                first[tp.partition] = min(first.get(tp.partition, tp.offset), tp.offset)
        for m in later:
            p, o = int(m.partition() or 0), int(m.offset() or 0)  # consumed: both are set
            first[p] = min(first.get(p, o), o)
        held = {a.partition for a in self._assignment}
        for p, o in sorted(first.items()):
            if p in held:
                self.consumer.seek(TopicPartition(self.settings.topic, p, o))

    def _produce_all(self, out: Outputs) -> None:
        """Produce every record (a failed one reports to :meth:`_on_delivery`)."""
        produce = self.producer.produce
        for b in out.blocks:
            # The block's records go through ``map`` with positional arguments (topic, value,
            # key, partition, callback, on_delivery, timestamp, headers): the per-record loop
            # stays in C. No per-record callback: the producer's on_delivery serves failures.
            values, keys = iter(b.values), iter(b.keys)
            while True:
                try:
                    deque(map(produce, repeat(b.topic), values, keys, repeat(-1), repeat(None),
                              repeat(None), repeat(0), repeat(b.headers)), maxlen=0)  # fmt: skip
                    break
                except BufferError:
                    # The queue is full: the record just taken was not produced. Resume at it.
                    i = len(b.values) - length_hint(values) - 1
                    values, keys = iter(b.values[i:]), iter(b.keys[i:])
                    self._backpressure()
        self._produce_records(out.records)

    def _produce_records(self, records: list[OutRecord]) -> None:
        produce = self.producer.produce
        for r in records:
            extra = {} if r.partition is None else {"partition": r.partition}
            while True:
                try:
                    produce(r.topic, r.value, r.key, headers=r.headers, **extra)  # type: ignore[arg-type]
                    break
                except BufferError:
                    self._backpressure()

    def _backpressure(self) -> None:
        """The producer queue is full: stop fetching and let deliveries drain a little."""
        if self._assignment:
            self.consumer.pause(self._assignment)
        self.producer.poll(0.05)
        if self._assignment:
            # Not the partitions waiting for the registry: they resume after their backoff.
            free = [
                tp
                for tp in self._assignment
                if tp.partition not in self._held or not self._held[tp.partition].paused
            ]
            self.consumer.resume(free)

    def _on_delivery(self, err: CkError | None, msg: Message) -> None:
        """The producer's report for a failed record (``delivery.report.only.error``).
        at-least-once: the runner raises before the next commit; exactly-once: the
        transaction's commit fails and the batch is aborted and replayed (_commit)."""
        if err is not None:
            where = f"{msg.topic()}[{msg.partition()}]" if msg is not None else "?"
            log.warning("delivery failed %s: %s", where, err)
            if not self.settings.exactly_once:
                self._delivery_errors.append(f"{where}: {err}")

    # -- group membership ------------------------------------------------------------------

    @property
    def assigned_partitions(self) -> list[int] | None:
        """The input partitions this replica owns now; None until the group first gave it
        its share (an empty share: more replicas than partitions, waiting for one)."""
        return [tp.partition for tp in self._assignment] if self._joined else None

    # Both group protocols: under the classic one (eager) ``parts`` is the whole assignment,
    # given after a revoke of the whole previous one; under Kafka 4's consumer protocol
    # (KIP-848, incremental) it is only what is added or taken away, possibly nothing, and
    # the other partitions stay ours and keep flowing. The client itself applies the change
    # (assign or incremental_assign) when a callback returns. So the assignment grows and
    # shrinks by ``parts``, and a revoke rewinds the partitions that stay.

    def _on_assign(self, consumer: Any, parts: list[TopicPartition]) -> None:
        self._joined = True
        have = {tp.partition for tp in self._assignment}
        self._assignment += [tp for tp in parts if tp.partition not in have]
        log.info("assigned %s (added %s)", sorted(tp.partition for tp in self._assignment),
                 [tp.partition for tp in parts])  # fmt: skip
        # A stateful handler restores the added partitions' state before any of their records
        # is consumed (the client applies the assignment once this returns).
        self.handler.assigned(sorted(tp.partition for tp in parts))

    def _on_revoke(self, consumer: Any, parts: list[TopicPartition]) -> None:
        # Finish what we hold and commit it before these partitions move, so the next owner
        # starts exactly after it (what we hold of the partitions that stay goes out now
        # too). Records of partitions waiting for the registry are not here (_drop_held):
        # their commit stops before the waiting event.
        self._process_all(self.batcher.release_all(ReleaseReason.REBALANCE))
        # A batch in flight is decoded and scored already: finish and commit it too (it came
        # before any batch that waits for the registry).
        self._finish_inflight()
        self._flush_and_commit()
        gone = {tp.partition for tp in parts}
        self._assignment = [tp for tp in self._assignment if tp.partition not in gone]
        if self._aborted:
            # Its transaction aborted: the next owner of a revoked partition reads it from
            # the commit; a partition that stays is read again from it here.
            self._rewind(self._aborted, [])
            self._aborted = []
        self._release_holds(parts)
        self.handler.revoked(sorted(gone))  # their last batch and state are committed
        log.info("revoked %s, kept %s", sorted(gone),
                 sorted(tp.partition for tp in self._assignment))  # fmt: skip

    def _on_lost(self, consumer: Any, parts: list[TopicPartition]) -> None:
        # Ownership is already gone: committing would fail. Drop what we hold; the new
        # owner replays it from the last committed offset. The client loses the whole
        # assignment at once under either protocol, and so does the runner.
        self.batcher.release_all(ReleaseReason.REBALANCE)
        self._inflight = None  # started, never produced: replayed like the rest
        self._aborted = []
        self._release_holds(parts)
        self._uncommitted = {}  # produced, never committed: replayed (at-least-once)
        self._state = {}  # never produced: the new owner restores what the changelog holds
        self._assignment = []
        self.handler.revoked(sorted(tp.partition for tp in parts))
        log.warning("partitions lost %s", [p.partition for p in parts])

    def _report_lag(self) -> None:
        if not self._assignment:
            self.sensor.on_lag(self.settings.topic, {})  # none owned: none behind here
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
