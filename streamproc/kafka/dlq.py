"""The DLQ topic on Kafka: read it to its current end, and replay dead letters.

Reads see committed records only and stop at the end offsets the read began with (the last
stable offsets: an open transaction of a running processor is not waited for). A replay is
a transactional producer (``transactional.id`` ``<group>-dlq-replay``) that sends the
originals to the input topic and, in the same transactions, commits its progress per DLQ
partition in the consumer group ``<group>-dlq-replay`` (the per-reason progress of
:class:`~streamproc.deadletters.ReplayTracker` in the offset's metadata). A second replay
starts from that progress, so a dead letter is replayed at most once; a replay that fails
midway leaves its open transaction aborted, the next one fences it at start.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import (  # type: ignore[attr-defined]  # IsolationLevel: not in __all__
    Consumer,
    IsolationLevel,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from streamproc.deadletters import (
    DeadLetter,
    Outcome,
    ReplayReport,
    ReplayTracker,
    Selection,
    Summary,
    replay_headers,
)
from streamproc.errors import CodecError, KafkaError
from streamproc.kafka.admin import check_secured
from streamproc.kafka.clients import FramedDecoder
from streamproc.kafka.configuration import common_config, producer_config, registry_config
from streamproc.kafka.registry import Registry
from streamproc.personal import is_redacted

if TYPE_CHECKING:
    from streamproc.config import PipelineConfig

Check = Callable[[DeadLetter], str | None]


def replay_group(cfg: PipelineConfig) -> str:
    """The consumer group (and transactional id) that holds a pipeline's replay progress."""
    return f"{cfg.group_id}-dlq-replay"


@dataclass(frozen=True)
class Unreadable:
    """A DLQ record that is not a DeadLetter record (counted, never replayed)."""

    partition: int
    offset: int


class DlqReader:
    """Committed records of the pipeline's DLQ topic, decoded through the registry."""

    def __init__(self, cfg: PipelineConfig, group_id: str | None = None, timeout_s: float = 10.0):
        check_secured(cfg.kafka)
        self.topic = cfg.topics.dlq
        self.timeout_s = timeout_s
        self.decoder = FramedDecoder(Registry(registry_config(cfg.registry)))
        common = common_config(cfg.kafka)
        self.admin = AdminClient(common)
        self.consumer = Consumer({
            **common, "group.id": group_id or f"streamproc-dlq-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest", "isolation.level": "read_committed",
            **cfg.kafka.extra,
        })  # fmt: skip

    def partitions(self) -> list[int]:
        try:
            md = self.consumer.list_topics(self.topic, timeout=self.timeout_s)
        except KafkaException as exc:
            raise KafkaError(f"cannot read the metadata: {exc}", topic=self.topic) from exc
        tm = md.topics.get(self.topic)
        if tm is None or tm.error is not None:
            raise KafkaError("the DLQ topic does not exist (yet)", topic=self.topic)
        return sorted(tm.partitions)

    def bounds(self) -> dict[int, tuple[int, int]]:
        """(earliest, last stable) offset of each partition, now."""
        parts = self.partitions()

        def ask(spec: Any) -> dict[int, int]:
            req = {TopicPartition(self.topic, p): spec for p in parts}
            try:
                res = self.admin.list_offsets(req, isolation_level=IsolationLevel.READ_COMMITTED,
                                              request_timeout=self.timeout_s)  # fmt: skip
                return {tp.partition: fut.result().offset for tp, fut in res.items()}
            except KafkaException as exc:
                raise KafkaError(f"list_offsets failed: {exc}", topic=self.topic) from exc

        low, high = ask(OffsetSpec.earliest()), ask(OffsetSpec.latest())
        return {p: (low[p], high[p]) for p in parts}

    def committed(self, partitions: list[int]) -> dict[int, tuple[int | None, str | None]]:
        """This reader's group: the committed offset and metadata of each partition."""
        try:
            tps = self.consumer.committed(
                [TopicPartition(self.topic, p) for p in partitions], timeout=self.timeout_s
            )
        except KafkaException as exc:
            raise KafkaError(f"cannot read the replay progress: {exc}", topic=self.topic) from exc
        return {
            tp.partition: (tp.offset if tp.offset >= 0 else None, tp.metadata or None) for tp in tps
        }

    def read(
        self, starts: dict[int, int], ends: dict[int, int]
    ) -> Iterator[DeadLetter | Unreadable]:
        """Records from ``starts`` up to ``ends`` (exclusive), in offset order per partition."""
        left = {p: e for p, e in ends.items() if starts.get(p, e) < e}
        if not left:
            return
        self.consumer.assign([TopicPartition(self.topic, p, starts[p]) for p in left])
        deadline = time.monotonic() + self.timeout_s
        try:
            while left:
                # consume() waits for a full batch or the timeout: poll in short slices.
                msgs = self.consumer.consume(500, timeout=0.1)
                if msgs:
                    deadline = time.monotonic() + self.timeout_s
                elif time.monotonic() > deadline:
                    raise KafkaError(f"read stalled before the end offsets {left}",
                                     topic=self.topic)  # fmt: skip
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaError(f"consumer error: {err}", topic=self.topic)
                        continue
                    p, off = m.partition(), m.offset()
                    if p is None or off is None or p not in left or off >= left[p]:
                        continue
                    yield self._decode(p, off, m.value())
                    if off + 1 >= left[p]:
                        del left[p]
                # Transaction markers (or compaction) can leave the last offsets empty.
                if left:
                    for tp in self.consumer.position([TopicPartition(self.topic, p) for p in left]):
                        if 0 <= left.get(tp.partition, -1) <= tp.offset:
                            left.pop(tp.partition, None)
        except KafkaException as exc:
            raise KafkaError(f"cannot read the DLQ: {exc}", topic=self.topic) from exc
        finally:
            self.consumer.unassign()

    def _decode(self, p: int, off: int, value: bytes | None) -> DeadLetter | Unreadable:
        if value is None:
            return Unreadable(p, off)
        try:
            _, rec = self.decoder.decode(value)
            return DeadLetter.from_record(rec, self.topic, p, off)
        except (CodecError, KeyError, TypeError, ValueError):
            return Unreadable(p, off)

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> DlqReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def inspect(
    cfg: PipelineConfig, selection: Selection, sample: int = 5, timeout_s: float = 10.0
) -> Summary:
    """Every dead letter of the pipeline's DLQ, from the beginning to its end now."""
    summary = Summary(sample_size=sample)
    with DlqReader(cfg, timeout_s=timeout_s) as reader:
        bounds = reader.bounds()
        for item in reader.read({p: lo for p, (lo, _) in bounds.items()},
                                {p: hi for p, (_, hi) in bounds.items()}):  # fmt: skip
            if isinstance(item, Unreadable):
                summary.unreadable += 1
                continue
            summary.scanned += 1
            if selection.matches(item):
                summary.add(item)
    return summary


