"""KafkaRunner's own pieces against the real broker: producing blocks, reading batches."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka import KafkaError as CkError

from streamproc import synth
from streamproc.batching import Released, WindowPolicy
from streamproc.errors import DeliveryError, RegistryUnavailableError
from streamproc.kafka.runner import KafkaRunner, PlainHandler, RunnerSettings, to_raw_batch
from streamproc.types import (
    BatchHandlerLike,
    Outputs,
    OutRecord,
    RawBatch,
    RecordBlock,
    ReleaseReason,
)


def _not_called(raw: RawBatch) -> Outputs:
    raise AssertionError("not called here")


@pytest.fixture
def runner_factory(kafka: str) -> Iterator[Callable[..., KafkaRunner]]:
    """Runners on the real broker, their loop not started (tests drive its steps); their
    consumer and producer are closed after the test, so none outlives the broker."""
    made: list[KafkaRunner] = []

    def make(
        topic: str,
        settings: RunnerSettings | None = None,
        producer_conf: dict[str, Any] | None = None,
        consumer_conf: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> KafkaRunner:
        runner = KafkaRunner(
            consumer_conf={"bootstrap.servers": kafka, "group.id": f"g-{topic}",
                           **(consumer_conf or {})},
            producer_conf={"bootstrap.servers": kafka, "linger.ms": 5, **(producer_conf or {})},
            settings=settings or RunnerSettings(topic=topic),
            **{"handler": PlainHandler(_not_called),
               "policy": WindowPolicy(max_size=100, max_wait_ms=5), **kwargs},
        )  # fmt: skip
        made.append(runner)
        return runner

    yield make
    for runner in made:  # both are no-ops on a client a test closed already
        runner.consumer.close()
        runner.producer.close()


def _read_all(consumer: Consumer, topic: str, n: int) -> list[Any]:
    consumer.subscribe([topic])
    got: list[Any] = []
    for _ in range(200):
        got += [m for m in consumer.consume(500, 0.2) if m.error() is None]
        if len(got) >= n:
            break
    return got


@pytest.mark.parametrize("queue_limit", [100_000, 64])
def test_a_block_is_produced_once_in_order(
    topic_factory: Callable[..., str],
    consumer_factory: Callable[..., Consumer],
    runner_factory: Callable[..., KafkaRunner],
    queue_limit: int,
) -> None:
    # With a 64-record producer queue the block overflows it many times (BufferError):
    # the runner must resume at the record that failed, neither skipping nor repeating.
    topic = topic_factory("blk")
    runner = runner_factory(topic, producer_conf={"queue.buffering.max.messages": queue_limit})
    n = 700
    headers = [("streamproc-model", b"m"), ("streamproc-batch", b"b1")]
    block = RecordBlock(topic, [b"k%d" % i for i in range(n)], [b"v%d" % i for i in range(n)])
    block.headers = headers
    runner._produce_all(Outputs(blocks=[block]))
    assert runner.producer.flush(30) == 0
    assert runner._delivery_errors == []
    got = _read_all(consumer_factory(), topic, n)
    assert [m.value() for m in got] == block.values  # one partition: produce order
    assert [m.key() for m in got] == block.keys
    assert all(m.headers() == headers for m in got)


def _one_record_batch(topic: str, offset: int) -> RawBatch:
    return RawBatch(topic=topic, values=[b"v"], keys=[b"k"], partitions=np.array([0], np.int32),
                    offsets=np.array([offset], np.int64), headers=[None])  # fmt: skip


def _committed(runner: KafkaRunner, topic: str) -> int:
    return int(runner.consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset)


@pytest.mark.parametrize("value_bytes", [100, 10_000])
def test_offsets_are_committed_only_after_every_output_is_acknowledged(
    topic_factory: Callable[..., str], runner_factory: Callable[..., KafkaRunner], value_bytes: int
) -> None:
    # The output topic takes records up to 2,000 bytes: the broker refuses the larger one
    # (MESSAGE_TOO_LARGE, not retried). Its failure reaches the runner, which raises before
    # committing the input offset that the record's batch would have moved.
    src = topic_factory("src")
    out = topic_factory("small", config={"max.message.bytes": "2000"})
    runner = runner_factory(src)
    runner._commit(_one_record_batch(src, 41), Outputs(records=[OutRecord(out, b"k", b"x")]))
    runner._flush_and_commit()  # (what a revoke or a stop does)
    assert _committed(runner, src) == 42
    big = Outputs(records=[OutRecord(out, b"k", b"x" * value_bytes)])
    if value_bytes < 2000:
        runner._commit(_one_record_batch(src, 42), big)
        runner._flush_and_commit()
        assert _committed(runner, src) == 43
    else:
        with pytest.raises(DeliveryError, match=f"{out}.*too large"):
            runner._commit(_one_record_batch(src, 42), big)
            runner._flush_and_commit()
        assert _committed(runner, src) == 42


def _wait_committed(runner: KafkaRunner, topic: str, offset: int) -> int:
    committed = -1
    for _ in range(100):  # an asynchronous commit lands within a few polls
        runner.consumer.poll(0.1)
        committed = _committed(runner, topic)
        if committed == offset:
            break
    return committed


def test_a_due_commit_waits_for_an_empty_queue_then_for_a_flush(
    topic_factory: Callable[..., str], runner_factory: Callable[..., KafkaRunner]
) -> None:
    src, out = topic_factory("src"), topic_factory("out")
    runner = runner_factory(src, RunnerSettings(topic=src, commit_interval_s=1.0))

    def batch(offset: int) -> None:  # as _process does: a due commit, then the batch
        record = OutRecord(out, b"k", b"v%d" % offset)
        runner._commit_if_due()
        runner._commit(_one_record_batch(src, offset), Outputs(records=[record]))

    batch(9)
    assert runner._uncommitted == {0: 10}  # produced, not committed: none is due
    assert runner.batches_committed == 0
    for _ in range(100):
        if len(runner.producer) == 0:
            break
        runner.producer.poll(0.1)
    # 1. Due, and every record so far acknowledged (the queue is empty): the next batch
    #    commits the earlier ones first, without a flush.
    runner._last_commit -= 1.5
    batch(10)
    assert runner._uncommitted == {0: 11}
    assert runner.batches_committed == 1
    # 2. Due, but batch 10's record lingers in the queue (linger.ms 5): no commit yet.
    runner._last_commit -= 1.5
    batch(11)
    assert runner._uncommitted == {0: 12}
    assert runner.batches_committed == 1
    # 3. Busy for another whole interval: flush, then commit everything produced before.
    runner._last_commit -= 3.0
    batch(12)
    assert runner._uncommitted == {0: 13}
    assert runner.batches_committed == 2
    assert _wait_committed(runner, src, 12) == 12


def test_raw_batch_columns_and_headers_read_lazily(
    topic_factory: Callable[..., str],
    producer_factory: Callable[..., Producer],
    consumer_factory: Callable[..., Consumer],
) -> None:
    topic = topic_factory("raw", partitions=2)
    p = producer_factory()
    for i in range(20):
        p.produce(topic, b"v%d" % i, b"k%d" % i, headers=[("h", b"%d" % i)] if i % 2 else None)
    p.flush(10)
    msgs = _read_all(consumer_factory(), topic, 20)
    raw = to_raw_batch(topic, msgs, Released(msgs, ReleaseReason.SIZE, 1.5))
    assert len(raw) == 20 and raw.release is ReleaseReason.SIZE and raw.wait_ms == 1.5
    assert raw.values == [m.value() for m in msgs] and raw.keys == [m.key() for m in msgs]
    assert raw.partitions.tolist() == [m.partition() for m in msgs]
    assert raw.offsets.tolist() == [m.offset() for m in msgs]
    by_value = {v: raw.headers[i] for i, v in enumerate(raw.values)}
    assert by_value[b"v3"] == [("h", b"3")] and by_value[b"v4"] is None
    assert raw.headers[2:4] == [msgs[2].headers(), msgs[3].headers()]
    assert len(raw.headers) == 20


class _SeenErrors:
    """The runner's consumer, noting the error messages it hands out."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.errors: list[Any] = []

    def consume(self, *args: Any, **kwargs: Any) -> list[Any]:
        msgs = self._consumer.consume(*args, **kwargs)
        self.errors += [m.error() for m in msgs if m.error() is not None]
        return msgs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def test_a_transient_consumer_error_is_logged_not_raised(
    runner_factory: Callable[..., KafkaRunner], caplog: pytest.LogCaptureFixture
) -> None:
    # Subscribed to a topic that does not exist (the broker creates none on its own): the
    # client hands out "unknown topic" error messages, which are not fatal.
    missing = f"missing-{uuid.uuid4().hex[:10]}"
    runner = runner_factory(missing)
    seen = _SeenErrors(runner.consumer)
    runner.consumer = seen  # type: ignore[assignment]
    runner.consumer.subscribe([missing])
    for _ in range(40):  # each step waits at most 0.5 s for a record
        runner._step()
        if seen.errors:
            break
    assert seen.errors, "the client never reported the missing topic"
    assert not any(e.fatal() for e in seen.errors)
    assert "consumer error on" in caplog.text


