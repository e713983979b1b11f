"""Labels from the feedback topic, read in a background thread for the accuracy monitor."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from itertools import chain

import numpy as np
import numpy.typing as npt
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka import KafkaError as CkError

from streamproc import schemas
from streamproc.codecs.decoder import BatchDecoder
from streamproc.errors import KafkaError, SchemaRegistryError
from streamproc.kafka.configuration import Connection, client_config
from streamproc.kafka.registry import Registry
from streamproc.models.spec import FeatureSpec, ModelSpec
from streamproc.types import ReasonCode, RejectedRecord

log = logging.getLogger(__name__)


# Consumer errors a retry cannot cure: the principal lacks an ACL.
_DENIED = frozenset({CkError.TOPIC_AUTHORIZATION_FAILED, CkError.GROUP_AUTHORIZATION_FAILED})


def _headers(m: Message) -> list[tuple[str, bytes]]:
    """A consumed record's headers (a list of pairs; the client's type also allows a dict)."""
    h = m.headers() or []
    pairs = h.items() if isinstance(h, dict) else h
    return [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in pairs]


def label_spec(labels: Sequence[str]) -> ModelSpec:
    """The ``Label`` record as the batch decoder reads it: the label as the index of one of
    the model's output labels (any other value is ``UNKNOWN_ENUM``), the event id and the
    label's time.

    >>> label_spec(["legit", "fraud"]).columns
    ['label']
    """
    return ModelSpec(
        name="labels",
        version="0.0.0",
        inputs=(FeatureSpec(field="label", encoding="index", symbols=tuple(labels)),),
        id_field="event_id",
        time_field="time",
    )


class FeedbackReader:
    """Consumes ``Label`` records from the topic's start; :meth:`drain` hands them over.

    Every replica reads every label: the reader assigns itself all of the topic's partitions
    from their start (no group membership, no committed offsets), so a label for an event
    that another replica scored counts as unmatched in this one's accuracy monitor.
    ``group_id`` is stable per pipeline and replica (``"<group>-labels-<instance>"``): the
    reader joins no group and commits nothing, so it leaves no consumer group behind.

    Each consumed chunk is decoded at once by the compiled batch decoder
    (:class:`~streamproc.codecs.decoder.BatchDecoder`, with :func:`label_spec`), as input
    events are. A record that is not a readable label gets the input's reason codes (no
    value, not framed, an unknown schema id, bytes that are not Avro of its schema, a label
    that is not one of ``labels``) and is kept for :meth:`drain_rejected`: the batch handler
    dead-letters it (:class:`~streamproc.pipeline.handler.RejectedLabels`). While the
    registry cannot be reached (or refuses the reader), the reader waits and reads the same
    records again. At most ``max_buffer`` labels wait for :meth:`drain`; past that the
    oldest chunks are dropped, logged and counted in :attr:`dropped`.
    """

    RETRY_S = 1.0  # the wait after a registry outage before the same records are read again
    # How often the topic's partition count is looked up again: partitions added to the
    # topic later are read from their start too.
    REFRESH_S = 30.0

    def __init__(
        self,
        bootstrap: Connection,
        registry: Registry,
        topic: str,
        labels: Sequence[str] = ("legit", "fraud"),
        max_buffer: int = 1_000_000,
        group_id: str | None = None,
    ):
        self.topic = topic
        self.group_id = group_id or f"streamproc-feedback-{topic}"
        self.decoder = BatchDecoder(label_spec(labels), schemas.schema_dict("Label"), registry)
        self._symbols = np.array(list(labels), dtype=object)
        self.consumer = Consumer({
            **client_config(bootstrap),
            "group.id": self.group_id,
            "auto.offset.reset": "earliest",  # labels sent before the start too
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        })  # fmt: skip
        self.max_buffer = max_buffer
        self._chunks: deque[tuple[list[str], npt.NDArray[np.object_]]] = deque()
        self._buffered = 0
        self._rejected: list[RejectedRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.assigned = threading.Event()  # set once every partition is assigned
        self._partitions = 0
        self._looked = float("-inf")  # when the partitions were last looked up
        self.rejected = 0
        self.dropped = 0
        self.failure: KafkaError | None = None  # set when the reader stopped for good
        self._thread = threading.Thread(target=self._run, daemon=True, name="feedback")

    def start(self) -> FeedbackReader:
        self._thread.start()
        return self

    def _assign_new_partitions(self) -> None:
        """Assign, from their start, the topic's partitions not assigned yet."""
        self._looked = time.monotonic()
        try:
            meta = self.consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
        except KafkaException as exc:  # the broker is away: look again on the next turn
            log.warning("labels: cannot read the partitions of %s: %s", self.topic, exc)
            self._looked -= self.REFRESH_S - self.RETRY_S
            return
        n = len(meta.partitions) if meta is not None and meta.error is None else 0
        if n > self._partitions:
            new = [TopicPartition(self.topic, p, OFFSET_BEGINNING)
                   for p in range(self._partitions, n)]  # fmt: skip
            self.consumer.incremental_assign(new)
            self._partitions = n
            self.assigned.set()
        elif n == 0:  # no such topic yet
            self._looked -= self.REFRESH_S - self.RETRY_S

    @property
    def alive(self) -> bool:
        """Whether the reading thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if time.monotonic() - self._looked >= self.REFRESH_S:
                    self._assign_new_partitions()
                    if not self._partitions:
                        self._stop.wait(self.RETRY_S)
                        continue
                got = self.consumer.consume(500, timeout=0.5)
                errs = [e for m in got if (e := m.error()) is not None]
                denied = [e for e in errs if e.code() in _DENIED]
                if denied:  # retrying never grants an ACL: the processor stops on it
                    self.failure = KafkaError(
                        f"the label reader may not read {self.topic}: {denied[0].str()}; "
                        "the principal needs the ACLs of `streamproc acls plan`",
                        topic=self.topic,
                    )
                    return
                msgs = [m for m in got if m.error() is None]
                if msgs:  # (other client errors are transient: librdkafka retries)
                    self._read(msgs)
        finally:
            self.consumer.close()

    def _read(self, msgs: list[Message]) -> None:
        try:
            dec = self.decoder.decode(list(map(Message.value, msgs)))
        except SchemaRegistryError as exc:  # unreachable, or refusing (auth): not the labels'
            log.warning("labels wait for the registry: %s", exc)
            self._seek_back(msgs)
            self._stop.wait(self.RETRY_S)
            return
        ok = dec.errors == 0
        rows = np.flatnonzero(ok)
        ids = (
            list(dec.event_ids)
            if rows.size == len(msgs)
            else [dec.event_ids[i] for i in rows.tolist()]
        )
        labels = self._symbols[dec.features[rows, 0].astype(np.intp)]
        bad = [
            self._rejected_record(
                msgs[i], ReasonCode(int(dec.errors[i])), dec.details[i], int(dec.schema_ids[i])
            )
            for i in np.flatnonzero(~ok).tolist()
        ]
        with self._lock:
            if ids:
                self._chunks.append((ids, labels))
                self._buffered += len(ids)
            dropped = 0
            while self._buffered > self.max_buffer:  # nobody drains: drop the oldest
                old, _ = self._chunks.popleft()
                self._buffered -= len(old)
                dropped += len(old)
            self.dropped += dropped
            self._rejected.extend(bad)
            self.rejected += len(bad)
        if dropped:
            log.warning("%d labels dropped: more than %d waited to be joined", dropped,
                        self.max_buffer)  # fmt: skip
        for r in bad:
            log.warning("unreadable label at %s/%s: %s", r.partition, r.offset, r.detail)

    def _rejected_record(
        self, m: Message, reason: ReasonCode, detail: str | None, schema_id: int
    ) -> RejectedRecord:
        return RejectedRecord(
            topic=m.topic() or self.topic,
            partition=m.partition() or 0,
            offset=m.offset() or 0,
            key=m.key(),  # type: ignore[arg-type]  # bytes: no deserializer configured
            value=m.value(),  # type: ignore[arg-type]
            headers=_headers(m),
            reason=reason,
            detail=detail or reason.name,
            schema_id=schema_id if schema_id >= 0 else None,
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

    def drain(self) -> tuple[list[str], npt.NDArray[np.object_]]:
        """The labels read since the last call: event ids and labels, in the order read.
        Raises the reader's :attr:`failure` (a missing ACL), in the caller's thread."""
        if self.failure is not None:
            raise self.failure
        with self._lock:
            chunks = list(self._chunks)
            self._chunks.clear()
            self._buffered = 0
        if not chunks:
            return [], self._symbols[:0]
        ids = list(chain.from_iterable(c[0] for c in chunks))
        return ids, np.concatenate([c[1] for c in chunks])

    def drain_rejected(self) -> list[RejectedRecord]:
        """The unreadable records since the last call, in the order read; raises
        :attr:`failure` as :meth:`drain` does."""
        if self.failure is not None:
            raise self.failure
        with self._lock:
            out, self._rejected = self._rejected, []
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
