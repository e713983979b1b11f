"""KafkaRunner's commit protocol without a broker: a fake consumer and producer record every
call in one log, can inject failures, and check at each offset commit that every output of
the records before the committed offset is acknowledged (a violation is recorded, not
raised, so the runner's own handling stays what it is). The real-broker tests of the same
behaviour are in test_runner.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError as CkError
from confluent_kafka import KafkaException, Message, TopicPartition

from streamproc.batching import WindowPolicy
from streamproc.errors import DeliveryError, KafkaError
from streamproc.kafka.runner import KafkaRunner, PlainHandler, RunnerSettings
from streamproc.types import BatchHandlerLike, Outputs, OutRecord, RawBatch, RecordBlock

TOPIC = "in"


class Broker:
    """What the fakes share: the input log, the call log, what is acknowledged (visible to
    a read_committed reader) and committed, and the failures to inject."""

    def __init__(self, values: bytes, partitions: int = 1) -> None:
        # One record per letter; partition p holds the letters at positions p, p+n, ...
        self.log: dict[int, list[Message]] = {p: [] for p in range(partitions)}
        for i in range(len(values)):
            p = i % partitions
            self.log[p].append(Message(topic=TOPIC, partition=p, offset=len(self.log[p]),
                                       key=None, value=values[i : i + 1], headers=None,
                                       error=None, timestamp=(1, 1000 + i)))  # fmt: skip
        self.calls: list[tuple[Any, ...]] = []
        self.acked: list[tuple[str, bytes | None]] = []  # (topic, value), in order
        self.committed: dict[int, int] = {}
        self.violations: list[str] = []
        # Injections.
        self.queue_limit = 1_000_000  # the producer's queue: a produce beyond it raises
        self.deliver_on_poll = True  # False: records wait in the queue until a flush
        self.fail_values: set[bytes] = set()  # their delivery fails (at-least-once raises)
        self.txn_errors: list[CkError | None] = []  # per commit_transaction, in order
        self.rebalances: list[tuple[str, list[int]]] = []  # run at the next consume
        self.on_idle: Callable[[], None] | None = None  # a consume with nothing to return

    def kinds(self, *names: str) -> list[str]:
        """The call log's entries of these kinds, by kind only."""
        return [c[0] for c in self.calls if c[0] in names]

    def values(self, topic: str) -> list[bytes | None]:
        return [v for t, v in self.acked if t == topic]

    def check_commit(self, offsets: dict[int, int], visible: list[tuple[str, bytes | None]]):
        """Every input record before a committed offset has its output among ``visible``."""
        out = {v for _, v in visible}
        for p, o in offsets.items():
            missing = [m.value() for m in self.log[p][:o] if m.value() not in out]
            if missing:
                self.violations.append(f"commit {p}@{o} before {missing} were acknowledged")


class FakeConsumer:
    def __init__(self, conf: dict[str, Any], broker: Broker) -> None:
        self.b = broker
        self.conf = conf
        self.callbacks: dict[str, Any] = {}
        self.assigned: set[int] = set()
        self.paused: set[int] = set()
        self.pos: dict[int, int] = {}
        self.subscribed = False

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None,
                  on_lost: Any = None) -> None:  # fmt: skip
        self.b.calls.append(("subscribe", topics))
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        if not self.subscribed:  # the group assigns every partition to its only member
            self.b.rebalances.insert(0, ("assign", sorted(self.b.log)))
        self.subscribed = True

    def _rebalance(self, kind: str, parts: list[int]) -> None:
        tps = [TopicPartition(TOPIC, p) for p in parts]
        self.b.calls.append((kind, parts))
        if kind == "assign":
            for p in parts:  # as the client does: from the committed offset, else the start
                self.pos[p] = self.b.committed.get(p, 0)
        self.callbacks[kind](self, tps)
        self.b.calls.append((f"{kind}-done", parts))
        if kind == "assign":
            self.assigned |= set(parts)
        else:
            self.assigned -= set(parts)
            self.paused -= set(parts)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        self.b.calls.append(("consume", num_messages, timeout))
        while self.b.rebalances:  # the client runs rebalance callbacks inside consume
            self._rebalance(*self.b.rebalances.pop(0))
        out: list[Message] = []
        for p in sorted(self.assigned - self.paused):
            log = self.b.log[p]
            while len(out) < num_messages and self.pos[p] < len(log):
                out.append(log[self.pos[p]])
                self.pos[p] += 1
        if not out and self.b.on_idle is not None:
            self.b.on_idle()
        return out

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.b.calls.append(("pause", [tp.partition for tp in partitions]))
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.b.calls.append(("resume", [tp.partition for tp in partitions]))
        self.paused -= {tp.partition for tp in partitions}

    def seek(self, partition: TopicPartition) -> None:
        self.b.calls.append(("seek", partition.partition, partition.offset))
        self.pos[partition.partition] = partition.offset

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool = True) -> Any:
        got = {tp.partition: tp.offset for tp in offsets}
        self.b.calls.append(("commit", got, asynchronous))
        self.b.check_commit(got, self.b.acked)
        self.b.committed.update(got)
        return None if asynchronous else offsets

    def consumer_group_metadata(self) -> Any:
        return "group-metadata"

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, tp.partition, self.pos[tp.partition]) for tp in partitions]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        return 0, len(self.b.log[partition.partition])

    def close(self) -> None:
        self.b.calls.append(("consumer.close",))