def test_a_record_that_came_in_during_a_slow_batch_waits_from_the_last_look(
    topic_factory: Callable[..., str],
    producer_factory: Callable[..., Producer],
    runner_factory: Callable[..., KafkaRunner],
) -> None:
    # The runner's clock moves only while a batch is processed (20 ms, four windows). A, B
    # and C are in the log before the runner starts, so one fetch brings all three: A and
    # B fill a batch; C comes back from the consume after that batch. It arrived by the
    # time the runner last looked, before the slow batch, so it is overdue at once; had its
    # window opened when the runner got round to it, the frozen clock would never let it go.
    topic = topic_factory("look")
    producer = producer_factory()
    for v in (b"A", b"B", b"C"):
        producer.produce(topic, v)
    assert producer.flush(10) == 0
    now = [0.0]
    seen: list[tuple[list[bytes | None], ReleaseReason, float]] = []

    def handler(raw: RawBatch) -> Outputs:
        seen.append((list(raw.values), raw.release, raw.wait_ms))
        now[0] += 20.0
        return Outputs()

    runner = runner_factory(
        topic,
        consumer_conf={"auto.offset.reset": "earliest"},
        handler=PlainHandler(handler),
        policy=WindowPolicy(max_size=2, max_wait_ms=5),
        clock_ms=lambda: now[0],
    )
    runner.consumer.subscribe([topic], on_assign=runner._on_assign)
    for _ in range(200):  # a step waits at most 0.5 s (nothing pending) or 5 ms
        runner._step()
        if sum(len(v) for v, _, _ in seen) == 3:
            break
    assert seen == [([b"A", b"B"], ReleaseReason.SIZE, 0.0), ([b"C"], ReleaseReason.TIME, 20.0)]


