"""Labels from the feedback topic, read in a background thread for the accuracy monitor."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque

from confluent_kafka import Consumer

from streamproc.errors import CodecError
from streamproc.kafka.clients import FramedDecoder
from streamproc.kafka.registry import Registry

log = logging.getLogger(__name__)


class FeedbackReader:
    """Consumes ``Label`` records from the topic's start; :meth:`drain` hands them over.

    Every replica reads every label (its own consumer group): a label for an event that
    another replica scored counts as unmatched in this one's accuracy monitor.
    """

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
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.assigned = threading.Event()
        self.rejected = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="feedback")

    def start(self) -> FeedbackReader:
        self.consumer.subscribe([self.topic], on_assign=lambda c, p: self.assigned.set())
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                got = []
                for m in self.consumer.consume(500, timeout=0.5):
                    value = m.value()
                    if m.error() is not None or value is None:
                        continue
                    try:
                        _, rec = self.decoder.decode(value)
                        got.append((str(rec["event_id"]), str(rec["label"])))
                    except (CodecError, KeyError) as exc:
                        self.rejected += 1
                        log.warning("unreadable label at %s/%s: %s", m.partition(), m.offset(), exc)
                if got:
                    with self._lock:
                        self._buf.extend(got)
        finally:
            self.consumer.close()

    def drain(self) -> tuple[list[str], list[str]]:
        with self._lock:
            items = list(self._buf)
            self._buf.clear()
        return [e for e, _ in items], [lbl for _, lbl in items]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