class FakeProducer:
    def __init__(self, conf: dict[str, Any], broker: Broker) -> None:
        self.b = broker
        self.on_delivery = conf["on_delivery"]  # the runner's report for failed records
        self.queue: list[tuple[str, bytes | None]] = []
        self.txn: list[tuple[str, bytes | None]] | None = None
        self.txn_offsets: dict[int, int] = {}

    def produce(self, topic: str, value: Any = None, key: Any = None, partition: int = -1,
                callback: Any = None, on_delivery: Any = None, timestamp: int = 0,
                headers: Any = None) -> None:  # fmt: skip
        if len(self.queue) >= self.b.queue_limit:
            self.b.calls.append(("queue-full", topic, value))
            raise BufferError("Local: Queue full")
        self.b.calls.append(("produce", topic, value))
        self.queue.append((topic, value))

    def _deliver(self) -> None:
        """Acknowledge the queue (into the open transaction, if any); report failures."""
        queue, self.queue = self.queue, []
        for topic, value in queue:
            if value in self.b.fail_values:
                err = CkError(CkError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
                self.on_delivery(err, Message(topic=topic, partition=0, value=value))
            elif self.txn is not None:
                self.txn.append((topic, value))
            else:
                self.b.acked.append((topic, value))

    def poll(self, timeout: float = -1) -> int:
        self.b.calls.append(("poll", timeout))
        if self.b.deliver_on_poll:
            self._deliver()
        return 0

    def flush(self, timeout: float = -1) -> int:
        self.b.calls.append(("flush", timeout))
        self._deliver()
        return 0

    def __len__(self) -> int:
        return len(self.queue)

    def init_transactions(self, timeout: float = -1) -> None:
        self.b.calls.append(("init_transactions", timeout))

    def begin_transaction(self) -> None:
        self.b.calls.append(("begin_transaction",))
        self.txn, self.txn_offsets = [], {}

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        got = {tp.partition: tp.offset for tp in positions}
        self.b.calls.append(("send_offsets", got, timeout))
        assert group_metadata == "group-metadata"
        self.txn_offsets = got

    def commit_transaction(self, timeout: float = -1) -> None:
        self.b.calls.append(("commit_transaction", timeout))
        self._deliver()  # the client flushes before it commits
        err = self.b.txn_errors.pop(0) if self.b.txn_errors else None
        if err is not None:
            raise KafkaException(err)
        assert self.txn is not None
        self.b.check_commit(self.txn_offsets, self.b.acked + self.txn)
        self.b.acked += self.txn
        self.b.committed.update(self.txn_offsets)
        self.txn = None

    def abort_transaction(self, timeout: float = -1) -> None:
        self.b.calls.append(("abort_transaction", timeout))
        self.queue, self.txn = [], None

    def close(self) -> bool:
        self.b.calls.append(("producer.close",))
        return True


class Echo(BatchHandlerLike):
    """Each value to ``preds`` (or ``dlq`` when in ``dead``), and one alert per batch."""

    def __init__(self, dead: bytes = b"") -> None:
        self.dead = set(dead[i : i + 1] for i in range(len(dead)))
        self.seen: list[bytes] = []  # each call's values, joined

    def __call__(self, raw: RawBatch) -> Outputs:
        values = [v or b"" for v in raw.values]
        self.seen.append(b"".join(values))
        out = Outputs(records=[OutRecord("dlq" if v in self.dead else "preds", None, v)
                               for v in values])  # fmt: skip
        out.records.append(OutRecord("alerts", None, b"alert-" + b"".join(values)))
        return out


class Overlapping(Echo):
    """A handler split in two, logging its calls: what a GPU-backed BatchHandler offers."""

    overlaps = True

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, bytes]] = []

    def start(self, raw: RawBatch) -> RawBatch:
        self.log.append(("start", b"".join(v or b"" for v in raw.values)))
        return raw

    def finish(self, started: RawBatch) -> Outputs:
        self.log.append(("finish", b"".join(v or b"" for v in started.values)))
        return self(started)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _runner(
    broker: Broker,
    handler: BatchHandlerLike,
    max_size: int = 2,
    clock: Clock | None = None,
    **settings: Any,
) -> KafkaRunner:
    """A runner on the fakes. Its batch clock stands still, so batches are released only
    when full or at a stop or rebalance; its monotonic clock moves only when a test says."""
    return KafkaRunner(
        consumer_conf={"group.id": "g"},
        producer_conf={},
        settings=RunnerSettings(topic=TOPIC, **settings),
        handler=handler,
        policy=WindowPolicy(max_size=max_size, max_wait_ms=5),
        clock_ms=lambda: 0.0,
        monotonic=clock or Clock(),
        consumer_factory=lambda conf: FakeConsumer(conf, broker),
        producer_factory=lambda conf: FakeProducer(conf, broker),
    )