class _ReplayProducer:
    """The transactional producer of a replay; one transaction per chunk."""

    def __init__(self, cfg: PipelineConfig, txn_id: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.errors: list[str] = []
        conf = producer_config(cfg.kafka, txn_id)
        conf["on_delivery"] = self._on_delivery
        self.producer = Producer(conf)
        self.open = False
        try:
            # Fences an earlier replay of this pipeline still running (or left open), and
            # aborts its transaction: only then is the committed progress read.
            self.producer.init_transactions(timeout_s)
        except KafkaException as exc:
            raise KafkaError(f"cannot start the replay's transactions: {exc}") from exc

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def send(self, dl: DeadLetter) -> None:
        if not self.open:
            self.producer.begin_transaction()
            self.open = True
        while True:
            try:
                self.producer.produce(dl.source_topic, dl.value, dl.key,
                                      headers=replay_headers(dl))  # fmt: skip
                return
            except BufferError:
                self.producer.poll(0.05)  # queue full: wait for deliveries to drain

    def commit(self, offsets: list[TopicPartition], group: Any) -> bool:
        """Commit the open transaction (opened now when only progress moved)."""
        if not self.open:
            self.producer.begin_transaction()
            self.open = True
        try:
            self.producer.send_offsets_to_transaction(offsets, group, self.timeout_s)
            self.producer.commit_transaction(self.timeout_s)
        except KafkaException as exc:
            self.open = False
            # fenced or gone: the broker aborts it at the transaction timeout
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(self.timeout_s)
            raise KafkaError(f"replay transaction failed, nothing of it was sent: {exc}") from exc
        self.open = False
        if self.errors:  # cannot happen after a successful commit; kept as a guard
            raise KafkaError(f"replayed records failed: {self.errors[:3]}")
        return True

    def close(self) -> None:
        if self.open:
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(self.timeout_s)
        self.producer.close()


def replay(
    cfg: PipelineConfig,
    selection: Selection,
    check: Check,
    *,
    dry_run: bool = False,
    force: bool = False,
    skip_failing: bool = False,
    chunk: int = 5_000,
    timeout_s: float = 10.0,
) -> ReplayReport:
    """Replay the selected dead letters to the input topic (see the module docs).

    ``check`` re-validates a dead letter's original value (``None``: it would be accepted
    now). A dry run reads the same progress and reports what would be sent; it sends and
    commits nothing.
    """
    report = ReplayReport(dry_run=dry_run)
    group = replay_group(cfg)

    def guarded(dl: DeadLetter) -> str | None:
        # A redacted dead letter (personal fields configured) no longer holds the event:
        # refused even with --force; it is resent from its source.
        if is_redacted(dl.detail):
            return "value redacted (personal data): resend the event from its source"
        return check(dl)

    producer = None if dry_run else _ReplayProducer(cfg, group, timeout_s)
    try:
        with DlqReader(cfg, group_id=group, timeout_s=timeout_s) as reader:
            bounds = reader.bounds()
            committed = reader.committed(list(bounds))
            trackers = {
                p: ReplayTracker.restore(p, *committed[p], selection, cfg.topics.input,
                                         low=lo, force=force, skip_failing=skip_failing)
                for p, (lo, _) in bounds.items()
            }  # fmt: skip

            def commit() -> None:
                if producer is None:
                    return
                offsets = []
                for t in trackers.values():
                    off, meta = t.commit_point()
                    offsets.append(TopicPartition(reader.topic, t.partition, off, metadata=meta))
                producer.commit(offsets, reader.consumer.consumer_group_metadata())
                report.transactions += 1

            pending = 0
            starts = {p: t.start for p, t in trackers.items()}
            for item in reader.read(starts, {p: hi for p, (_, hi) in bounds.items()}):
                if isinstance(item, Unreadable):
                    trackers[item.partition].scanned_to = item.offset + 1
                    continue
                outcome, why = trackers[item.partition].step(item, guarded)
                if outcome == Outcome.FORCED and is_redacted(item.detail):
                    outcome = Outcome.PASSED_FAILING  # nothing to send
                report.add(item, outcome, why)
                if outcome.sends and producer is not None:
                    producer.send(item)
                    pending += 1
                    if pending >= chunk:
                        commit()
                        pending = 0
            for p, t in trackers.items():
                t.finish(bounds[p][1])
            commit()
    finally:
        if producer is not None:
            producer.close()
    return report


__all__ = ["DlqReader", "Outcome", "inspect", "replay", "replay_group"]