class _Overlapping(BatchHandlerLike):
    """A handler split in two, logging its calls: what a GPU-backed BatchHandler offers."""

    overlaps = True

    def __init__(self, out_topic: str) -> None:
        self.out_topic = out_topic
        self.log: list[tuple[str, bytes]] = []  # ("start" | "finish", the batch's values)

    def __call__(self, raw: RawBatch) -> Outputs:
        raise AssertionError("an overlapping handler is started and finished, not called")

    def start(self, raw: RawBatch) -> RawBatch:
        self.log.append(("start", b"".join(v or b"" for v in raw.values)))
        return raw

    def finish(self, raw: RawBatch) -> Outputs:
        self.log.append(("finish", b"".join(v or b"" for v in raw.values)))
        return Outputs(records=[OutRecord(self.out_topic, None, v) for v in raw.values])


class _ConsumeLog:
    """The runner's real consumer, recording each consume's timeout and whether a batch
    was in flight then."""

    def __init__(self, runner: KafkaRunner) -> None:
        self._runner, self._consumer = runner, runner.consumer
        self.calls: list[tuple[float, bool]] = []

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.calls.append((timeout, self._runner._inflight is not None))
        return self._consumer.consume(num_messages=num_messages, timeout=timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def _fill(producer: Producer, topic: str, letters: bytes) -> None:
    """One record per letter, in order."""
    for i in range(len(letters)):
        producer.produce(topic, letters[i : i + 1])
    assert producer.flush(10) == 0


def _consumed(consumer: Consumer, topic: str, n: int) -> list[Any]:
    got = _read_all(consumer, topic, n)
    assert len(got) == n
    return got


def test_an_overlapping_handler_starts_the_next_batch_before_finishing_one(
    topic_factory: Callable[..., str],
    producer_factory: Callable[..., Producer],
    consumer_factory: Callable[..., Consumer],
    runner_factory: Callable[..., KafkaRunner],
) -> None:
    topic, out = topic_factory("ovl"), topic_factory("ovl-out")
    _fill(producer_factory(), topic, b"ABCDE")
    msgs = _consumed(consumer_factory(), topic, 5)
    handler = _Overlapping(out)
    runner = runner_factory(topic, handler=handler)
    for part in (msgs[:2], msgs[2:4], msgs[4:]):
        runner._process(Released(part, ReleaseReason.SIZE, 0.0))
    # Batch k is finished (produced) only once batch k+1 has started; the last one waits.
    assert handler.log == [("start", b"AB"), ("start", b"CD"), ("finish", b"AB"),
                           ("start", b"E"), ("finish", b"CD")]  # fmt: skip
    assert runner._inflight is not None and runner._uncommitted == {0: 4}
    runner._finish_inflight()
    runner._flush_and_commit()
    assert handler.log[-1] == ("finish", b"E") and runner._inflight is None
    got = _read_all(consumer_factory(), out, 5)
    assert [m.value() for m in got] == [b"A", b"B", b"C", b"D", b"E"]  # once each, in order


def test_a_batch_in_flight_makes_the_next_look_not_wait_and_is_finished_then(
    topic_factory: Callable[..., str],
    producer_factory: Callable[..., Producer],
    consumer_factory: Callable[..., Consumer],
    runner_factory: Callable[..., KafkaRunner],
) -> None:
    topic, out = topic_factory("ovs"), topic_factory("ovs-out")
    _fill(producer_factory(), topic, b"ABCDE")
    handler = _Overlapping(out)
    runner = runner_factory(topic, handler=handler, consumer_conf={"auto.offset.reset": "earliest"},
                            policy=WindowPolicy(max_size=2, max_wait_ms=5))  # fmt: skip
    looks = _ConsumeLog(runner)
    runner.consumer = looks  # type: ignore[assignment]
    runner.consumer.subscribe([topic], on_assign=runner._on_assign)
    for _ in range(400):  # a step waits at most 0.5 s (nothing pending) or 5 ms
        runner._step()
        if ("finish", b"E") in handler.log:
            break
    starts = [v for what, v in handler.log if what == "start"]
    finishes = [v for what, v in handler.log if what == "finish"]
    assert b"".join(starts) == b"".join(finishes) == b"ABCDE"  # every event, once, in order
    assert starts == finishes and runner._inflight is None
    # While a batch was in flight the runner never waited on the consumer ...
    assert [t for t, held in looks.calls if held] and all(t == 0 for t, held in looks.calls if held)
    # ... and no more than two batches were ever started and not finished: the one in
    # flight and the one whose start finishes it.
    in_flight = 0
    for what, _ in handler.log:
        in_flight += 1 if what == "start" else -1
        assert in_flight <= 2
    runner._flush_and_commit()
    assert [m.value() for m in _read_all(consumer_factory(), out, 5)] == [b"A", b"B", b"C",
                                                                          b"D", b"E"]  # fmt: skip


def _read_to_end(consumer: Consumer, topic: str) -> list[bytes]:
    """Every committed record of a one-partition topic, read until its end."""
    consumer.subscribe([topic])
    got: list[bytes] = []
    for _ in range(400):
        for m in consumer.consume(500, 0.2):
            if m.error() is None:
                got.append(m.value())
            elif m.error().code() == CkError._PARTITION_EOF:
                return got
    raise AssertionError(f"no end of {topic} after {got}")


def _eos_runner(
    runner_factory: Callable[..., KafkaRunner], topic: str, handler: Any
) -> KafkaRunner:
    """An exactly-once runner on ``topic`` (batches of two), its transactions initialised."""
    runner = runner_factory(
        topic,
        settings=RunnerSettings(topic=topic, exactly_once=True, flush_timeout_s=30),
        producer_conf={"transactional.id": f"t-{topic}"},
        consumer_conf={"auto.offset.reset": "earliest", "isolation.level": "read_committed",
                       "enable.auto.commit": False},
        handler=handler,
        policy=WindowPolicy(max_size=2, max_wait_ms=5),
    )  # fmt: skip
    runner.producer.init_transactions(30)
    runner.consumer.subscribe([topic], on_assign=runner._on_assign)
    return runner


def _six_released_at_once(runner: KafkaRunner) -> list[Released[Message]]:
    """A..F from the runner's consumer, cut by its batcher into AB, CD and EF at once."""
    msgs: list[Any] = []
    for _ in range(100):
        msgs += [m for m in runner.consumer.consume(6 - len(msgs), 0.2) if m.error() is None]
        if len(msgs) == 6:
            break
    releases = runner.batcher.add(msgs)
    assert [len(r.items) for r in releases] == [2, 2, 2]
    return releases


def _replayed_once(
    runner: KafkaRunner, topic: str, out: str, consumer_factory: Callable[..., Consumer]
) -> None:
    """Step until the input's offset is committed at 6 (the replay from C), then a
    read_committed reader of ``out`` must see A..F once each."""
    part = TopicPartition(topic, 0)
    for _ in range(400):
        if runner.consumer.committed([part], 10)[0].offset == 6:
            break
        runner._step()
    assert runner.consumer.committed([part], 10)[0].offset == 6
    reader = consumer_factory(**{"isolation.level": "read_committed", "enable.partition.eof": True})
    assert _read_to_end(reader, out) == [b"A", b"B", b"C", b"D", b"E", b"F"]


def test_an_aborted_transaction_replays_its_batch_and_every_later_one_once(
    topic_factory: Callable[..., str],
    producer_factory: Callable[..., Producer],
    consumer_factory: Callable[..., Consumer],
    runner_factory: Callable[..., KafkaRunner],
) -> None:
    # One consume brings A..F; the batcher cuts AB, CD and EF at once. CD's transaction
    # fails with an abortable error (the broker refuses a record over the output topic's
    # max.message.bytes). CD is read again, and EF with it: EF must not be committed before
    # CD, nor come out twice.
    topic, out = topic_factory("eos"), topic_factory("eos-out")
    small = topic_factory("eos-small", config={"max.message.bytes": "1000"})
    _fill(producer_factory(), topic, b"ABCDEF")
    failed: list[list[bytes | None]] = []

    def handler(raw: RawBatch) -> Outputs:
        values = list(raw.values)
        records = [OutRecord(out, None, v) for v in values if v is not None]
        if b"C" in values and not failed:
            failed.append(values)
            records.append(OutRecord(small, None, os.urandom(5000)))  # refused by the broker
        return Outputs(records=records)

    runner = _eos_runner(runner_factory, topic, PlainHandler(handler))
    runner._process_all(_six_released_at_once(runner))
    assert failed == [[b"C", b"D"]]
    _replayed_once(runner, topic, out, consumer_factory)


# Only the commit protocol commits (streamproc.kafka.configuration.consumer_config): with
# librdkafka's auto-commit, closing a consumer would commit what it had read.
_AS_IN_PRODUCTION = {"auto.offset.reset": "earliest", "enable.auto.commit": False}


def _overlapping_runner(
    runner_factory: Callable[..., KafkaRunner], topic: str, handler: _Overlapping
) -> KafkaRunner:
    """An overlapping runner subscribed to ``topic`` (batches of two), stepped until a batch
    is in flight at the end of a step."""
    runner = runner_factory(topic, handler=handler, consumer_conf=_AS_IN_PRODUCTION,
                            policy=WindowPolicy(max_size=2, max_wait_ms=5))  # fmt: skip
    runner.consumer.subscribe([topic], on_assign=runner._on_assign)
    for _ in range(400):  # a step waits at most 0.5 s (nothing pending) or 5 ms
        runner._step()
        if runner._inflight is not None:
            break
    assert runner._inflight is not None and handler.log == [("start", b"AB")]
    return runner


def test_a_revoke_finishes_and_commits_the_batch_in_flight(
    topic_factory: Callable[..., str],
    producer_factory: Callable[..., Producer],
    consumer_factory: Callable[..., Consumer],
    runner_factory: Callable[..., KafkaRunner],
) -> None:
    # The partitions move while AB is scored: AB is finished, produced and committed before
    # they go, so the next owner starts at C.
    topic, out = topic_factory("ovr"), topic_factory("ovr-out")
    _fill(producer_factory(), topic, b"ABCDE")
    handler = _Overlapping(out)
    runner = _overlapping_runner(runner_factory, topic, handler)
    runner._on_revoke(runner.consumer, list(runner._assignment))
    assert handler.log[-1] == ("finish", b"AB") and runner._inflight is None
    assert _committed(runner, topic) == 2
    assert [m.value() for m in _read_all(consumer_factory(), out, 2)] == [b"A", b"B"]


def test_a_stop_finishes_and_commits_the_batch_in_flight(
    topic_factory: Callable[..., str],
    producer_factory: Callable[..., Producer],
    consumer_factory: Callable[..., Consumer],
    runner_factory: Callable[..., KafkaRunner],
) -> None:
    # A stop requested while AB is scored (from its start, as a signal handler might):
    # run() finishes AB and whatever the batcher still holds, produces and commits them.
    topic, out = topic_factory("ovq"), topic_factory("ovq-out")
    _fill(producer_factory(), topic, b"ABCDE")

    class StopsOnStart(_Overlapping):
        def start(self, raw: RawBatch) -> RawBatch:
            runner.request_stop()
            return super().start(raw)

    handler = StopsOnStart(out)
    runner = runner_factory(topic, handler=handler, consumer_conf=_AS_IN_PRODUCTION,
                            policy=WindowPolicy(max_size=2, max_wait_ms=5))  # fmt: skip
    runner.run()  # returns once stopped: the consumer and producer are closed
    starts = [v for what, v in handler.log if what == "start"]
    finishes = [v for what, v in handler.log if what == "finish"]
    assert starts[0] == b"AB" and starts == finishes  # nothing started is left unfinished
    done = b"".join(finishes)
    assert done == b"ABCDE"[: len(done)]
    reader = consumer_factory(group=f"g-{topic}")  # the runner's group
    assert reader.committed([TopicPartition(topic, 0)], 10)[0].offset == len(done)
    assert [m.value() for m in _read_all(consumer_factory(), out, len(done))] == [
        done[i : i + 1] for i in range(len(done))
    ]


def test_a_lost_assignment_drops_the_batch_in_flight_for_the_next_owner(
    topic_factory: Callable[..., str],
    producer_factory: Callable[..., Producer],
    consumer_factory: Callable[..., Consumer],
    runner_factory: Callable[..., KafkaRunner],
) -> None:
    # The partitions are lost (the group moved on without this member) while AB is scored:
    # AB is neither produced nor committed, and the next owner reads it again.
    topic, out = topic_factory("ovl2"), topic_factory("ovl2-out")
    _fill(producer_factory(), topic, b"ABCDE")
    handler = _Overlapping(out)
    runner = _overlapping_runner(runner_factory, topic, handler)
    runner._on_lost(runner.consumer, list(runner._assignment))
    runner._flush_and_commit()  # nothing left to commit
    assert runner._inflight is None and handler.log == [("start", b"AB")]  # never finished
    assert _committed(runner, topic) < 0  # no offset committed
    runner.consumer.close()
    again = _Overlapping(out)
    nxt = runner_factory(topic, handler=again, consumer_conf=_AS_IN_PRODUCTION,
                         policy=WindowPolicy(max_size=2, max_wait_ms=5))  # fmt: skip
    nxt.consumer.subscribe([topic], on_assign=nxt._on_assign)
    for _ in range(400):
        nxt._step()
        if ("finish", b"E") in again.log:
            break
    assert b"".join(v for what, v in again.log if what == "finish") == b"ABCDE"
    nxt._flush_and_commit()
    assert [m.value() for m in _read_all(consumer_factory(), out, 5)] == [b"A", b"B", b"C",
                                                                          b"D", b"E"]  # fmt: skip


def test_exactly_once_overlaps_and_an_abort_reads_the_batch_in_flight_again(
    topic_factory: Callable[..., str],
    producer_factory: Callable[..., Producer],
    consumer_factory: Callable[..., Consumer],
    runner_factory: Callable[..., KafkaRunner],
) -> None:
    # One consume brings A..F, cut into AB, CD and EF. With one batch in flight, CD is
    # finished once EF has started; CD's transaction aborts (a record over the output
    # topic's max.message.bytes). EF, started but not finished, must be dropped and read
    # again with CD: a read_committed reader sees A..F once each, the offset ends at 6.
    topic, out = topic_factory("eoo"), topic_factory("eoo-out")
    small = topic_factory("eoo-small", config={"max.message.bytes": "1000"})
    _fill(producer_factory(), topic, b"ABCDEF")

    class FailsOnceOnCD(_Overlapping):
        failed = False

        def finish(self, raw: RawBatch) -> Outputs:
            out = super().finish(raw)
            if b"C" in raw.values and not self.failed:
                self.failed = True
                out.records.append(OutRecord(small, None, os.urandom(5000)))
            return out

    handler = FailsOnceOnCD(out)
    runner = _eos_runner(runner_factory, topic, handler)
    assert runner._overlap is handler  # exactly-once keeps a batch in flight too
    runner._process_all(_six_released_at_once(runner))
    # AB committed; CD aborted when finished; EF started, never finished, not in flight.
    assert handler.log == [("start", b"AB"), ("start", b"CD"), ("finish", b"AB"),
                           ("start", b"EF"), ("finish", b"CD")]  # fmt: skip
    assert runner._inflight is None and runner._aborted == []
    _replayed_once(runner, topic, out, consumer_factory)
    replay = handler.log[5:]
    assert b"".join(v for what, v in replay if what == "finish") == b"CDEF"


def test_a_rewind_seeks_every_held_partition_to_its_earliest_record_of_the_batches(
    topic_factory: Callable[..., str], runner_factory: Callable[..., KafkaRunner]
) -> None:
    # The aborted batch read partition 0 from offset 10; the one in flight then, partition 1
    # from 5 and partition 0 from 12; partition 2 is no longer held.
    topic = topic_factory("rw", partitions=3)
    runner = runner_factory(topic)
    runner._assignment = [TopicPartition(topic, 0), TopicPartition(topic, 1)]

    def batch(parts: list[int], offsets: list[int]) -> RawBatch:
        n = len(parts)
        return RawBatch(topic=topic, values=[b"v"] * n, keys=[None] * n,
                        partitions=np.array(parts, np.int32),
                        offsets=np.array(offsets, np.int64), headers=[None] * n)  # fmt: skip

    seeks: list[tuple[int, int]] = []

    class Seeks:
        def seek(self, tp: TopicPartition) -> None:
            seeks.append((tp.partition, tp.offset))

    real, runner.consumer = runner.consumer, Seeks()  # type: ignore[assignment]
    try:
        runner._rewind([batch([0, 0], [10, 11]), batch([1, 0, 1, 2], [5, 12, 6, 40])], [])
    finally:
        runner.consumer = real
    assert seeks == [(0, 10), (1, 5)]


def test_an_outage_holds_back_each_partition_from_its_first_waiting_event_only(
    topic_factory: Callable[..., str], runner_factory: Callable[..., KafkaRunner]
) -> None:
    # Events (1, 21) and (2, 30) need a schema the registry does not give. Partition 0 goes
    # on; partition 1 goes on up to offset 21, is paused and rewound there; partition 2
    # waits from 30. A later success on a resumed partition restarts its backoff.
    topic = topic_factory("hold", partitions=3)
    settings = RunnerSettings(topic=topic, registry_retry_initial_s=0.1, registry_retry_max_s=1)
    runner = runner_factory(topic, settings=settings)
    runner._assignment = [TopicPartition(topic, p) for p in range(3)]
    waiting = {(1, 21), (2, 30)}
    handled: list[list[tuple[int, int]]] = []

    def handler(raw: RawBatch) -> Outputs:
        events = list(zip(raw.partitions.tolist(), raw.offsets.tolist(), strict=True))
        rows = [i for i, e in enumerate(events) if e in waiting]
        if rows:
            raise RegistryUnavailableError("down", schema_ids=(8,), rows=rows)
        handled.append(events)
        return Outputs()

    calls: list[tuple[str, list[tuple[int, int]]]] = []

    class Recorder:
        def pause(self, tps: list[TopicPartition]) -> None:
            calls.append(("pause", [(tp.partition, tp.offset) for tp in tps]))

        def seek(self, tp: TopicPartition) -> None:
            calls.append(("seek", [(tp.partition, tp.offset)]))

        def resume(self, tps: list[TopicPartition]) -> None:
            calls.append(("resume", [(tp.partition, -1) for tp in tps]))

    def batch(events: list[tuple[int, int]]) -> RawBatch:
        n = len(events)
        return RawBatch(topic=topic, values=[b"v"] * n, keys=[None] * n,
                        partitions=np.array([p for p, _ in events], np.int32),
                        offsets=np.array([o for _, o in events], np.int64),
                        headers=[None] * n)  # fmt: skip

    msgs: list[Any] = [None] * 6  # only their headers' order matters here
    real, runner.consumer = runner.consumer, Recorder()  # type: ignore[assignment]
    try:
        got = runner._handle_with_retry(
            batch([(0, 10), (1, 20), (0, 11), (1, 21), (2, 30), (1, 22)]), msgs, handler
        )
        assert got is not None
        assert handled == [[(0, 10), (1, 20), (0, 11)]]
        assert got[0].offsets.tolist() == [10, 20, 11]
        assert calls == [("pause", [(1, 21)]), ("seek", [(1, 21)]),
                         ("pause", [(2, 30)]), ("seek", [(2, 30)])]  # fmt: skip
        assert {p: (h.offset, h.attempt) for p, h in runner._held.items()} == {
            1: (21, 1), 2: (30, 1)}  # fmt: skip
        # Only waiting events: nothing to handle, nothing returned.
        assert runner._handle_with_retry(batch([(2, 30)]), [None], handler) is None
        assert runner._held[2].attempt == 2
        # Backoff over for partition 1 only: resumed; an idle look waits until partition 2's.
        runner._held[1].resume_at = 0.0
        calls.clear()
        idle = runner._resume_due(0.5)
        assert calls == [("resume", [(1, -1)])]
        assert 0 < idle <= 0.2  # partition 2: its second backoff, 0.2 s
        waiting.discard((1, 21))  # the registry gave the schema
        assert runner._handle_with_retry(batch([(1, 21), (1, 22)]), [None] * 2, handler)
        assert set(runner._held) == {2}
    finally:
        runner.consumer = real


def test_two_replicas_under_the_consumer_group_protocol_share_the_partitions_and_score_all(
    pipeline_config_factory: Callable[..., Any],
    processor_factory: Callable[..., Any],
    event_producer_factory: Callable[..., Any],
    read_topic: Callable[..., Any],
) -> None:
    # Kafka 4's consumer protocol (KIP-848): the broker changes an assignment incrementally.
    # r1 holds all four partitions; when r2 joins, r1 gives up some and keeps the others (a
    # revoke of those only, then an assign of nothing new). Each runner must know what it
    # still holds, and every event is scored.
    cfg = pipeline_config_factory(partitions=4, kafka={"group_protocol": "consumer"})
    producer = event_producer_factory(cfg.topics.input)
    records, _ = synth.generate(400, seed=5)
    for r in records[:200]:
        producer.send(r, key=r["account_id"])
    producer.flush()

    def held(running: Any) -> set[int]:
        return {tp.partition for tp in running.processor.runner._assignment}

    def wait(cond: Callable[[], bool], what: str) -> None:
        for _ in range(1200):  # 120 s
            if cond():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    r1 = processor_factory(cfg.model_copy(update={"instance_id": "r1"}))
    wait(lambda: held(r1) == {0, 1, 2, 3}, "r1 to hold every partition")
    r2 = processor_factory(cfg.model_copy(update={"instance_id": "r2"}))
    wait(lambda: bool(held(r2)) and held(r1) | held(r2) == {0, 1, 2, 3}, "r2 to take a share")
    assert held(r1) and not held(r1) & held(r2)
    for r in records[200:]:
        producer.send(r, key=r["account_id"])
    producer.flush()
    preds = read_topic(cfg.topics.predictions, 400, idle_s=60)
    r2.stop()
    r1.stop()
    assert {p.value["event_id"] for p in preds} == {r["event_id"] for r in records}