def _run_until_idle(broker: Broker, runner: KafkaRunner) -> None:
    """run() until a consume finds nothing left to read, then stop (as SIGTERM would)."""
    broker.on_idle = runner.request_stop
    runner.run()


def _steps(runner: KafkaRunner, n: int) -> None:
    """Steps of run()'s loop (subscribed first, as run() does)."""
    if not isinstance(runner.consumer, FakeConsumer) or not runner.consumer.subscribed:
        runner.consumer.subscribe([TOPIC], on_assign=runner._on_assign,
                                  on_revoke=runner._on_revoke, on_lost=runner._on_lost)  # fmt: skip
    for _ in range(n):
        runner._step()


# -- ordering ------------------------------------------------------------------------------


def test_at_least_once_produces_flushes_then_commits() -> None:
    broker = Broker(b"ABCD")
    handler = Echo(dead=b"C")
    runner = _runner(broker, handler, flush_timeout_s=7.0)
    _run_until_idle(broker, runner)
    assert handler.seen == [b"AB", b"CD"]
    assert broker.values("preds") == [b"A", b"B", b"D"]
    assert broker.values("dlq") == [b"C"] and broker.values("alerts") == [b"alert-AB",
                                                                          b"alert-CD"]  # fmt: skip
    # Every output produced, then one flush (bounded by flush_timeout_s), then one
    # synchronous commit of the offset after the last record; nothing commits before (the
    # last flush is the one on the way out, after the loop).
    tail = [c for c in broker.calls if c[0] in ("produce", "flush", "commit")]
    assert [c[0] for c in tail] == ["produce"] * 6 + ["flush", "commit", "flush"]
    assert tail[-3] == ("flush", 7.0) and tail[-2] == ("commit", {0: 4}, False)
    assert broker.committed == {0: 4} and broker.violations == []
    assert broker.kinds("consumer.close", "producer.close") == ["consumer.close", "producer.close"]


def test_at_least_once_a_due_commit_waits_for_every_acknowledgement() -> None:
    # The commit interval is 1 s on the injected clock. Records are acknowledged only by a
    # flush: a due commit waits while the queue is busy, and after another whole interval
    # flushes, then commits the offsets of every batch produced before.
    broker = Broker(b"ABCDEFGH")
    broker.deliver_on_poll = False
    clock = Clock()
    runner = _runner(broker, Echo(), clock=clock, commit_interval_s=1.0)
    _steps(runner, 2)  # AB, CD: produced, not acknowledged
    assert runner._uncommitted == {0: 4} and broker.kinds("flush", "commit") == []
    clock.now += 1.5  # due, but the queue is busy: no commit
    _steps(runner, 1)  # EF
    assert runner._uncommitted == {0: 6} and broker.kinds("flush", "commit") == []
    clock.now += 1.0  # busy for another whole interval: flush, then commit AB..EF's offsets
    _steps(runner, 1)  # GH is produced after that commit
    assert broker.kinds("flush", "commit") == ["flush", "commit"]
    commit = next(c for c in broker.calls if c[0] == "commit")
    assert commit == ("commit", {0: 6}, True)  # periodic: asynchronous
    last_produce_before = max(i for i, c in enumerate(broker.calls)
                              if c[0] == "produce" and c[2] == b"F")  # fmt: skip
    flush_at = broker.calls.index(next(c for c in broker.calls if c[0] == "flush"))
    assert last_produce_before < flush_at < broker.calls.index(commit)
    assert runner._uncommitted == {0: 8} and broker.violations == []


