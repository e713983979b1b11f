"""Labels from the feedback topic, read in a background thread for the accuracy monitor."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque

from confluent_kafka import Consumer, Message, TopicPartition

from streamproc.errors import CodecError, RegistryUnavailableError
from streamproc.kafka.clients import FramedDecoder
from streamproc.kafka.registry import Registry
from streamproc.types import ReasonCode, RejectedRecord

log = logging.getLogger(__name__)


def _headers(m: Message) -> list[tuple[str, bytes]]:
    """A consumed record's headers (a list of pairs; the client's type also allows a dict)."""
    h = m.headers() or []
    pairs = h.items() if isinstance(h, dict) else h
    return [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in pairs]


class FeedbackReader:
    """Consumes ``Label`` records from the topic's start; :meth:`drain` hands them over.

    Every replica reads every label (its own consumer group): a label for an event that
    another replica scored counts as unmatched in this one's accuracy monitor.

    A record that is not a readable label (no value, not Confluent-framed, an unknown
    schema id, bytes that are not Avro of its schema, no ``event_id`` or ``label``) is
    kept with its reason for :meth:`drain_rejected`: the pipeline dead-letters it. While
    the registry cannot be reached, the reader waits and reads the same records again.

    >>> FeedbackReader.reject_reason(KeyError("label"))
    (<ReasonCode.INCOMPATIBLE_SCHEMA: 5>, "the label has no field 'label'")
    """

    RETRY_S = 1.0  # the wait after a registry outage before the same records are read again

    def __init__(self, bootstrap: str, registry: Registry, topic: str, max_buffer: int = 1_000_000):
        self.topic = topic
        self.decoder = FramedDecoder(registry)
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"streamproc-feedback-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",  # a fresh group: labels sent before start too
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        })  # fmt: skip
        self._buf: deque[tuple[str, str]] = deque(maxlen=max_buffer)
        self._rejected: list[RejectedRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.assigned = threading.Event()
        self.rejected = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="feedback")

    def start(self) -> FeedbackReader:
        self.consumer.subscribe([self.topic], on_assign=lambda c, p: self.assigned.set())
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """Whether the reading thread runs."""
        return self._thread.is_alive()

    @staticmethod
    def reject_reason(exc: CodecError | KeyError) -> tuple[ReasonCode, str]:
        if isinstance(exc, KeyError):
            return ReasonCode.INCOMPATIBLE_SCHEMA, f"the label has no field {exc.args[0]!r}"
        return ReasonCode[exc.reason], exc.detail

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                msgs = self.consumer.consume(500, timeout=0.5)
                got, bad = [], []
                for i, m in enumerate(msgs):
                    if m.error() is not None:
                        continue  # transient client errors: librdkafka retries
                    value = m.value()
                    try:
                        if value is None:
                            raise CodecError("NULL_VALUE", "a label record without a value")
                        _, rec = self.decoder.decode(value)
                        got.append((str(rec["event_id"]), str(rec["label"])))
                    except (CodecError, KeyError) as exc:
                        reason, detail = self.reject_reason(exc)
                        bad.append(self._rejected_record(m, reason, detail))
                    except RegistryUnavailableError as exc:
                        log.warning("labels wait for the registry: %s", exc)
                        self._seek_back(msgs[i:])
                        self._stop.wait(self.RETRY_S)
                        break
                with self._lock:
                    self._buf.extend(got)
                    self._rejected.extend(bad)
                    self.rejected += len(bad)
                for r in bad:
                    log.warning("unreadable label at %s/%s: %s", r.partition, r.offset, r.detail)
        finally:
            self.consumer.close()

    def _rejected_record(self, m: Message, reason: ReasonCode, detail: str) -> RejectedRecord:
        value = m.value()
        sid = int.from_bytes(value[1:5], "big") if value and len(value) >= 5 else None
        return RejectedRecord(
            topic=m.topic() or self.topic,
            partition=m.partition() or 0,
            offset=m.offset() or 0,
            key=m.key(),  # type: ignore[arg-type]  # bytes: no deserializer configured
            value=value,  # type: ignore[arg-type]
            headers=_headers(m),
            reason=reason,
            detail=detail,
            schema_id=sid if reason != ReasonCode.BAD_MAGIC else None,
        )

    def _seek_back(self, unread: list[Message]) -> None:
        """Read these records again: each partition from its first one among them."""
        first: dict[int, int] = {}
        for m in unread:
            p, o = m.partition(), m.offset()
            if p is not None and o is not None and (p not in first or o < first[p]):
                first[p] = o
        for p, o in first.items():
            self.consumer.seek(TopicPartition(self.topic, p, o))

    def drain(self) -> tuple[list[str], list[str]]:
        with self._lock:
            items = list(self._buf)
            self._buf.clear()
        return [e for e, _ in items], [lbl for _, lbl in items]

    def drain_rejected(self) -> list[RejectedRecord]:
        """The unreadable records since the last call, in the order read."""
        with self._lock:
            out, self._rejected = self._rejected, []
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
