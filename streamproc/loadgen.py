"""Synthetic Transaction (and raw Payment) traffic for demos, tests and benchmarks, with
injected faults.

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


def produce_payments(
    producer: EventProducer,
    n: int,
    *,
    days: float = 14.0,
    rate: float | None = None,
    malformed: float = 0.0,
    kinds: tuple[str, ...] = KINDS,
    seed: int = 0,
    end_ms: int | None = None,
    on_progress: Callable[[ProduceReport], None] | None = None,
) -> tuple[ProduceReport, list[dict[str, Any]], dict[str, int]]:
    """Produce ``n`` raw payments (:mod:`streamproc.synth_payments`) of as many accounts as
    make ``n`` over ``days`` days of event time ending at ``end_ms`` (default: now), in
    event-time order, keyed by account, a ``malformed`` fraction broken (cycling ``kinds``).
    Returns the report, the payments as generated and ``event_id -> fraud label``."""
    from streamproc import synth_payments

    accounts = max(1, round(n / (days * synth_payments.PAYMENTS_PER_ACCOUNT_DAY)))
    end = int(time.time() * 1000) if end_ms is None else end_ms
    cols = synth_payments.generate_columns(
        accounts, days=days, seed=seed, start_ms=end - int(days * synth_payments.DAY_MS)
    )
    records = synth_payments.to_records(cols)[:n]
    truth = dict(zip(cols["event_id"].tolist()[:n], cols[synth_payments.LABEL].tolist()[:n],
                     strict=True))  # fmt: skip
    report = ProduceReport()
    rng = np.random.default_rng(seed + 1)
    start = time.monotonic()
    k = 0
    for i, rec in enumerate(records):
        value = producer.encode(rec)
        if rng.random() < malformed:
            kind = kinds[k % len(kinds)]
            k += 1
            value = corrupt(kind, value, rec, producer.encode)
            report.malformed[kind] += 1
        else:
            report.good += 1
        producer.send_raw(value, rec["account_id"])
        report.produced = i + 1
        if report.produced % 1000 == 0 or report.produced == len(records):
            if on_progress is not None:
                on_progress(report)
            if rate:
                ahead = report.produced / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)  # pacing to the target rate
    producer.flush()
    report.seconds = time.monotonic() - start
    return report, records, truth


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