def test_at_least_once_an_idle_loop_commits_once_due_without_a_new_batch() -> None:
    # Deliveries are acknowledged as the producer is polled: once due, the idle loop
    # commits what was produced (the queue is empty: the flush returns at once).
    broker = Broker(b"AB")
    clock = Clock()
    runner = _runner(broker, Echo(), clock=clock, commit_interval_s=1.0)
    _steps(runner, 2)
    assert broker.kinds("commit") == []
    clock.now += 1.0
    _steps(runner, 1)
    assert broker.kinds("flush", "commit") == ["flush", "commit"]  # the flush finds it empty
    assert broker.committed == {0: 2} and broker.violations == []


def test_exactly_once_one_transaction_per_batch_outputs_then_offsets() -> None:
    broker = Broker(b"ABCD")
    runner = _runner(broker, Echo(dead=b"B"), exactly_once=True, flush_timeout_s=9.0)
    _run_until_idle(broker, runner)
    txn = ("begin_transaction", "produce", "send_offsets", "commit_transaction", "commit",
           "flush", "init_transactions")  # fmt: skip
    per_batch = ["begin_transaction", "produce", "produce", "produce", "send_offsets",
                 "commit_transaction"]  # fmt: skip
    # The consumer never commits: the offsets go with the outputs in each transaction.
    assert broker.kinds(*txn) == ["init_transactions", *per_batch, *per_batch, "flush"]
    sends = [c for c in broker.calls if c[0] == "send_offsets"]
    assert sends == [("send_offsets", {0: 2}, 9.0), ("send_offsets", {0: 4}, 9.0)]
    assert [c for c in broker.calls if c[0] == "commit_transaction"] == [
        ("commit_transaction", 9.0)] * 2  # fmt: skip
    assert broker.values("preds") == [b"A", b"C", b"D"] and broker.values("dlq") == [b"B"]
    assert broker.committed == {0: 4} and broker.violations == []


# -- failures ------------------------------------------------------------------------------


def _abortable() -> CkError:
    return CkError(CkError._STATE, "abortable", fatal=False, txn_requires_abort=True)


def test_exactly_once_an_abort_rewinds_and_later_batches_are_read_again() -> None:
    # One consume brings A..F, cut into AB, CD and EF at once. CD's transaction fails with
    # an abortable error: it is aborted, EF (read after it) is dropped unprocessed, and the
    # partition is rewound to C. Nothing is committed past B until CD's replay commits.
    broker = Broker(b"ABCDEF")
    broker.txn_errors = [None, _abortable()]
    handler = Echo()
    runner = _runner(broker, handler, exactly_once=True)
    runner.producer.init_transactions(1)
    runner.consumer.subscribe([TOPIC], on_assign=runner._on_assign, on_revoke=runner._on_revoke,
                              on_lost=runner._on_lost)  # fmt: skip
    msgs = runner.consumer.consume(6, 0)
    runner._process_all(runner.batcher.add(msgs))
    assert handler.seen == [b"AB", b"CD"]  # EF never handled before the rewind
    assert broker.kinds("abort_transaction", "seek") == ["abort_transaction", "seek"]
    assert ("seek", 0, 2) in broker.calls
    assert broker.committed == {0: 2}
    _run_until_idle(broker, runner)
    assert handler.seen == [b"AB", b"CD", b"CD", b"EF"]
    assert broker.values("preds") == list(b"ABCDEF"[i : i + 1] for i in range(6))  # once each
    assert broker.committed == {0: 6} and broker.violations == []


