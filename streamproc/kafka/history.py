"""Read a range of a topic's history, decoded, for ``streamproc features backfill``.

:class:`TopicHistory` plans one range per partition (offsets, or the offsets of Kafka record
timestamps through ``offsets_for_times``; by default from the earliest retained offset to
the end as it stood when the range was planned, so a read always ends), assigns those
partitions without joining a group (nothing is committed) and yields each record as a
:class:`~streamproc.features.offline.SourceEvent` in offset order per partition,
read_committed like the pipeline. Payloads are Confluent-framed Avro; a payload that does
not decode is yielded with ``record=None`` and the reason code the pipeline's decoder would
give (checked in its order: NULL_VALUE, TRUNCATED, BAD_MAGIC, UNKNOWN_SCHEMA, then the body).
"""

from __future__ import annotations

import io
import struct
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import fastavro
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka import KafkaError as CkKafkaError

from streamproc import schemas
from streamproc.codecs.wire import classify_read_error
from streamproc.errors import KafkaError, RegistryUnavailableError
from streamproc.features.offline import SourceEvent
from streamproc.kafka.clients import RegistryConnection, make_registry
from streamproc.kafka.configuration import Connection, client_config

_HEADER = struct.Struct(">bI")


class TopicHistory:
    """The records of ``topic`` in the planned ranges (:attr:`ranges`: ``(partition, first
    offset, end offset exclusive)``).

    ``start_offsets`` / ``end_offsets`` (partition -> offset, or one offset for every
    partition; end exclusive) and
    ``since_ms`` / ``until_ms`` (Kafka record timestamps, until exclusive) narrow the
    default range, each partition to the narrowest of them. ``reader_schema`` (the model's)
    is what records are decoded to; None: each record's writer schema. With ``warmup``,
    each partition is read from its earliest retained offset, and :attr:`emit_from` says
    where its range starts (for :func:`~streamproc.features.offline.backfill_rows`: the
    events before only build the state, as they did in the pipeline). Reading stops with
    :class:`KafkaError` when no partition moves for ``idle_timeout_s`` (say, a transaction
    left open holds read_committed back).
    """

    def __init__(
        self,
        conn: Connection,
        registry: RegistryConnection,
        topic: str,
        *,
        partitions: Sequence[int] | None = None,
        start_offsets: Mapping[int, int] | int | None = None,
        end_offsets: Mapping[int, int] | int | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        reader_schema: Mapping[str, Any] | None = None,
        warmup: bool = False,
        idle_timeout_s: float = 30.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.topic = topic
        self.warmup = warmup
        self.earliest: dict[int, int] = {}
        self.idle_timeout_s = idle_timeout_s
        self.registry = make_registry(registry)
        self._reader = None if reader_schema is None else fastavro.parse_schema(dict(reader_schema))
        self._writers: dict[int, Any] = {}
        self.consumer = Consumer({
            **client_config(conn),
            "group.id": f"streamproc-backfill-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        })  # fmt: skip
        try:
            self.ranges = self._plan(partitions, start_offsets, end_offsets, since_ms,
                                     until_ms, timeout_s)  # fmt: skip
        except BaseException:
            self.consumer.close()
            raise

    @property
    def emit_from(self) -> dict[int, int]:
        """Partition -> the first offset of its range."""
        return {p: start for p, start, _ in self.ranges}

    def _reads(self) -> list[tuple[int, int, int]]:
        """What is read: the ranges, from the earliest offset with ``warmup``."""
        if not self.warmup:
            return self.ranges
        return [(p, min(self.earliest.get(p, start), start) if start < end else start, end)
                for p, start, end in self.ranges]  # fmt: skip

    @property
    def total(self) -> int:
        """Offsets read: an upper bound of the records (transaction markers and compacted
        records take offsets too)."""
        return sum(end - start for _, start, end in self._reads())

    def _plan(
        self,
        partitions: Sequence[int] | None,
        start_offsets: Mapping[int, int] | int | None,
        end_offsets: Mapping[int, int] | int | None,
        since_ms: int | None,
        until_ms: int | None,
        timeout_s: float,
    ) -> list[tuple[int, int, int]]:
        try:
            meta = self.consumer.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
        except Exception as exc:
            raise KafkaError(f"cannot read the metadata of {self.topic}: {exc}",
                             topic=self.topic) from exc  # fmt: skip
        if meta is None or meta.error is not None or not meta.partitions:
            raise KafkaError(f"topic {self.topic} does not exist", topic=self.topic)
        known = sorted(meta.partitions)
        chosen = known if partitions is None else sorted(set(partitions))
        missing = sorted(set(chosen) - set(known))
        if missing:
            raise KafkaError(f"topic {self.topic} has partitions {known}, not {missing}",
                             topic=self.topic)  # fmt: skip
        out: list[tuple[int, int, int]] = []
        for p in chosen:
            lo, hi = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                         timeout=timeout_s)  # fmt: skip
            self.earliest[p] = lo
            start, end = max(lo, _at(start_offsets, p, lo)), min(hi, _at(end_offsets, p, hi))
            if since_ms is not None:
                start = max(start, self._offset_at(p, since_ms, hi, timeout_s))
            if until_ms is not None:
                end = min(end, self._offset_at(p, until_ms, hi, timeout_s))
            out.append((p, start, max(start, end)))
        return out

    def _offset_at(self, partition: int, ts_ms: int, high: int, timeout_s: float) -> int:
        """The first offset with a timestamp >= ``ts_ms`` (none: the end)."""
        (tp,) = self.consumer.offsets_for_times([TopicPartition(self.topic, partition, ts_ms)],
                                                timeout=timeout_s)  # fmt: skip
        return high if tp.offset < 0 else int(tp.offset)

    def __iter__(self) -> Iterator[SourceEvent]:
        reads = [(p, start, end) for p, start, end in self._reads() if start < end]
        left = {p: end for p, _, end in reads}
        if not left:
            return
        self.consumer.assign([TopicPartition(self.topic, p, start) for p, start, _ in reads])
        moved = time.monotonic()
        while left:
            msgs = self.consumer.consume(1000, timeout=0.5)
            for m in msgs:
                p = m.partition()
                err = m.error()
                if err is not None:
                    if err.code() != CkKafkaError._PARTITION_EOF:
                        raise KafkaError(f"reading {self.topic}: {err}", topic=self.topic)
                    continue
                assert p is not None
                offset = m.offset()
                assert offset is not None
                if p not in left or offset >= left[p]:
                    continue
                moved = time.monotonic()
                yield self._decode(m, p, offset)
                if offset + 1 >= left[p]:
                    self._done(left, p)
            # Transaction markers (and records compacted away) take offsets that no message
            # carries: the position says when a partition has passed its end.
            for tp in self.consumer.position([TopicPartition(self.topic, p) for p in left]):
                if tp.offset >= 0 and tp.offset >= left.get(tp.partition, 1 << 62):
                    self._done(left, tp.partition)
            if left and time.monotonic() - moved > self.idle_timeout_s:
                raise KafkaError(
                    f"reading {self.topic}: partitions {sorted(left)} did not reach their end "
                    f"offsets {[left[p] for p in sorted(left)]} in {self.idle_timeout_s}s "
                    "(an open transaction holds read_committed back?)", topic=self.topic,
                )  # fmt: skip

    def _done(self, left: dict[int, int], partition: int) -> None:
        left.pop(partition, None)
        self.consumer.pause([TopicPartition(self.topic, partition)])

    def _writer(self, sid: int) -> Any:
        parsed = self._writers.get(sid)
        if parsed is None:
            deadline = time.monotonic() + self.idle_timeout_s
            while True:
                try:
                    raw = self.registry.schema(sid)
                    break
                except RegistryUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)  # the lookup goes on in the background: ask again
            parsed = self._writers[sid] = None if raw is None else fastavro.parse_schema(raw)
        return parsed

    def _decode(self, m: Message, partition: int, offset: int) -> SourceEvent:
        key = m.key()
        key = key.encode() if isinstance(key, str) else key
        value = m.value()
        if value is None:
            return SourceEvent(partition, offset, key, None, "NULL_VALUE")
        if isinstance(value, str):
            value = value.encode()
        if not value:
            return SourceEvent(partition, offset, key, None, "TRUNCATED")
        if value[0] != 0:
            return SourceEvent(partition, offset, key, None, "BAD_MAGIC")
        if len(value) < _HEADER.size:
            return SourceEvent(partition, offset, key, None, "TRUNCATED")
        writer = self._writer(_HEADER.unpack_from(value)[1])
        if writer is None:
            return SourceEvent(partition, offset, key, None, "UNKNOWN_SCHEMA")
        body = io.BytesIO(value[_HEADER.size :])
        try:
            rec = fastavro.schemaless_reader(body, writer, self._reader)
        except Exception as exc:  # fastavro's errors for bad bytes vary (EOF, Index, ...)
            return SourceEvent(partition, offset, key, None, classify_read_error(exc)[0].name)
        if not isinstance(rec, dict):
            return SourceEvent(partition, offset, key, None, "CORRUPT")
        if body.tell() != len(value) - _HEADER.size:
            return SourceEvent(partition, offset, key, None, "TRAILING_BYTES")
        return SourceEvent(partition, offset, key, rec)

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> TopicHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _at(offsets: Mapping[int, int] | int | None, partition: int, default: int) -> int:
    if offsets is None:
        return default
    if isinstance(offsets, int):
        return offsets
    return offsets.get(partition, default)


def read_labels(
    conn: Connection, registry: RegistryConnection, topic: str, idle_timeout_s: float = 30.0
) -> dict[str, str]:
    """``event_id -> label`` from a feedback topic of ``Label`` records (a later label of
    an event replaces an earlier one; records that do not decode are skipped)."""
    out: dict[str, str] = {}
    with TopicHistory(conn, registry, topic, reader_schema=schemas.schema_dict("Label"),
                      idle_timeout_s=idle_timeout_s) as history:  # fmt: skip
        for e in history:
            if e.record is not None:
                out[str(e.record["event_id"])] = str(e.record["label"])
    return out
