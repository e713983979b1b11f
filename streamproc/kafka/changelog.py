"""The compacted changelog topic behind a window store (streamproc.pipeline.features).

One topic per store, ``<group_id>.<model>.features-changelog``, with as many partitions as
the input: the state of input partition ``p`` lives in changelog partition ``p``. Each
record is one key's state (the store's bytes) after a batch, or a tombstone once the key is
evicted; compaction keeps the latest per key, so a restore reads one record per live key.

A value starts with the input offset its batch reached (8 bytes, big-endian: one past the
batch's last record of the partition), then the store's bytes (:func:`frame_state`).
Restoring, :class:`ChangelogReader` also reads the group's committed input offset: a key
whose state was written by a batch whose input offset was not committed yet (at-least-once:
a crash between the changelog write and the offset commit) is *ahead*, and the pipeline
does not add its replayed events again (:class:`~streamproc.pipeline.features.FeatureStage`).
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

from confluent_kafka import (  # type: ignore[attr-defined]  # IsolationLevel: not in __all__
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka import KafkaError as CkError
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from streamproc.errors import KafkaError
from streamproc.kafka.configuration import Connection, client_config, kafka_settings

log = logging.getLogger(__name__)

_OFFSET = struct.Struct(">q")


def frame_state(offset: int, state: bytes | None) -> bytes | None:
    """A changelog value: the input offset its batch reached, then the state (None: a
    tombstone, which carries no offset).

    >>> unframe_state(frame_state(42, b"abc"))
    (42, b'abc')
    """
    return None if state is None else _OFFSET.pack(offset) + state


def _state_of(value: bytes | None) -> bytes | None:
    return None if value is None else value[_OFFSET.size :]


def unframe_state(value: bytes | None) -> tuple[int, bytes | None]:
    if value is None:
        return -1, None
    if len(value) < _OFFSET.size:
        raise ValueError(f"a changelog value of {len(value)} bytes has no offset")
    return _OFFSET.unpack_from(value)[0], value[_OFFSET.size :]


@dataclass
class Restored:
    """What a changelog partition holds: the store's entries in offset order, and the keys
    whose latest state is ahead of the committed input offset (key -> input offset)."""

    entries: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    ahead: dict[bytes, int] = field(default_factory=dict)
    committed: int | None = None  # the group's committed input offset (None: none)
    input_end: int | None = None  # the input partition's end offset now (None: not read)
    records: int = 0
    seconds: float = 0.0


class ChangelogReader:
    """Reads changelog partitions to their end (read_committed: under exactly-once only what
    committed transactions wrote), with the consumer group's committed input offsets."""

    def __init__(
        self,
        conn: Connection,
        topic: str,
        *,
        input_topic: str,
        group_id: str,
        timeout_s: float = 120.0,
    ) -> None:
        self.topic = topic
        self.input_topic = input_topic
        self.timeout_s = timeout_s
        common = client_config(conn)
        extra = kafka_settings(conn).extra
        self._admin = AdminClient(common)
        # The pipeline's group id, to read its committed offsets; this consumer never joins
        # the group (it assigns partitions by hand and commits nothing).
        self._consumer = Consumer({
            **common, "group.id": group_id, "enable.auto.commit": False,
            "enable.auto.offset.store": False, "isolation.level": "read_committed",
            "enable.partition.eof": True, "client.id": f"changelog-{uuid.uuid4().hex[:8]}",
            **extra,
        })  # fmt: skip

    def close(self) -> None:
        self._consumer.close()

    def _errors(self, msgs: list[Message], left: set[int]) -> list[Message]:
        """The records among ``msgs``; an end-of-partition event ends its partition."""
        good = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() == CkError._PARTITION_EOF:
                left.discard(m.partition() or 0)
            elif err.fatal():
                raise KafkaError(f"changelog read failed: {err}", topic=self.topic)
            else:
                log.warning("changelog %s[%s]: %s", self.topic, m.partition(), err)
        return good

    @staticmethod
    def _take(r: Restored, msgs: list[Message], floor: bytes) -> None:
        """Add a partition's records to what it restores (the per-record work in C: map)."""
        # The pipeline writes every changelog record with a key (the store's).
        keys = cast(list[bytes], list(map(Message.key, msgs)))
        values = list(map(Message.value, msgs))
        r.records += len(msgs)
        r.entries.extend(zip(keys, map(_state_of, values), strict=True))
        ahead = r.ahead
        for k, v in zip(keys, values, strict=True):
            if v is None:
                if ahead:
                    ahead.pop(k, None)
            elif v[:8] > floor:
                ahead[k] = _OFFSET.unpack_from(v)[0]

    def _stable_ends(self, partitions: list[int]) -> dict[int, tuple[int, int]]:
        out: dict[int, list[int]] = {p: [0, 0] for p in partitions}
        try:
            for i, spec in enumerate((OffsetSpec.earliest(), OffsetSpec.latest())):
                req = {TopicPartition(self.topic, p): spec for p in partitions}
                res = self._admin.list_offsets(req, isolation_level=IsolationLevel.READ_COMMITTED,
                                               request_timeout=self.timeout_s)  # fmt: skip
                for tp, fut in res.items():
                    out[tp.partition][i] = fut.result().offset
        except KafkaException as exc:
            raise KafkaError(f"list_offsets failed: {exc}", topic=self.topic) from exc
        return {p: (lo, hi) for p, (lo, hi) in out.items()}

    def committed(self, partitions: list[int]) -> dict[int, int | None]:
        """The pipeline group's committed offset of each input partition (None: none)."""
        tps = [TopicPartition(self.input_topic, p) for p in partitions]
        try:
            got = self._consumer.committed(tps, timeout=self.timeout_s)
        except KafkaException as exc:
            raise KafkaError(f"cannot read committed offsets: {exc}",
                             topic=self.input_topic) from exc  # fmt: skip
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in got}

    def input_end(self, partition: int) -> int:
        """The input partition's end offset (high watermark) now."""
        try:
            _, hi = self._consumer.get_watermark_offsets(
                TopicPartition(self.input_topic, partition), timeout=self.timeout_s
            )
        except KafkaException as exc:
            raise KafkaError(f"cannot read the end offset: {exc}", topic=self.input_topic,
                             partition=partition) from exc  # fmt: skip
        return int(hi)

    def read(self, partitions: list[int]) -> dict[int, Restored]:
        """Every record of each changelog partition, up to its last stable offset now."""
        t0 = time.perf_counter()
        out = {p: Restored() for p in partitions}
        if not partitions:
            return out
        committed = self.committed(partitions)
        for p, c in committed.items():
            out[p].committed = c
        for p in partitions:
            out[p].input_end = self.input_end(p)
        ends = self._stable_ends(partitions)
        left = {p for p, (lo, hi) in ends.items() if hi > lo}
        if left:
            self._read(out, left, ends)
        for r in out.values():
            r.seconds = time.perf_counter() - t0
        return out

    def _read(
        self, out: Mapping[int, Restored], left: set[int], ends: Mapping[int, tuple[int, int]]
    ) -> None:
        c = self._consumer
        c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(left)])
        deadline = time.monotonic() + self.timeout_s
        # A value's first 8 bytes (big-endian, non-negative) compare as bytes as the offsets
        # do: a key is ahead when they exceed the committed offset's (b"": none committed,
        # every key is ahead).
        floor = {p: b"" if r.committed is None else _OFFSET.pack(r.committed)
                 for p, r in out.items()}  # fmt: skip
        try:
            while left:
                if time.monotonic() > deadline:
                    raise KafkaError(f"changelog partitions {sorted(left)} not read to their end "
                                     f"within {self.timeout_s:g}s", topic=self.topic)  # fmt: skip
                msgs = c.consume(num_messages=10_000, timeout=0.1)
                if any(map(Message.error, msgs)):
                    msgs = self._errors(msgs, left)
                # Per partition, the records of this call (one partition at a time, mostly).
                parts = list(map(Message.partition, msgs))
                for q in set(parts):
                    mine = msgs if len(set(parts)) == 1 else [
                        m for m, o in zip(msgs, parts, strict=True) if o == q]  # fmt: skip
                    p = q or 0
                    self._take(out[p], mine, floor[p])
                    if (mine[-1].offset() or 0) + 1 >= ends[p][1]:
                        left.discard(p)
                if left:  # markers and aborted records end a partition without a record
                    for tp in c.position([TopicPartition(self.topic, p) for p in left]):
                        if tp.offset >= ends[tp.partition][1]:
                            left.discard(tp.partition)
        finally:
            c.unassign()