def test_exactly_once_an_abort_drops_the_batch_in_flight_and_reads_it_again() -> None:
    broker = Broker(b"ABCDEF")
    broker.txn_errors = [None, _abortable()]
    handler = Overlapping()
    runner = _runner(broker, handler, exactly_once=True)
    _run_until_idle(broker, runner)
    # AB committed; CD aborted when finished (EF in flight then: dropped, never finished);
    # CD and EF read again from C.
    assert handler.log[:5] == [("start", b"AB"), ("start", b"CD"), ("finish", b"AB"),
                               ("start", b"EF"), ("finish", b"CD")]  # fmt: skip
    assert ("seek", 0, 2) in broker.calls
    assert [v for what, v in handler.log[5:] if what == "finish"] == [b"CD", b"EF"]
    assert broker.values("preds") == list(b"ABCDEF"[i : i + 1] for i in range(6))
    assert broker.committed == {0: 6} and broker.violations == []


def test_exactly_once_a_fatal_error_stops_the_runner_without_committing() -> None:
    broker = Broker(b"ABCD")
    broker.txn_errors = [None, CkError(CkError._FENCED, "fenced", fatal=True)]
    runner = _runner(broker, Echo(), exactly_once=True)
    with pytest.raises(KafkaError, match="transaction failed"):
        _run_until_idle(broker, runner)
    assert broker.kinds("abort_transaction") == []  # a fatal error is not aborted
    assert broker.committed == {0: 2}  # AB's transaction only
    assert broker.values("preds") == [b"A", b"B"]
    assert broker.kinds("consumer.close", "producer.close") == ["consumer.close", "producer.close"]


class Deciding(Echo):
    """A handler with an alert decided between batches (a rollout guard's rollback)."""

    def __init__(self) -> None:
        super().__init__()
        self.later = [OutRecord("alerts", b"fraud", b"rollback")]

    def pending(self) -> list[OutRecord]:
        out, self.later = self.later, []
        return out


def test_exactly_once_records_for_no_batch_go_out_when_idle_in_their_own_transaction() -> None:
    broker = Broker(b"AB")
    runner = _runner(broker, Deciding(), exactly_once=True, flush_timeout_s=9.0)
    _run_until_idle(broker, runner)
    # The batch's transaction, then (nothing left to read) one with the alert and no offsets.
    assert broker.kinds("begin_transaction", "send_offsets", "commit_transaction") == [
        "begin_transaction", "send_offsets", "commit_transaction",
        "begin_transaction", "commit_transaction",
    ]  # fmt: skip
    assert broker.values("alerts") == [b"alert-AB", b"rollback"]
    assert broker.committed == {0: 2} and broker.violations == []


def test_exactly_once_an_aborted_transaction_for_no_batch_sends_its_records_again() -> None:
    broker = Broker(b"")
    broker.txn_errors = [_abortable()]
    handler = Deciding()
    runner = _runner(broker, handler, exactly_once=True)
    _steps(runner, 1)
    assert broker.kinds("abort_transaction") == ["abort_transaction"]
    assert broker.values("alerts") == [] and handler.later == []  # the runner keeps it
    _steps(runner, 1)
    assert broker.values("alerts") == [b"rollback"]  # once


def test_at_least_once_records_for_no_batch_go_out_when_idle() -> None:
    broker = Broker(b"")
    runner = _runner(broker, Deciding())
    _steps(runner, 1)
    assert broker.kinds("begin_transaction") == []
    assert broker.values("alerts") == [b"rollback"]  # acknowledged on the poll that follows


def test_a_fatal_error_sending_records_for_no_batch_stops_the_runner() -> None:
    broker = Broker(b"")
    broker.txn_errors = [CkError(CkError._FENCED, "fenced", fatal=True)]
    runner = _runner(broker, Deciding(), exactly_once=True)
    with pytest.raises(KafkaError, match="transaction failed"):
        _steps(runner, 1)


def test_at_least_once_a_failed_delivery_stops_before_any_later_offset_moves() -> None:
    # B's record fails (the broker refuses it): the runner raises as soon as the report is
    # served (right after AB is produced), before committing AB and before producing CD.
    broker = Broker(b"ABCDEF")
    broker.fail_values = {b"B"}
    runner = _runner(broker, Echo())
    with pytest.raises(DeliveryError, match="records not acknowledged"):
        _run_until_idle(broker, runner)
    assert broker.kinds("commit") == [] and broker.committed == {}
    assert b"C" not in [c[2] for c in broker.calls if c[0] == "produce"]


