"""Python clients for users: an Avro event producer and a predictions consumer.

Both speak the Confluent wire format through the schema registry, so any
Confluent-compatible consumer or producer interoperates with them.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import fastavro
from confluent_kafka import Consumer, KafkaException, Message, Producer
from confluent_kafka import KafkaError as CkError

from streamproc import lineage, schemas
from streamproc.codecs.wire import classify_read_error
from streamproc.config import RegistrySettings
from streamproc.errors import CodecError, DeliveryError, KafkaError
from streamproc.kafka.admin import check_secured
from streamproc.kafka.configuration import (
    Connection,
    client_config,
    kafka_settings,
    principal,
    registry_config,
)
from streamproc.kafka.registry import Registry

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">bI")


RegistryConnection = RegistrySettings | str
"""The pipeline's registry settings, or a bare URL."""


def make_registry(conn: RegistryConnection) -> Registry:
    """A registry client for settings (their auth, CA, timeout) or for a bare URL."""
    return Registry(conn if isinstance(conn, str) else registry_config(conn))


class FramedDecoder:
    """Decode Confluent-framed Avro with the writer schema fetched by id (cached)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._schemas: dict[int, Any] = {}

    def cached(self, payload: bytes) -> bool:
        """True when decoding ``payload`` needs no registry call."""
        return len(payload) >= 5 and _HEADER.unpack_from(payload)[1] in self._schemas

    def decode(self, payload: bytes) -> tuple[int, dict[str, Any]]:
        if len(payload) < 5 or payload[0] != 0:
            raise CodecError("BAD_MAGIC", "not a Confluent-framed Avro payload")
        sid = _HEADER.unpack_from(payload)[1]
        parsed = self._schemas.get(sid)
        if parsed is None:
            raw = self.registry.schema(sid)
            if raw is None:
                raise CodecError("UNKNOWN_SCHEMA", f"schema id {sid} is not in the registry")
            parsed = self._schemas[sid] = fastavro.parse_schema(raw)
        try:
            rec = fastavro.schemaless_reader(io.BytesIO(payload[5:]), parsed, None)
        except Exception as exc:  # fastavro's errors for bad bytes vary (EOF, Index, ...)
            reason, detail = classify_read_error(exc)
            raise CodecError(reason.name, detail) from exc
        if not isinstance(rec, dict):
            raise CodecError("CORRUPT", f"schema id {sid} is not a record schema")
        return sid, rec


class EventProducer:
    """Produce Avro records (a registered schema) to a topic.

    ``send`` queues; ``flush`` waits for the broker and raises :class:`DeliveryError`
    naming each failed record's topic and partition.
    """

    def __init__(
        self,
        bootstrap: Connection,
        registry_url: RegistryConnection,
        topic: str,
        schema: str | dict[str, Any] = "Transaction",
        **conf: Any,
    ) -> None:
        check_secured(bootstrap)  # a refused login fails here, not as a flush timeout
        text = schemas.schema_text(schema) if isinstance(schema, str) else json.dumps(schema)
        self.topic = topic
        self.registry = make_registry(registry_url)
        self.schema_id = self.registry.register(schemas.subject_for(topic), text)
        self._parsed = fastavro.parse_schema(json.loads(text))
        self._prefix = _HEADER.pack(0, self.schema_id)
        self._errors: list[str] = []
        self._denied = False  # a delivery refused for a missing ACL: no retry will cure it
        self._settings = kafka_settings(bootstrap)
        self._log = _ClientLog()
        self.producer = Producer({
            **client_config(bootstrap), "linger.ms": 5, "enable.idempotence": True,
            "on_delivery": self._on_delivery, "delivery.report.only.error": True,
            "logger": self._log.logger, **conf,
        })  # fmt: skip

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._prefix)
        fastavro.schemaless_writer(buf, self._parsed, record)
        return buf.getvalue()

    def send(
        self,
        record: dict[str, Any],
        key: str | bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.send_raw(self.encode(record), key, headers)

    def send_raw(
        self, value: bytes | None, key: str | bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:  # fmt: skip
        """Produce bytes as they are (e.g. to test what consumers do with bad input)."""
        while True:
            try:
                self.producer.produce(self.topic, value, key, headers=headers)  # type: ignore[arg-type]
                return
            except BufferError:
                self.producer.poll(0.05)  # queue full: wait for deliveries to drain
            except KafkaException as exc:
                raise KafkaError(f"produce failed: {exc}", topic=self.topic) from exc

    def _on_delivery(self, err: Any, msg: Message) -> None:
        # Only the error is read: on some failures (an authorization error) the client's
        # Message accessors raise SystemError inside this callback, which would hide it.
        if err is None:
            return
        try:
            self._errors.append(f"{self.topic}: {err.str()}")
            self._denied |= err.code() in _WRITE_DENIED
        except Exception:  # the same client bug, on the error itself
            # After a fatal error, confluent-kafka 2.16 has also handed this callback an
            # error object that formatting could not read (TypeError: "doesn't define
            # __format__"); flush reports the fatal error from the client's log.
            self._errors.append(f"{self.topic}: delivery failed")

    def failures(self) -> list[str]:
        """Serve the delivery reports that are in, without waiting, and take the failed
        records' errors reported since the last call (or :meth:`flush`): for a producer that
        does not flush after each record."""
        self.producer.poll(0)
        errors, self._errors = self._errors, []
        return errors

    def flush(self, timeout_s: float = 30.0) -> None:
        try:
            left = self.producer.flush(timeout_s)
        # Fatal: e.g. no idempotence PID for a principal that may write nothing (Cluster
        # authorization failed). confluent-kafka 2.16 raises it as KafkaException, or, when
        # a delivery callback runs after it was set, as a SystemError caused by it (or a
        # TypeError from reading that callback's error: seen once in CI).
        except (KafkaException, SystemError, TypeError) as exc:
            err = _fatal_error(exc)
            why = err.str() if err is not None else self._log.fatal
            if why is None:
                raise
            if (err.code() in _WRITE_DENIED) if err is not None else "authorization" in why:
                self._deny(why)
            raise KafkaError(f"producing to {self.topic} failed: {why}",
                             topic=self.topic) from exc  # fmt: skip
        errors, self._errors = self._errors, []
        fatal = self._log.fatal
        if fatal is not None:  # a fatal error that flush did not raise (see above)
            if "authorization" in fatal.lower():
                self._deny(fatal)
            raise KafkaError(f"producing to {self.topic} failed: {fatal}", topic=self.topic)
        if self._denied:
            self._deny(f"Broker: Topic authorization failed ({len(errors)} records refused)")
        if left or errors:
            raise DeliveryError(
                f"{left} records unacknowledged after {timeout_s}s, {len(errors)} failed: "
                f"{errors[:3]}", topic=self.topic,
            )  # fmt: skip

    def _deny(self, why: str) -> NoReturn:
        """A missing ACL, as one line naming the principal, the topic and the fix."""
        self._denied, self._errors = False, []
        who = principal(self._settings) or "this client"
        raise DeliveryError(f"{who} may not write to {self.topic}: {why}; grant it Write on "
                            "the topic (`streamproc acls plan`)", topic=self.topic)  # fmt: skip

    def close(self) -> None:
        """Flush, then release the client (it stops reconnecting to the broker)."""
        try:
            self.flush()
        finally:
            self.producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Prediction:
    event_id: str
    key: str | None
    model_name: str
    model_version: str
    score: float
    scores: list[float]
    label: str
    event_time: int
    processed_time: int
    latency_ms: float
    partition: int = -1
    offset: int = -1
    headers: dict[str, bytes] = field(default_factory=dict)

    @property
    def lineage(self) -> dict[str, str]:
        """``model``, ``version``, ``batch`` and ``schema-id`` (the input's writer schema)
        from the ``streamproc-lineage`` header; ``{}`` when the record has none."""
        return lineage.decode(self.headers.get(lineage.HEADER))

    @classmethod
    def from_record(cls, rec: dict[str, Any], msg: Message) -> Prediction:
        def ms(v: Any) -> int:
            return int(v.timestamp() * 1000) if hasattr(v, "timestamp") else int(v)

        return cls(
            event_id=rec["event_id"], key=rec["key"], model_name=rec["model_name"],
            model_version=rec["model_version"], score=rec["score"], scores=list(rec["scores"]),
            label=rec["label"], event_time=ms(rec["event_time"]),
            processed_time=ms(rec["processed_time"]), latency_ms=rec["latency_ms"],
            partition=msg.partition() or 0, offset=msg.offset() or 0,
            headers=_headers(msg),
        )  # fmt: skip


def _headers(msg: Message) -> dict[str, bytes]:
    raw = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return {k: v if isinstance(v, bytes) else (v or "").encode() for k, v in items}


class _ClientLog(logging.Handler):
    """A client's librdkafka log (confluent-kafka's ``logger``), passed on to this module's
    logger; the first FATAL line is kept: when confluent-kafka 2.16 raises a fatal error as
    a SystemError that hides it, this is where it still is."""

    def __init__(self) -> None:
        super().__init__()
        self.fatal: str | None = None
        self.logger = logging.Logger("streamproc.kafka.librdkafka")  # one per client, unlisted
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.CRITICAL and self.fatal is None:
            self.fatal = record.getMessage().partition("Fatal error: ")[2] or record.getMessage()
        if log.isEnabledFor(record.levelno):
            log.handle(record)


def _fatal_error(exc: BaseException) -> CkError | None:
    """The client's error behind ``exc``: a KafkaException's, or that of the KafkaException
    that a SystemError was raised from (its cause or context)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KafkaException) and isinstance(seen.args[0], CkError):
            return seen.args[0]
        seen = seen.__cause__ or seen.__context__
    return None


