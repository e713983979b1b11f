"""The workload: the same pre-encoded backlog for every system, and the paced load generator
of the latency phases."""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

import fastavro
from confluent_kafka import Producer
from systems.shared import to_ms

from streamproc import schemas, synth
from streamproc.codecs.encoder import zigzag_varint
from streamproc.kafka.registry import Registry

if TYPE_CHECKING:
    from .harness import Services

# The latency phases' producer: the client's defaults (librdkafka's, like the Java client's
# since Kafka 4.0: linger 5 ms, acks=all), what a user's producer sends with. Until
# 2026-11-26 it had linger.ms=0: every few records went out as a request of their own, which
# cost the 2-core machine ~0.4 cores more at 94,000 events/s and put the input side's p99 at
# 46-159 ms against 8-21 ms (benchmarks/README.md, "The load generator's linger").
PACED_PRODUCER: dict[str, Any] = {"linger.ms": 5, "acks": "all"}


class Workload:
    """The same ``warmup + n`` events for every system: Avro bodies encoded once."""

    def __init__(self, svc: Services, count: int, seed: int = 3) -> None:
        self.svc = svc
        records, _ = synth.generate(count, seed=seed)
        parsed = schemas.parsed("Transaction")
        self.bodies: list[bytes] = []
        for r in records:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, r)
            self.bodies.append(buf.getvalue())
        self.keys = [r["account_id"].encode() for r in records]
        self.registry = Registry(svc.registry_url)
        # The latency phases' producer settings (None: PACED_PRODUCER, read at each phase)
        self.paced_config: dict[str, Any] | None = None
        self.producer = Producer({"bootstrap.servers": svc.bootstrap, "linger.ms": 20,
                                  "batch.num.messages": 10_000, "compression.type": "lz4",
                                  "queue.buffering.max.messages": 2_000_000})  # fmt: skip

    def schema_id(self, topic: str) -> int:
        return self.registry.register(
            schemas.subject_for(topic), schemas.schema_text("Transaction")
        )

    def prefill(self, topic: str, count: int | None = None) -> int:
        """Produce the first ``count`` events (all when None) to ``topic``."""
        head = b"\x00" + self.schema_id(topic).to_bytes(4, "big")
        produce, poll = self.producer.produce, self.producer.poll
        count = len(self.bodies) if count is None else min(count, len(self.bodies))
        for body, key in zip(self.bodies[:count], self.keys[:count], strict=True):
            while True:
                try:
                    produce(topic, head + body, key)
                    break
                except BufferError:
                    poll(0.05)
        if self.producer.flush(60):
            raise RuntimeError(f"prefill of {topic} not acknowledged")
        return count

    def close(self) -> None:
        """Destroy the client before the broker stops (no reconnect noise)."""
        self.producer.flush(10)
        del self.producer

    def paced(self, topic: str, count: int, rate: float, seed: int = 5) -> tuple[int, float]:
        """Produce ``count`` events at ``rate``/s, ``event_time`` = the wall clock at send.

        Events are encoded once (a pool of up to 20,000, reused in turn); at send time only
        the varint of ``event_time`` is written between each event's two fixed parts, so
        the harness keeps up with rates of 100k events/s.
        """
        head = b"\x00" + self.schema_id(topic).to_bytes(4, "big")
        parts = _time_split_events(min(count, 20_000), seed)
        config = self.paced_config or PACED_PRODUCER
        p = Producer({"bootstrap.servers": self.svc.bootstrap, **config,
                      "queue.buffering.max.messages": 2_000_000})  # fmt: skip
        produce, poll = p.produce, p.poll
        tick = 0.005
        per_tick = max(1, round(rate * tick))
        pool = len(parts)
        start = time.monotonic()
        sent = 0
        while sent < count:
            stamp = zigzag_varint(int(time.time() * 1000))
            for i in range(sent, min(sent + per_tick, count)):
                before, after, key = parts[i % pool]
                produce(topic, head + before + stamp + after, key)
            sent = min(sent + per_tick, count)
            poll(0)
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        elapsed = time.monotonic() - start
        left = p.flush(30)
        del p
        if left:
            raise RuntimeError(f"latency events to {topic} not acknowledged")
        return sent, elapsed


def _time_split_events(count: int, seed: int) -> list[tuple[bytes, bytes, bytes]]:
    """Transaction bodies split around their ``event_time`` varint: (before, after, key).

    Every millisecond time of this era zigzag-encodes to the same number of bytes, so any
    current time fits between the two parts; checked against fastavro below.
    """
    records, _ = synth.generate(count, seed=seed)
    parsed = schemas.parsed("Transaction")
    now = int(time.time() * 1000)
    width = len(zigzag_varint(now))
    assert width == len(zigzag_varint(now + 86_400_000))  # no width change within a day
    out = []
    for r in records:
        bodies = []
        for t in (now, now + 1):
            r["event_time"] = t
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, r)
            bodies.append(buf.getvalue())
        at = next(i for i, (a, b) in enumerate(zip(*bodies, strict=True)) if a != b)
        out.append((bodies[0][:at], bodies[0][at + width :], r["account_id"].encode()))
    before, after, _ = out[0]
    check = fastavro.schemaless_reader(io.BytesIO(before + zigzag_varint(now + 5) + after), parsed)
    assert to_ms(check["event_time"]) == now + 5, "event_time split misplaced"
    return out