def test_a_full_producer_queue_pauses_consumption_until_deliveries_drain() -> None:
    # The queue holds 2 records; a batch of 4 outputs (plus a block of 3 and an alert) fills
    # it again and again. Each time the runner pauses its partitions, serves deliveries and
    # resumes; nothing is consumed meanwhile and every record is produced once, in order.
    broker = Broker(b"ABCD")
    broker.queue_limit = 2

    class WithBlock(Echo):
        def __call__(self, raw: RawBatch) -> Outputs:
            out = super().__call__(raw)
            vals = [b"b%d" % i for i in range(3)]
            out.blocks.append(RecordBlock("block", [None] * 3, vals))  # type: ignore[arg-type]
            return out

    runner = _runner(broker, WithBlock(), max_size=4)
    _run_until_idle(broker, runner)
    full = [i for i, c in enumerate(broker.calls) if c[0] == "queue-full"]
    assert full, "the queue never filled"
    for i in full:  # each full queue: pause, drain (a bounded poll), resume, produce again
        assert [c[0] for c in broker.calls[i + 1 : i + 4]] == ["pause", "poll", "resume"]
        assert broker.calls[i + 1] == ("pause", [0]) and broker.calls[i + 2] == ("poll", 0.05)
        assert broker.calls[i + 4][:3] == ("produce", *broker.calls[i][1:3])
    assert broker.values("block") == [b"b0", b"b1", b"b2"]
    assert broker.values("preds") == [b"A", b"B", b"C", b"D"]
    assert broker.committed == {0: 4} and broker.violations == []


# -- rebalances ----------------------------------------------------------------------------


def test_a_revoke_finishes_and_commits_the_pending_batches_before_the_partitions_move() -> None:
    # AB is in flight (started, not finished) and C waits in the batcher when the
    # partition is revoked: both are finished, produced, flushed and committed (synchronous)
    # inside the revoke, so the next owner starts at D.
    broker = Broker(b"ABCDE")
    handler = Overlapping()
    runner = _runner(broker, handler, max_size=2)
    _steps(runner, 1)  # assign; AB started, in flight
    runner.batcher.add([broker.log[0][2]])  # C read, its batch not full
    assert runner._inflight is not None and len(runner.batcher) == 1
    broker.rebalances.append(("revoke", [0]))
    _steps(runner, 1)
    i, j = broker.calls.index(("revoke", [0])), broker.calls.index(("revoke-done", [0]))
    inside = [c[0] for c in broker.calls[i:j] if c[0] in ("produce", "flush", "commit")]
    assert inside == ["produce"] * 5 + ["flush", "commit"]  # AB + alert, C + alert
    assert ("commit", {0: 3}, False) in broker.calls[i:j]
    assert handler.log == [("start", b"AB"), ("start", b"C"), ("finish", b"AB"),
                           ("finish", b"C")]  # fmt: skip
    assert runner._inflight is None and runner._assignment == []
    assert broker.committed == {0: 3} and broker.violations == []


def test_a_lost_assignment_drops_the_batch_in_flight_and_commits_nothing() -> None:
    # AB is produced (not committed: none is due) and CD is in flight when the partition is
    # lost: CD is never finished, nothing is committed, and the next owner (here this same
    # runner, assigned again) reads from the start: at-least-once, AB comes out twice.
    broker = Broker(b"ABCDE")
    handler = Overlapping()
    runner = _runner(broker, handler, max_size=2)
    _steps(runner, 2)  # AB started; CD started, AB finished and produced
    assert runner._uncommitted == {0: 2} and runner._inflight is not None
    broker.rebalances.append(("lost", [0]))
    _steps(runner, 1)
    runner._flush_and_commit()  # what a revoke or a stop does: nothing left to commit
    assert runner._inflight is None and runner._uncommitted == {}
    assert [v for what, v in handler.log if what == "finish"] == [b"AB"]
    assert broker.kinds("commit") == [] and broker.committed == {}
    broker.rebalances.append(("assign", [0]))
    _run_until_idle(broker, runner)
    assert broker.values("preds") == [b"A", b"B", b"A", b"B", b"C", b"D", b"E"]
    assert broker.committed == {0: 5} and broker.violations == []


def test_a_plain_function_is_a_handler_that_does_not_overlap() -> None:
    handler = PlainHandler(lambda raw: Outputs())
    assert handler.overlaps is False
    runner = _runner(Broker(b""), handler)
    assert runner._overlap is None


# -- incremental rebalances (Kafka 4's consumer protocol, KIP-848) -------------------------
# The fake consumer applies each rebalance as a change to its assignment, as the client does
# under the consumer protocol: a revoke takes away only the partitions it names.


