"""The deployment control topic on Kafka: a :class:`ControlStore` and a background watcher.

The control topic is compacted and keyed by model name; each value is one
:func:`~streamproc.rollout.state.encode`-d snapshot. Readers take every record from the
beginning to the end offsets (the high watermarks at the time of the read) and keep, per
model, the snapshot with the highest revision (:func:`~streamproc.rollout.state.converge`),
so every replica agrees whatever compaction has removed.

Every published snapshot also goes, as the same bytes under the same key and in the same
transaction, to the audit topic (:func:`~streamproc.rollout.store.audit_topic`: never
compacted, kept forever): the deployment's audit trail, and what ``history`` reads, so it
outlives compaction. Readers read committed records only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka import KafkaError as CkError

from streamproc.errors import DeploymentError, KafkaError
from streamproc.kafka.admin import Admin, check_secured
from streamproc.kafka.configuration import Connection, client_config
from streamproc.rollout.replicas import ReplicaStatus, replicas_topic
from streamproc.rollout.replicas import decode as decode_replica
from streamproc.rollout.replicas import encode as encode_replica
from streamproc.rollout.state import DeploymentState, converge, decode, encode, key, newer
from streamproc.rollout.store import ControlStore, audit_topic
from streamproc.topicplan import AUDIT_TOPIC_CONFIG

if TYPE_CHECKING:
    from streamproc.config import PipelineConfig
    from streamproc.rollout.ab import ABSource, VariantData

log = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes | None]
# A topic's metadata errors that mean "not yours to see", not "not there yet".
_DENIED = frozenset({CkError.TOPIC_AUTHORIZATION_FAILED})


def _consumer(conn: Connection) -> Consumer:
    return Consumer({
        **client_config(conn), "group.id": f"control-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })  # fmt: skip


def _partitions(consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaError(f"cannot read the metadata of {topic}: {exc}", topic=topic) from exc
    tm = meta.topics.get(topic)
    if tm is not None and tm.error is not None and tm.error.code() in _DENIED:
        raise KafkaError(f"not allowed to read the control topic {topic}: {tm.error.str()}; "
                         "the principal needs Describe and Read on it (`streamproc acls "
                         "plan`)", topic=topic)  # fmt: skip
    if tm is None or tm.error is not None:
        return []  # no such topic yet: nothing was ever deployed
    return sorted(tm.partitions)


def read_to_end(conn: Connection, topic: str, timeout_s: float = 10.0) -> list[Record]:
    """Every ``(key, value)`` of ``topic`` from the beginning to its end offsets now."""
    c = _consumer(conn)
    try:
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for p in _partitions(c, topic, timeout_s):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        out: list[Record] = []
        if not ends:
            return out
        c.assign(starts)
        deadline = time.monotonic() + timeout_s
        while ends:
            # consume() waits for a full batch or the timeout: poll in short slices.
            msgs = c.consume(500, timeout=0.05)
            if not msgs and time.monotonic() > deadline:
                raise KafkaError(f"read of {topic} stalled before its end offsets {ends}",
                                 topic=topic)  # fmt: skip
            if msgs:
                deadline = time.monotonic() + timeout_s
            for m in msgs:
                if (err := m.error()) is not None and err.code() in _DENIED:
                    raise KafkaError(f"not allowed to read the control topic {topic}: "
                                     f"{err.str()}; the principal needs Read on it "
                                     "(`streamproc acls plan`)", topic=topic)  # fmt: skip
                if err is not None:
                    continue
                part, off = m.partition(), m.offset()
                if part is None or off is None or part not in ends or off >= ends[part]:
                    continue
                p = part
                out.append((m.key(), m.value()))
                if off + 1 >= ends[p]:
                    del ends[p]
            # Compaction or transaction markers can leave the last offsets empty.
            for tp in c.position([TopicPartition(topic, p) for p in list(ends)]):
                if tp.offset >= 0 and tp.offset >= ends.get(tp.partition, -1):
                    ends.pop(tp.partition, None)
        return out
    except KafkaException as exc:
        raise KafkaError(f"cannot read the control topic: {exc}", topic=topic) from exc
    finally:
        c.close()


class KafkaControlStore(ControlStore):
    """A :class:`ControlStore` over the compacted control topic, with its audit topic and
    the replicas' reports."""

    def __init__(
        self, conn: Connection, topic: str, timeout_s: float = 10.0, audit: str | None = None
    ) -> None:
        check_secured(conn)  # a refused login fails here, not as a read timeout
        self.conn = conn
        self.topic = topic
        self.audit_topic = audit or audit_topic(topic)
        self.timeout_s = timeout_s
        self._producer: Producer | None = None
        self._audit_ready = False

    def records(self) -> list[Record]:
        """Every ``(key, value)`` on the topic, from the beginning to the current end."""
        return read_to_end(self.conn, self.topic, self.timeout_s)

    def states(self) -> dict[str, DeploymentState]:
        return converge(self.records())

    def latest(self, name: str) -> DeploymentState | None:
        return self.states().get(name)

    def history(self, name: str) -> list[DeploymentState]:
        """Every revision of the model, from the audit topic and whatever the control
        topic still holds (states published before the audit topic existed)."""
        by_revision: dict[int, DeploymentState] = {}
        audit = read_to_end(self.conn, self.audit_topic, self.timeout_s)
        for k, v in [*audit, *self.records()]:
            if v is None or k is None or k.decode(errors="replace") != name:
                continue
            try:
                s = decode(v)
            except DeploymentError as exc:
                log.warning("skipping a control record of %s: %s", name, exc)
                continue
            best = newer(by_revision.get(s.revision), s)
            assert best is not None
            by_revision[s.revision] = best
        return [by_revision[r] for r in sorted(by_revision)]

    def publish(self, state: DeploymentState) -> None:
        current = self.latest(state.model)
        if current is not None and state.revision <= current.revision:
            raise DeploymentError(
                f"{state.model}: revision {state.revision} is stale "
                f"(the control topic holds revision {current.revision})"
            )
        if not self._audit_ready:  # once per store: publishing is rare, creating is not free
            Admin(self.conn).ensure_topics(
                [self.audit_topic], config=AUDIT_TOPIC_CONFIG, timeout_s=self.timeout_s
            )
            self._audit_ready = True
        p = self._transactional_producer()
        try:
            # One transaction: the audit record and the control record are committed
            # together or not at all (readers of both topics read committed records only).
            p.begin_transaction()
            value, k = encode(state), key(state)
            p.produce(self.audit_topic, value, k)
            p.produce(self.topic, value, k)
            p.commit_transaction(self.timeout_s)  # flushes; fails on any failed record
            self._await_visible(state)
        except KafkaException as exc:
            self._producer = None  # a fenced or failed producer is not reused
            with contextlib.suppress(KafkaException):
                p.abort_transaction(self.timeout_s)
            raise KafkaError(
                f"publishing {state.model} revision {state.revision} failed (nothing was "
                f"published): {exc}",
                topic=self.topic,
            ) from exc

    def _await_visible(self, state: DeploymentState) -> None:
        """Return once readers see ``state``: a committed transaction's markers are written
        after ``commit_transaction`` returns, so a read right after it (the next command of
        a script, a replica's start) could still miss the state. Bounded by the store's
        timeout; the state is committed either way."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            seen = self.latest(state.model)
            if seen is not None and seen.revision >= state.revision:
                return
            time.sleep(0.02)  # the markers land within milliseconds on a healthy broker
        log.warning("%s revision %d is committed but not yet visible to readers",
                    state.model, state.revision)  # fmt: skip

    def close(self) -> None:
        """Disconnect the publishing producer, if one was made (a later publish makes
        another)."""
        p, self._producer = self._producer, None
        if p is not None:
            p.close()

    def _transactional_producer(self) -> Producer:
        if self._producer is None:
            p = Producer({
                **client_config(self.conn), "acks": "all",
                # One id per store: publishers never fence each other (a publish is a whole
                # transaction, and a stale one is refused by revision before it starts).
                "transactional.id": f"streamproc-control-{uuid.uuid4().hex}",
            })  # fmt: skip
            try:
                p.init_transactions(self.timeout_s)
            except KafkaException as exc:
                raise KafkaError(f"cannot publish: {exc}", topic=self.topic) from exc
            self._producer = p
        return self._producer

    def names(self) -> list[str]:
        return sorted(self.states())

    def replicas(self) -> list[ReplicaStatus]:
        return read_replicas(self.conn, self.topic, self.timeout_s)


def make_store(conn: Connection, topic: str) -> ControlStore:
    """The control store the CLI uses."""
    return KafkaControlStore(conn, topic)


class ControlWatcher:
    """Follow the control topic in a thread; call ``on_state`` with each newer snapshot.

    Reads from the beginning (so it also sees what was published before it started) and
    calls ``on_state`` only when a model's converged snapshot gets a higher revision.
    ``on_state`` runs on the watcher thread; an exception in it is logged, not raised.
    """

    def __init__(
        self,
        conn: Connection,
        topic: str,
        on_state: Callable[[DeploymentState], None],
        *,
        poll_s: float = 0.2,
    ) -> None:
        self.topic = topic
        self._on_state = on_state
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._consumer = _consumer(conn)
        self._states: dict[str, DeploymentState] = {}
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{topic}")
        self._started = False

    def start(self) -> ControlWatcher:
        self._started = True
        self._thread.start()
        return self

    def _run(self) -> None:
        c = self._consumer
        try:
            assigned = False
            while not self._stop.is_set():
                if not assigned:
                    parts = _partitions(c, self.topic, self._poll_s * 5)
                    if not parts:
                        self._stop.wait(self._poll_s)
                        continue
                    c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
                    assigned = True
                for m in c.consume(100, timeout=self._poll_s):
                    if m.error() is None:
                        self._record(m.value())
        except Exception:
            log.exception("control watcher on %s failed", self.topic)
        finally:
            c.close()

    def _record(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            state = decode(value)
        except DeploymentError as exc:
            log.warning("ignoring a control record on %s: %s", self.topic, exc)
            return
        old = self._states.get(state.model)
        if old is not None and newer(old, state) is old:
            return
        self._states[state.model] = state
        try:
            self._on_state(state)
        except Exception:
            log.exception("applying %s revision %d failed", state.model, state.revision)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if not self._started:
            self._started = True  # never ran: close here, once
            self._consumer.close()
        elif self._thread.is_alive():
            self._thread.join(timeout_s)


class ReplicaReporter:
    """Publish what this replica serves to ``<control topic>.replicas``: at once when
    :meth:`report` is called (a state was applied), then every ``interval_s`` as a
    heartbeat, and a tombstone at :meth:`close` (a clean stop). Delivery is best effort: a
    report that fails is logged and sent again with the next heartbeat."""

    def __init__(
        self,
        conn: Connection,
        control_topic: str,
        current: Callable[[], ReplicaStatus],
        *,
        interval_s: float = 5.0,
    ) -> None:
        self.topic = replicas_topic(control_topic)
        self._current = current
        self._interval_s = interval_s
        self._producer = Producer({**client_config(conn), "linger.ms": 0})
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"report-{self.topic}")
        self._key: bytes | None = None

    def start(self) -> ReplicaReporter:
        self._thread.start()
        return self

    def report(self) -> None:
        """Publish now (from any thread): the replica applied a new state."""
        self._wake.set()

    def _send(self) -> None:
        try:
            status = self._current()
            self._key = status.key
            self._producer.produce(self.topic, encode_replica(status), status.key)
            self._producer.poll(0)
        except (KafkaException, BufferError) as exc:
            log.warning("cannot report this replica's state on %s: %s", self.topic, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._send()
            # Wakes at the next heartbeat's deadline, or at once for a new state.
            self._wake.wait(self._interval_s)
            self._wake.clear()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._key is not None:
            with contextlib.suppress(KafkaException, BufferError):
                self._producer.produce(self.topic, None, self._key)  # a tombstone: gone
        # Bounded: a broker that is gone must not hold the processor's exit.
        self._producer.flush(timeout_s)
        self._producer.close()  # no reconnecting to a broker that may be gone next


def read_replicas(
    conn: Connection, control_topic: str, timeout_s: float = 10.0
) -> list[ReplicaStatus]:
    """The latest report of every replica that has not stopped cleanly, by model and
    instance."""
    latest: dict[bytes, ReplicaStatus | None] = {}
    for k, v in read_to_end(conn, replicas_topic(control_topic), timeout_s):
        if k is None:
            continue
        if v is None:
            latest[k] = None
            continue
        try:
            latest[k] = decode_replica(v)
        except DeploymentError as exc:
            log.warning("skipping a replica report: %s", exc)
    return sorted((r for r in latest.values() if r is not None),
                  key=lambda r: (r.model, r.instance))  # fmt: skip


class KafkaABSource:
    """A/B data from the predictions topic: the model's predictions since the deployment."""

    def __init__(self, cfg: PipelineConfig, positive_label: str, timeout_s: float = 10.0) -> None:
        self.cfg = cfg
        self.positive_label = positive_label
        self.timeout_s = timeout_s

    def variants(self, state: DeploymentState) -> tuple[VariantData, VariantData]:
        from streamproc.kafka.clients import FramedDecoder
        from streamproc.kafka.configuration import registry_config
        from streamproc.kafka.registry import Registry
        from streamproc.rollout.ab import variants_from_predictions

        decoder = FramedDecoder(Registry(registry_config(self.cfg.registry)))
        preds: list[dict[str, Any]] = []
        for _, value in read_to_end(self.cfg.kafka, self.cfg.topics.predictions, self.timeout_s):
            if value is None:
                continue
            _, rec = decoder.decode(value)
            if (
                rec.get("model_name") == state.model
                and int(rec.get("processed_time", 0)) >= state.deployed_ms
            ):
                preds.append(rec)
        return variants_from_predictions(state, preds, positive_label=self.positive_label)


def _ms(value: object) -> int:
    """Epoch milliseconds of a timestamp-millis field (fastavro may give a datetime)."""
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    return int(value) if isinstance(value, int | float) else 0


def make_ab_source(cfg: PipelineConfig, name: str) -> ABSource:
    """The A/B source ``deploy ab-report --config`` uses (labels: the model's positive one)."""
    from streamproc.models.spec import load_model_spec

    out = load_model_spec(cfg.model).outputs
    if not out.labels:
        raise DeploymentError(f"{name}: the model names no labels; give --predictions")
    return KafkaABSource(cfg, out.labels[min(out.score_index, len(out.labels) - 1)])