# Producer errors a retry cannot cure: the principal may not write (the topic), or may
# write nothing at all (no idempotence PID: Cluster authorization failed).
_WRITE_DENIED = frozenset({CkError.TOPIC_AUTHORIZATION_FAILED,
                           CkError.CLUSTER_AUTHORIZATION_FAILED})  # fmt: skip
# Consumer errors a retry cannot cure: the principal lacks an ACL.
_DENIED = frozenset({CkError.TOPIC_AUTHORIZATION_FAILED, CkError.GROUP_AUTHORIZATION_FAILED})


class RecordConsumer:
    """Iterate decoded records of a topic (sync, confluent-kafka), read_committed."""

    def __init__(
        self,
        bootstrap: Connection,
        registry_url: RegistryConnection,
        topic: str,
        group_id: str | None = None,
        from_beginning: bool = True,
        **conf: Any,
    ) -> None:
        check_secured(bootstrap)  # the consumer would retry a refused login silently
        self.topic = topic
        self._settings = kafka_settings(bootstrap)
        self.decoder = FramedDecoder(make_registry(registry_url))
        self.consumer = Consumer({
            **client_config(bootstrap),
            "group.id": group_id or f"streamproc-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "isolation.level": "read_committed",
            "enable.auto.commit": group_id is not None,
            **conf,
        })  # fmt: skip
        self.consumer.subscribe([topic])

    def poll_batch(
        self, max_records: int = 500, timeout_s: float = 1.0
    ) -> list[tuple[Message, dict[str, Any]]]:
        out = []
        for m in self.consumer.consume(max_records, timeout=timeout_s):
            err = m.error()
            if err is not None and err.code() in _DENIED:  # retrying never grants an ACL
                who = principal(self._settings) or "this client"
                raise KafkaError(
                    f"{who} may not read {m.topic() or self.topic}: {err.str()}; grant "
                    "it Read on the topic and its consumer group (`streamproc acls plan "
                    "--role consumer|alerts`)",
                    topic=m.topic() or self.topic,
                )  # fmt: skip
            if err is not None:
                continue
            value = m.value()
            if value is None:
                continue
            _, rec = self.decoder.decode(value)
            out.append((m, rec))
        return out

    def __iter__(self) -> Iterator[tuple[Message, dict[str, Any]]]:
        while True:
            yield from self.poll_batch()

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> RecordConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PredictionConsumer(RecordConsumer):
    """Typed :class:`Prediction` records from a predictions topic.

    ``for p in PredictionConsumer(bootstrap, registry, "transactions.predictions"): ...``
    """

    def predictions(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Prediction]:
        return [Prediction.from_record(r, m) for m, r in self.poll_batch(max_records, timeout_s)]

    def __iter__(self) -> Iterator[Prediction]:  # type: ignore[override]
        while True:
            yield from self.predictions()