def test_an_incremental_revoke_commits_and_the_partitions_that_stay_keep_flowing() -> None:
    broker = Broker(b"ACEG", partitions=1)
    broker.log[1] = [Message(topic=TOPIC, partition=1, offset=i, value=v, timestamp=(1, 1))
                     for i, v in enumerate([b"B", b"D"])]  # fmt: skip
    runner = _runner(broker, Echo(), max_size=3)
    _steps(runner, 1)  # assigned [0, 1]; A C E from partition 0
    assert sorted(tp.partition for tp in runner._assignment) == [0, 1]
    broker.rebalances.append(("revoke", [1]))
    _steps(runner, 1)  # the revoke commits A C E; G is read after it
    i, j = broker.calls.index(("revoke", [1])), broker.calls.index(("revoke-done", [1]))
    assert [c for c in broker.calls[i:j] if c[0] == "commit"] == [("commit", {0: 3}, False)]
    assert [tp.partition for tp in runner._assignment] == [0]
    assert broker.kinds("seek") == []
    broker.rebalances.append(("assign", [1]))  # partition 1 comes back
    _run_until_idle(broker, runner)
    assert sorted(tp.partition for tp in runner._assignment) == [0, 1]
    assert sorted(broker.values("preds")) == [b"A", b"B", b"C", b"D", b"E", b"G"]
    assert broker.committed == {0: 4, 1: 2} and broker.violations == []


def test_an_abort_during_an_incremental_revoke_rewinds_the_partitions_that_stay() -> None:
    # A C (partition 0) and B D (partition 1) are one batch, in flight when partition 1 is
    # revoked. Finishing it in the revoke, its transaction aborts: partition 0 stays and is
    # read again from A; partition 1's next owner reads it from its last commit.
    broker = Broker(b"ABCD", partitions=2)
    broker.txn_errors = [_abortable()]
    handler = Overlapping()
    runner = _runner(broker, handler, max_size=4, exactly_once=True)
    _steps(runner, 1)
    assert handler.log == [("start", b"ACBD")] and runner._inflight is not None
    broker.rebalances.append(("revoke", [1]))
    _run_until_idle(broker, runner)
    assert broker.kinds("abort_transaction") == ["abort_transaction"]
    assert [c for c in broker.calls if c[0] == "seek"] == [("seek", 0, 0)]
    assert handler.log[1:] == [("finish", b"ACBD"), ("start", b"AC"), ("finish", b"AC")]
    assert broker.values("preds") == [b"A", b"C"]
    assert broker.committed == {0: 2} and broker.violations == []


