"""Synthetic Transaction traffic for demos, tests and benchmarks, with injected faults.

Malformed kinds and the dead-letter reason each one must produce:

==============  ================
kind            reason
==============  ================
bad_magic       BAD_MAGIC
truncated       TRUNCATED
garbage         CORRUPT
unknown_schema  UNKNOWN_SCHEMA
negative        OUT_OF_RANGE
nan             NAN_FEATURE
==============  ================
"""

from __future__ import annotations

import math
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamproc import synth
from streamproc.kafka.clients import EventProducer

MALFORMED_REASONS = {
    "bad_magic": "BAD_MAGIC",
    "truncated": "TRUNCATED",
    "garbage": "CORRUPT",
    "unknown_schema": "UNKNOWN_SCHEMA",
    "negative": "OUT_OF_RANGE",
    "nan": "NAN_FEATURE",
}
KINDS = tuple(MALFORMED_REASONS)


@dataclass
class ProduceReport:
    produced: int = 0
    good: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def expected_rejects(self) -> Counter[str]:
        return Counter({MALFORMED_REASONS[k]: n for k, n in self.malformed.items()})

    def as_dict(self) -> dict[str, Any]:
        return {
            "produced": self.produced,
            "good": self.good,
            "malformed": dict(self.malformed),
            "seconds": round(self.seconds, 3),
        }


def corrupt(
    kind: str, good: bytes, record: dict[str, Any], encode: Callable[[dict[str, Any]], bytes]
) -> bytes:
    """One malformed payload of ``kind``, made from a good one."""
    if kind == "bad_magic":
        return b"\x01" + good[1:]
    if kind == "truncated":
        return good[: max(6, len(good) // 3)]
    if kind == "garbage":
        # A valid header, then a string length of -1 (zig-zag 0x01): no valid record.
        return good[:5] + b"\x01" + b"\xff" * 8
    if kind == "unknown_schema":
        return b"\x00" + struct.pack(">I", 987_654_321) + good[5:]
    if kind == "negative":
        return encode({**record, "amount": -abs(record["amount"]) - 1.0})
    if kind == "nan":
        return encode({**record, "amount": math.nan})
    raise ValueError(f"unknown malformed kind {kind!r}; choose from {KINDS}")


def produce_synthetic(
    producer: EventProducer,
    n: int,
    *,
    rate: float | None = None,
    malformed: float = 0.0,
    kinds: tuple[str, ...] = KINDS,
    shift: float = 0.0,
    seed: int = 0,
    offset: int = 0,
    chunk: int = 1000,
    on_progress: Callable[[ProduceReport], None] | None = None,
) -> ProduceReport:
    """Produce ``n`` events (a ``malformed`` fraction of them broken, cycling ``kinds``).

    Paced to ``rate`` events/s when given (chunks are sent on a schedule), else as fast as
    the producer takes them. Flushes at the end; raises on any delivery failure.
    """
    report = ProduceReport()
    rng = np.random.default_rng(seed + 1)
    start = time.monotonic()
    done = 0
    k = 0
    while done < n:
        m = min(chunk, n - done)
        records, _ = synth.generate(m, seed=seed, shift=shift, offset=offset + done)
        bad = rng.random(m) < malformed
        now_ms = int(time.time() * 1000)  # event time = when the event is sent
        for rec, is_bad in zip(records, bad, strict=True):
            rec["event_time"] = now_ms
            value = producer.encode(rec)
            if is_bad:
                kind = kinds[k % len(kinds)]
                k += 1
                value = corrupt(kind, value, rec, producer.encode)
                report.malformed[kind] += 1
            else:
                report.good += 1
            producer.send_raw(value, rec["account_id"])
        done += m
        report.produced = done
        if on_progress is not None:
            on_progress(report)
        if rate:
            ahead = done / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)  # pacing to the target rate
    producer.flush()
    report.seconds = time.monotonic() - start
    return report
