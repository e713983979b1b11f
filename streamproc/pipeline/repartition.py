"""Repartition an input by the feature key, for windowed features keyed by event fields.

Window state is partitioned with the input: the events of a key must all reach the same
partition. When ``features.key`` names event fields, a small stage runs in the processor
ahead of it: a :class:`~streamproc.kafka.runner.KafkaRunner` of its own (same guarantee,
its own consumer group ``<group_id>.repartition``) reads the input, reads the key fields of
each record (fastavro, the writer schema from the registry) and produces the record as it is
(value and headers) to ``<input>.repartition.<model>`` (as many partitions as the input),
keyed by those fields' values joined by ``|``. The processor then reads that topic.

A record whose key fields cannot be read (not Avro, an unknown schema, a null field) goes
through with no key: the processor dead-letters it there with the reason (the decoder's, or
MISSING_KEY), so nothing is lost on the way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from streamproc.errors import RegistryUnavailableError, StreamprocError
from streamproc.types import BatchHandlerLike, Outputs, OutRecord, RawBatch


class RecordDecoder(Protocol):
    def decode(self, payload: bytes) -> tuple[int, dict[str, Any]]: ...


def feature_key(record: dict[str, Any], fields: Sequence[str]) -> bytes | None:
    """The key of a record: its key fields' values joined by ``|`` (None: one is null).

    >>> feature_key({"a": "x", "b": {"c": 3}}, ["a", "b.c"]), feature_key({"a": None}, ["a"])
    (b'x|3', None)
    """
    parts = []
    for dotted in fields:
        v: Any = record
        for name in dotted.split("."):
            v = v.get(name) if isinstance(v, dict) else None
        if v is None or v == "":
            return None
        parts.append(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
    return "|".join(parts).encode()


class RepartitionHandler(BatchHandlerLike):
    """Each input record to the repartition topic, keyed by its feature key."""

    def __init__(self, decoder: RecordDecoder, fields: Sequence[str], topic: str) -> None:
        self.decoder = decoder
        self.fields = list(fields)
        self.topic = topic

    def __call__(self, raw: RawBatch) -> Outputs:
        out = Outputs()
        for i, value in enumerate(raw.values):
            key = None
            if value is not None:
                try:
                    _, rec = self.decoder.decode(value)
                    key = feature_key(rec, self.fields)
                except RegistryUnavailableError:
                    raise  # the runner holds the partition and retries
                except StreamprocError:
                    key = None  # dead-lettered by the processor, with its reason
            hdrs = raw.headers[i] or None
            headers = [(k, v) for k, v in hdrs if v is not None] if hdrs else None
            out.records.append(OutRecord(self.topic, key, value, headers))
        return out