def test_a_denied_read_stops_the_runner_naming_the_topic_and_the_fix() -> None:
    # The broker refuses the input topic (no Read ACL): retrying never helps, so the runner
    # stops with the topic and `acls plan`, not a warning a second forever.
    broker = Broker(b"AB")
    denied = CkError(CkError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed")
    broker.log[0].insert(0, Message(topic=TOPIC, partition=0, offset=0, error=denied))
    runner = _runner(broker, Echo())
    with pytest.raises(KafkaError, match=rf"not allowed to read {TOPIC}: .*acls plan"):
        _run_until_idle(broker, runner)
    assert broker.committed == {} and broker.values("preds") == []


# -- a stateful handler (windowed features): state records and rebalance hooks ---------------


class Stateful(Echo):
    """Echo with a state record per batch (``Outputs.state``) and a log of rebalance hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks: list[tuple[str, list[int]]] = []

    def __call__(self, raw: RawBatch) -> Outputs:
        out = super().__call__(raw)
        joined = b"".join(v or b"" for v in raw.values)
        out.state = [OutRecord("state", b"k", b"state-" + joined, partition=0)]
        return out

    def assigned(self, partitions: list[int]) -> None:
        self.hooks.append(("assigned", partitions))

    def revoked(self, partitions: list[int]) -> None:
        self.hooks.append(("revoked", partitions))


def test_at_least_once_state_follows_the_acknowledged_outputs_then_offsets_move() -> None:
    # State records are held until the outputs they follow are acknowledged (a flush), then
    # produced and flushed themselves (the latest per key only) before the offsets commit:
    # durable state never holds an event whose prediction is not.
    broker = Broker(b"ABCD")
    broker.deliver_on_poll = False  # records wait in the queue until a flush
    runner = _runner(broker, Stateful())
    _run_until_idle(broker, runner)
    calls = [(c[0], c[1] if c[0] == "produce" else None) for c in broker.calls
             if c[0] in ("produce", "flush", "commit")]  # fmt: skip
    first_state = calls.index(("produce", "state"))
    assert ("flush", None) in calls[:first_state]  # the outputs were acknowledged first
    assert all(t != "state" for _, t in calls[:first_state])
    assert calls[first_state + 1 :][:2] == [("flush", None), ("commit", None)]
    assert broker.values("state") == [b"state-CD"]  # the latest of key k only
    assert broker.committed == {0: 4} and broker.violations == []


def test_exactly_once_state_goes_in_the_batchs_transaction() -> None:
    broker = Broker(b"ABCD")
    runner = _runner(broker, Stateful(), exactly_once=True)
    _run_until_idle(broker, runner)
    per_batch = ["begin_transaction", "produce", "produce", "produce", "produce",
                 "send_offsets", "commit_transaction"]  # fmt: skip
    kinds = broker.kinds("begin_transaction", "produce", "send_offsets", "commit_transaction")
    assert kinds == per_batch * 2
    assert broker.values("state") == [b"state-AB", b"state-CD"]


class Deferring(Echo):
    """A handler that keeps its state for the commit when told (``defer_state``): its state
    is what it has handled so far, as a window store's is."""

    def __init__(self) -> None:
        super().__init__()
        self.deferred = False

    def defer_state(self) -> None:
        self.deferred = True

    def state_records(self) -> list[OutRecord]:
        if not self.deferred:
            return []
        return [OutRecord("state", b"k", b"state-" + b"".join(self.seen), partition=0)]


class OverlappingDeferring(Overlapping, Deferring):
    pass


def test_at_least_once_deferred_state_is_asked_at_the_commit_before_the_next_batch() -> None:
    # With no batch in flight the runner commits before the handler takes the next batch:
    # the state it asks for then is that of exactly the batches produced and acknowledged,
    # and it is produced and flushed before their offsets move.
    broker = Broker(b"ABCDEFGH")
    broker.deliver_on_poll = False
    clock = Clock()
    handler = Deferring()
    runner = _runner(broker, handler, clock=clock, commit_interval_s=1.0)
    assert handler.deferred
    _steps(runner, 2)  # AB, CD: produced, not acknowledged
    clock.now += 2.5  # due, and busy for two intervals: flush, state, flush, commit
    _steps(runner, 1)  # EF is handled after that commit
    assert handler.seen == [b"AB", b"CD", b"EF"]
    assert broker.values("state") == [b"state-ABCD"] and broker.committed == {0: 4}
    calls = [(c[0], c[1] if c[0] == "produce" else None) for c in broker.calls
             if c[0] in ("produce", "flush", "commit")]  # fmt: skip
    at = calls.index(("produce", "state"))
    assert calls[at - 1] == ("flush", None)
    assert calls[at + 1 :][:2] == [("flush", None), ("commit", None)]
    _run_until_idle(broker, runner)  # GH, then the stop's flush and commit
    assert broker.values("state")[-1] == b"state-ABCDEFGH" and broker.committed == {0: 8}
    assert broker.violations == []


@pytest.mark.parametrize("make, exactly_once", [(Deferring, True), (OverlappingDeferring, False)],
                         ids=["exactly-once", "batch-in-flight"])  # fmt: skip
def test_state_is_not_deferred_in_a_transaction_or_with_a_batch_in_flight(
    make: type[Deferring], exactly_once: bool
) -> None:
    # Exactly-once writes each batch's state in its transaction; with a batch in flight the
    # handler's state is already past the batch being committed.
    handler = make()
    _runner(Broker(b"AB"), handler, exactly_once=exactly_once)
    assert not handler.deferred


def test_the_handler_hears_of_assignments_and_revokes() -> None:
    broker = Broker(b"ABCDE")
    handler = Stateful()
    runner = _runner(broker, handler, max_size=2)
    _steps(runner, 1)  # assigned [0]
    broker.rebalances.append(("revoke", [0]))
    _steps(runner, 1)
    # The revoke reaches the handler after its last batch and state were committed.
    assert handler.hooks == [("assigned", [0]), ("revoked", [0])]
    assert broker.values("state") == [b"state-AB"] and broker.committed == {0: 2}
    broker.rebalances.append(("assign", [0]))
    _steps(runner, 1)
    broker.rebalances.append(("lost", [0]))
    _steps(runner, 1)
    assert handler.hooks[2:] == [("assigned", [0]), ("revoked", [0])]
    assert runner._state == {}  # never produced: the next owner restores the changelog
