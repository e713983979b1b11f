"""Request-reply over Kafka: a caller sends an event and waits for its prediction.

A request is an input event (Confluent-framed Avro, as on the input topic) on a requests
topic, with two headers: ``reply-to`` (the topic to answer on) and ``correlation-id``. The
:class:`ReplyServer` scores requests in micro-batches with the pipeline's
:class:`~streamproc.pipeline.handler.BatchHandler` (the same decoder, validation, model,
monitors and dead letters as the stream) and answers each on its ``reply-to`` topic with the
same ``correlation-id``: the ``Prediction`` record (header ``streamproc-status: ok``) or, for
a rejected event, its ``DeadLetter`` (``streamproc-status: rejected`` and
``streamproc-reason``); rejected events also go to the pipeline's DLQ as usual.

The clients, :class:`RequestClient` (confluent-kafka, thread-safe) and
:class:`AsyncRequestClient` (aiokafka), each read a reply topic of their own (created for
them and deleted on close), and match replies to calls by correlation id, so a reply never
reaches another caller; given a shared reply topic instead, a client reads all of it and
keeps only its own correlation ids. A call that gets no reply in time raises
:class:`RequestTimeoutError`; a rejected event raises :class:`RequestRejectedError`.

A server's group starts at the beginning of the requests topic the first time, and
afterwards at its committed offsets: requests sent while no server ran are answered when one
starts (a caller that timed out meanwhile drops its reply). Replies are at-least-once: a
server that crashes after answering and before committing answers those requests again, and
the client drops a reply whose call was already answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

import fastavro
import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from streamproc import schemas
from streamproc.batching import Released
from streamproc.errors import DependencyMissingError, KafkaError, StreamprocError
from streamproc.kafka.admin import Admin, check_secured
from streamproc.kafka.clients import FramedDecoder, Prediction, RegistryConnection, make_registry
from streamproc.kafka.configuration import Connection, aiokafka_config, client_config
from streamproc.kafka.runner import to_raw_batch
from streamproc.types import DecodedBatch, Outputs, RawBatch, ReleaseReason

if TYPE_CHECKING:
    from streamproc.pipeline.handler import BatchHandler

log = logging.getLogger(__name__)

REPLY_TO = "reply-to"
CORRELATION_ID = "correlation-id"
STATUS = "streamproc-status"
REASON = "streamproc-reason"


class RequestTimeoutError(KafkaError):
    """No reply came for a request within its timeout."""


class RequestRejectedError(StreamprocError):
    """The pipeline rejected the request's event: ``reason`` is its dead letter's reason
    code (``OUT_OF_RANGE``, ...), ``detail`` the sentence."""

    def __init__(self, reason: str, detail: str, correlation_id: str) -> None:
        self.reason = reason
        self.detail = detail
        self.correlation_id = correlation_id
        super().__init__(f"request {correlation_id} rejected: {reason}: {detail}")


def _header(headers: Any, name: str) -> bytes | None:
    """A header's value from a client's list of (name, value) pairs."""
    for k, v in headers or ():
        if k == name:
            return v if isinstance(v, bytes) or v is None else str(v).encode()
    return None


def _avro_string(value: bytes, at: int = 5) -> str:
    """The Avro string at ``at`` (a Prediction's first field, its event_id)."""
    n = shift = 0
    while True:
        b = value[at]
        at += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    length = (n >> 1) ^ -(n & 1)
    return value[at : at + length].decode("utf-8", "replace")


class _Capture:
    """The handler's decoder, keeping the last batch it decoded: the event ids tell which
    request each prediction answers."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last: DecodedBatch | None = None

    def decode(self, payloads: Sequence[bytes | None]) -> DecodedBatch:
        self.last = self.inner.decode(payloads)
        return self.last

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class ReplyServer:
    """Answers requests with the handler's outputs; :meth:`run` blocks until :meth:`stop`.

    ``handler`` is built like the live pipeline's
    (:func:`streamproc.pipeline.batchscore.build_handler`); its dead letters and alerts go
    to its topics, its predictions to the callers only."""

    def __init__(
        self,
        conn: Connection,
        requests_topic: str,
        handler: BatchHandler,
        *,
        group_id: str,
        max_batch: int = 512,
        max_wait_ms: float = 2.0,
    ) -> None:
        check_secured(conn)
        self.topic = requests_topic
        self.handler = handler
        self._capture = _Capture(handler.decoder)
        handler.decoder = self._capture
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.stop_event = threading.Event()
        self.answered = self.rejected = self.unanswerable = 0
        common = client_config(conn)
        self.consumer = Consumer({
            **common, "group.id": group_id, "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            "isolation.level": "read_committed", "fetch.wait.max.ms": 1,
        })  # fmt: skip
        self.producer = Producer({**common, "linger.ms": 0, "enable.idempotence": True,
                                  "acks": "all"})  # fmt: skip
        self.ready = threading.Event()  # set once the group assigned the requests topic

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        def assigned(consumer: Any, parts: list[TopicPartition]) -> None:
            self.ready.set()

        self.consumer.subscribe([self.topic], on_assign=assigned)
        try:
            while not self.stop_event.is_set():
                # consume(n, timeout) returns when n records are here or at the timeout: take
                # what is fetched already, else wake on the first record, then wait the batch
                # window for more (a lone request waits max_wait_ms, not the idle timeout).
                msgs = self.consumer.consume(self.max_batch, timeout=0)
                if not msgs:
                    msgs = self.consumer.consume(1, timeout=0.2)
                    if not msgs:
                        continue
                if len(msgs) < self.max_batch and self.max_wait_s > 0:
                    msgs += self.consumer.consume(self.max_batch - len(msgs), self.max_wait_s)
                good = [m for m in msgs if m.error() is None]
                for m in msgs:
                    err = m.error()
                    if err is not None and err.fatal():
                        raise KafkaError(f"consumer error: {err}", topic=self.topic)
                if good:
                    self._serve(good)
        finally:
            self.producer.flush(30)
            self.consumer.close()
            self.producer.close()

    def _serve(self, msgs: list[Message]) -> None:
        raw = to_raw_batch(self.topic, msgs, Released(msgs, ReleaseReason.SIZE, 0.0))
        out = self.handler(raw)
        self._reply(raw, msgs, out)
        self.producer.flush(30)  # answered before the requests' offsets move
        offsets: dict[int, int] = {}
        for m in msgs:
            p, o = int(m.partition() or 0), int(m.offset() or 0)
            offsets[p] = max(offsets.get(p, 0), o + 1)
        with contextlib.suppress(KafkaException):  # a rebalance: the next owner answers
            self.consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()],
                asynchronous=True,
            )

    def _reply(self, raw: RawBatch, msgs: list[Message], out: Outputs) -> None:
        dec = self._capture.last
        assert dec is not None
        rows_of: dict[str, deque[int]] = defaultdict(deque)
        for i in np.flatnonzero(dec.errors == 0).tolist():
            rows_of[dec.event_ids[i]].append(i)
        topics = self.handler.topics
        produce = self.producer.produce
        for b in out.blocks:
            if b.topic != topics.predictions:
                continue  # shadow predictions answer no one
            for v in b.values:
                rows = rows_of.get(_avro_string(v))
                if rows:
                    self._answer(msgs[rows.popleft()], v, b"ok", list(b.headers))
        where = {(int(raw.partitions[i]), int(raw.offsets[i])): i for i in range(len(raw))}
        dl_schema = schemas.parsed("DeadLetter")
        for r in out.records:
            if r.topic == topics.dlq and r.value is not None:  # dead letters are never None
                dl = fastavro.schemaless_reader(io.BytesIO(r.value[5:]), dl_schema, None)
                row = where.get((dl["partition"], dl["offset"])) if isinstance(dl, dict) else None
                if row is not None:
                    self.rejected += 1
                    self._answer(msgs[row], r.value, b"rejected", list(r.headers or []))
            if r.topic in (topics.dlq, topics.alerts):  # the pipeline's, as from the stream
                produce(r.topic, r.value, r.key, headers=r.headers)  # type: ignore[arg-type]

    def _answer(self, req: Message, value: bytes, status: bytes, headers: list[Any]) -> None:
        hdrs = req.headers() or []
        to, cid = _header(hdrs, REPLY_TO), _header(hdrs, CORRELATION_ID)
        if not to or cid is None:
            self.unanswerable += 1  # nobody to answer: its dead letter, if any, is in the DLQ
            return
        reply = [(CORRELATION_ID, cid), (STATUS, status), *headers]
        while True:
            try:
                self.producer.produce(to.decode(), value, req.key(), headers=reply)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.answered += 1


# -- clients -------------------------------------------------------------------------------


class _Encoder:
    """Input events as Confluent-framed Avro of ``schema`` (registered on the requests
    topic's subject)."""

    def __init__(self, registry: RegistryConnection, topic: str, schema: str | dict[str, Any]):
        text = schemas.schema_text(schema) if isinstance(schema, str) else json.dumps(schema)
        self.registry = make_registry(registry)
        sid = self.registry.register(schemas.subject_for(topic), text)
        self.parsed = fastavro.parse_schema(json.loads(text))
        self.prefix = b"\x00" + sid.to_bytes(4, "big")
        self.decoder = FramedDecoder(self.registry)

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.prefix)
        fastavro.schemaless_writer(buf, self.parsed, record)
        return buf.getvalue()

    def result(self, cid: str, value: bytes, headers: Any, msg: Any) -> Prediction:
        """The prediction of a reply, or :class:`RequestRejectedError`."""
        _, rec = self.decoder.decode(value)
        if _header(headers, STATUS) == b"rejected":
            raise RequestRejectedError(str(rec.get("reason")), str(rec.get("detail")), cid)
        return Prediction.from_record(rec, msg)


class _AioMessage:
    """An aiokafka record with the accessors Prediction.from_record reads."""

    def __init__(self, rec: Any) -> None:
        self._rec = rec

    def partition(self) -> int:
        return int(self._rec.partition)

    def offset(self) -> int:
        return int(self._rec.offset)

    def headers(self) -> list[tuple[str, bytes]]:
        return list(self._rec.headers or [])


def _own_reply_topic(conn: Connection, requests_topic: str) -> str:
    name = f"{requests_topic}.reply.{uuid.uuid4().hex[:12]}"
    Admin(conn).ensure_topics([name], partitions=1)
    return name


class RequestClient:
    """Synchronous request-reply (confluent-kafka). Thread-safe: any number of threads may
    call :meth:`request` or :meth:`submit` at once; one thread reads the replies.

    ``with RequestClient(bootstrap, registry, "transactions.requests") as client:
    prediction = client.request(record, key="acct-1", timeout_s=5)``
    """

    def __init__(
        self,
        bootstrap: Connection,
        registry: RegistryConnection,
        requests_topic: str,
        *,
        reply_topic: str | None = None,
        schema: str | dict[str, Any] = "Transaction",
        timeout_s: float = 10.0,
    ) -> None:
        check_secured(bootstrap)
        self.conn = bootstrap
        self.topic = requests_topic
        self.timeout_s = timeout_s
        self._owns_topic = reply_topic is None
        self.reply_topic = reply_topic or _own_reply_topic(bootstrap, requests_topic)
        self.encoder = _Encoder(registry, requests_topic, schema)
        common = client_config(bootstrap)
        self.producer = Producer({**common, "linger.ms": 1, "enable.idempotence": True})
        self.consumer = Consumer({
            **common, "group.id": f"streamproc-reply-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False, "fetch.wait.max.ms": 1,
            "isolation.level": "read_committed",
        })  # fmt: skip
        # From the end of the topic now (its start, for a topic made here): a reply to a
        # request sent after this point cannot be missed.
        md = self.consumer.list_topics(self.reply_topic, timeout=10)
        parts = sorted(md.topics[self.reply_topic].partitions)
        starts = []
        for p in parts:
            _, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.reply_topic, p), timeout=10
            )
            starts.append(TopicPartition(self.reply_topic, p, high))
        self.consumer.assign(starts)
        self._pending: dict[str, Future[Prediction]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True, name="reply-reader")
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                msgs = self.consumer.consume(500, timeout=0)  # what is here, no wait
                if not msgs:
                    msgs = self.consumer.consume(1, timeout=0.05)  # wake on the first
            except (KafkaException, RuntimeError):
                if self._stop.is_set():
                    return
                raise
            for m in msgs:
                if m.error() is not None:
                    continue
                headers = m.headers() or []
                cid_b = _header(headers, CORRELATION_ID)
                if cid_b is None:
                    continue
                cid = cid_b.decode()
                with self._lock:
                    fut = self._pending.pop(cid, None)
                if fut is None:  # another caller's (a shared topic), or answered already
                    continue
                try:
                    fut.set_result(self.encoder.result(cid, m.value() or b"", headers, m))
                except StreamprocError as exc:
                    fut.set_exception(exc)

    def submit(self, record: dict[str, Any], key: str | bytes | None = None) -> Future[Prediction]:
        """Send one request; the future gives its :class:`Prediction` (or raises
        :class:`RequestRejectedError`). :meth:`request` adds the timeout."""
        cid = uuid.uuid4().hex
        fut: Future[Prediction] = Future()
        fut.correlation_id = cid  # type: ignore[attr-defined]
        with self._lock:
            self._pending[cid] = fut
        headers: list[tuple[str, str | bytes | None]] = [
            (REPLY_TO, self.reply_topic.encode()), (CORRELATION_ID, cid.encode())
        ]  # fmt: skip
        value = self.encoder.encode(record)
        while True:
            try:
                self.producer.produce(self.topic, value, key, headers=headers)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)
        return fut

    def result(self, fut: Future[Prediction], timeout_s: float | None = None) -> Prediction:
        """Wait for a submitted request's reply, at most ``timeout_s`` (default: the
        client's); :class:`RequestTimeoutError` when none came."""
        wait = self.timeout_s if timeout_s is None else timeout_s
        try:
            return fut.result(wait)
        except FutureTimeout:
            cid = getattr(fut, "correlation_id", "?")
            with self._lock:
                self._pending.pop(cid, None)
            raise RequestTimeoutError(
                f"no reply to request {cid} within {wait:g}s on {self.reply_topic}: is a reply "
                f"server (streamproc reply-server) reading {self.topic}?",
                topic=self.topic,
            ) from None

    def request(
        self, record: dict[str, Any], key: str | bytes | None = None, timeout_s: float | None = None
    ) -> Prediction:
        """Send ``record`` and wait for its prediction."""
        return self.result(self.submit(record, key), timeout_s)

    def close(self) -> None:
        self._stop.set()
        self._reader.join(10)
        self.producer.flush(10)
        self.consumer.close()
        self.producer.close()
        if self._owns_topic:
            with contextlib.suppress(StreamprocError):
                Admin(self.conn).delete_topics([self.reply_topic])

    def __enter__(self) -> RequestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRequestClient:
    """Asyncio request-reply (aiokafka): ``async with AsyncRequestClient(...) as c:
    prediction = await c.request(record, key="acct-1", timeout_s=5)``. Any number of tasks
    may await requests at once."""

    def __init__(
        self,
        bootstrap: Connection,
        registry: RegistryConnection,
        requests_topic: str,
        *,
        reply_topic: str | None = None,
        schema: str | dict[str, Any] = "Transaction",
        timeout_s: float = 10.0,
    ) -> None:
        try:
            import aiokafka  # noqa: F401
        except ImportError as exc:  # pragma: no cover - aiokafka is in the dev extra
            raise DependencyMissingError("aiokafka", "aio") from exc
        self.conn = bootstrap
        self.registry = registry
        self.topic = requests_topic
        self.reply_topic = reply_topic
        self._owns_topic = reply_topic is None
        self.schema = schema
        self.timeout_s = timeout_s
        self._pending: dict[str, asyncio.Future[Prediction]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.structs import TopicPartition as AioTP

        # Registry and topic set-up are blocking calls: off the event loop.
        self.encoder = await asyncio.to_thread(_Encoder, self.registry, self.topic, self.schema)
        if self.reply_topic is None:
            self.reply_topic = await asyncio.to_thread(_own_reply_topic, self.conn, self.topic)
        conf = aiokafka_config(self.conn)
        self.producer = AIOKafkaProducer(**conf, linger_ms=1, enable_idempotence=True)
        self.consumer = AIOKafkaConsumer(**conf, group_id=None, enable_auto_commit=False,
                                         isolation_level="read_committed")  # fmt: skip
        await self.producer.start()
        await self.consumer.start()
        parts = self.consumer.partitions_for_topic(self.reply_topic)
        while not parts:  # metadata of a topic just made
            await self.consumer._client.force_metadata_update()
            parts = self.consumer.partitions_for_topic(self.reply_topic)
        tps = [AioTP(self.reply_topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        ends = await self.consumer.end_offsets(tps)
        for tp in tps:
            self.consumer.seek(tp, ends[tp])
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=500)
            for recs in batches.values():
                for r in recs:
                    headers = list(r.headers or [])
                    cid_b = _header(headers, CORRELATION_ID)
                    if cid_b is None:
                        continue
                    cid = cid_b.decode()
                    fut = self._pending.pop(cid, None)
                    if fut is None or fut.done():
                        continue
                    try:
                        fut.set_result(self.encoder.result(cid, r.value or b"", headers,
                                                           _AioMessage(r)))  # fmt: skip
                    except StreamprocError as exc:
                        fut.set_exception(exc)

    async def request(
        self, record: dict[str, Any], key: str | bytes | None = None, timeout_s: float | None = None
    ) -> Prediction:
        """Send ``record`` and wait for its prediction (:class:`RequestTimeoutError`,
        :class:`RequestRejectedError`)."""
        assert self.reply_topic is not None, "start() the client first (async with)"
        cid = uuid.uuid4().hex
        fut: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        k = key.encode() if isinstance(key, str) else key
        headers = [(REPLY_TO, self.reply_topic.encode()), (CORRELATION_ID, cid.encode())]
        await self.producer.send(self.topic, self.encoder.encode(record), key=k, headers=headers)
        wait = self.timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(fut, wait)
        except TimeoutError:
            self._pending.pop(cid, None)
            raise RequestTimeoutError(
                f"no reply to request {cid} within {wait:g}s on {self.reply_topic}: is a reply "
                f"server (streamproc reply-server) reading {self.topic}?",
                topic=self.topic,
            ) from None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.producer.stop()
        await self.consumer.stop()
        if self._owns_topic and self.reply_topic is not None:
            topic = self.reply_topic
            with contextlib.suppress(StreamprocError):
                await asyncio.to_thread(Admin(self.conn).delete_topics, [topic])

    async def __aenter__(self) -> AsyncRequestClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def wait_ready(server: ReplyServer, timeout_s: float = 30.0) -> None:
    """Block until ``server``'s group has assigned it the requests topic."""
    deadline = time.monotonic() + timeout_s
    while not server.ready.wait(0.1):
        if time.monotonic() > deadline:
            raise KafkaError("the reply server was not assigned the requests topic",
                             topic=server.topic)  # fmt: skip
