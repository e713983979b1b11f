"""The feedback reader's handling of a chunk: labels out, rejects kept, the registry waited
for, the buffer bounded. Records are built in memory and handed to ``_read``; the reader's
whole path over a real broker is in tests/pipeline/test_accuracy.py."""

from __future__ import annotations

import io
from typing import Any

import fastavro
from confluent_kafka import Message, TopicPartition

from streamproc import schemas
from streamproc.errors import RegistryUnavailableError
from streamproc.kafka.feedback import FeedbackReader
from streamproc.types import ReasonCode

SID = 7


class _Source:
    """The Label schema under id 7; ``down`` calls raise a registry outage first."""

    def __init__(self, down: int = 0) -> None:
        self.down = down

    def schema(self, schema_id: int) -> dict[str, Any] | None:
        if self.down:
            self.down -= 1
            raise RegistryUnavailableError("registry unreachable")
        return schemas.schema_dict("Label") if schema_id == SID else None


class _Seeks:
    """Stands in for the reader's consumer where only ``seek`` is called."""

    def __init__(self) -> None:
        self.seeks: list[tuple[int, int]] = []

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.partition, tp.offset))


def _label(event_id: str, label: str) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schemas.parsed("Label"),
                               {"event_id": event_id, "label": label, "time": 1})  # fmt: skip
    return b"\x00" + SID.to_bytes(4, "big") + buf.getvalue()


def _msgs(values: list[bytes | None], partition: int = 0, first: int = 0) -> list[Message]:
    return [Message(topic="labels", partition=partition, offset=first + i, key=b"k", value=v)
            for i, v in enumerate(values)]  # fmt: skip


def _reader(source: _Source, **kw: Any) -> FeedbackReader:
    # Never subscribed, so the client connects nowhere: _read is driven by hand.
    r = FeedbackReader("127.0.0.1:9", source, "labels", ("legit", "fraud"), **kw)  # type: ignore[arg-type]
    r.consumer.close()
    r.consumer = _Seeks()  # type: ignore[assignment]
    return r


def test_a_chunk_gives_labels_in_order_and_keeps_its_rejects() -> None:
    r = _reader(_Source())
    r._read(_msgs([_label("a", "fraud"), None, _label("b", "maybe"), _label("c", "legit"),
                   b"\x00\x00\x00\x00\x07\x02"]))  # fmt: skip
    ids, labels = r.drain()
    assert ids == ["a", "c"] and labels.tolist() == ["fraud", "legit"]
    got = [(x.offset, x.reason, x.schema_id) for x in r.drain_rejected()]
    assert got == [
        (1, ReasonCode.NULL_VALUE, None),
        (2, ReasonCode.UNKNOWN_ENUM, SID),
        (4, ReasonCode.TRUNCATED, SID),
    ]
    ids, labels = r.drain()
    assert ids == [] and labels.size == 0
    assert r.drain_rejected() == [] and r.rejected == 3


def test_a_registry_outage_reads_the_same_records_again() -> None:
    r = _reader(_Source(down=1))
    r.RETRY_S = 0.0  # the wait itself is not under test
    chunk = _msgs([_label("a", "fraud")], partition=2, first=40)
    chunk += _msgs([_label("b", "legit")], partition=0, first=9)
    r._read(chunk)
    assert r.drain()[0] == [] and r.drain_rejected() == []  # nothing lost, nothing rejected
    assert sorted(r.consumer.seeks) == [(0, 9), (2, 40)]  # type: ignore[attr-defined]
    r._read(chunk)  # what the consumer hands back after the seeks
    assert r.drain()[0] == ["a", "b"]


def test_labels_nobody_drains_are_bounded_and_counted() -> None:
    r = _reader(_Source(), max_buffer=3)
    for k in range(3):
        r._read(_msgs([_label(f"{k}a", "legit"), _label(f"{k}b", "fraud")]))
    assert r.dropped == 4
    assert r.drain()[0] == ["2a", "2b"]


def test_the_group_id_is_the_one_given_or_stable_per_topic() -> None:
    # A random id per start left an empty consumer group behind at every start.
    r = FeedbackReader("127.0.0.1:9", _Source(), "labels", group_id="g-labels-r1")  # type: ignore[arg-type]
    again = FeedbackReader("127.0.0.1:9", _Source(), "labels")  # type: ignore[arg-type]
    for x in (r, again):
        x.consumer.close()
    assert r.group_id == "g-labels-r1"
    assert again.group_id == "streamproc-feedback-labels"
