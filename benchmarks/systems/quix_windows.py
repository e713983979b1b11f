"""Quix Streams computing the windowed features of ``benchmarks/windows.py``: sliding windows
with RocksDB state and changelog topics on, at-least-once, per event in Python.

Per account (the Kafka key): txn_count_1h (a 1 h sliding window's Count), txn_count_24h,
sum_amount_24h and max_amount_24h (one 24 h window's Count, Sum and Max), avg_amount_7d (a
7 d window's Mean) and minutes_since_last_txn (a stateful apply keeping the last event
time): four branches of one StreamingDataFrame, event time from the record's event_time.

``python quix_windows.py <bootstrap> <registry_url> <topic> <n_events> <budget_s>`` prints
one JSON object: events counted, seconds from the first to the last, events_per_s. It stops
at ``n_events`` or when ``budget_s`` has passed (then events/s is over what it did).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from datetime import datetime, timedelta
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Max, Mean, Sum
from quixstreams.models.serializers.avro import AvroDeserializer
from quixstreams.models.serializers.schema_registry import SchemaRegistryClientConfig

GRACE_MS = 10_000  # the store's allowed lateness


def _event_time(value: Any, headers: Any, timestamp: int, ts_type: Any) -> int:
    t = value["event_time"]
    return int(t.timestamp() * 1000) if isinstance(t, datetime) else int(t)


def main() -> None:
    bootstrap, registry_url, topic, n, budget = sys.argv[1:6]
    n_events, budget_s = int(n), float(budget)
    state_dir = tempfile.mkdtemp(prefix="quix-windows-state-")
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-windows-{time.time_ns()}",
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        state_dir=state_dir,
        use_changelog_topics=True,
        loglevel="WARNING",
        producer_extra_config={"compression.type": "lz4", "linger.ms": 2},
    )
    registry = SchemaRegistryClientConfig(url=registry_url)
    source = app.topic(
        topic,
        key_deserializer="bytes",
        value_deserializer=AvroDeserializer(schema_registry_client_config=registry),
        timestamp_extractor=_event_time,
    )
    seen = {"events": 0, "first": 0.0, "last": 0.0}

    def count(value: dict[str, Any]) -> None:
        if not seen["events"]:
            seen["first"] = time.monotonic()
        seen["events"] += 1

    def since_last(value: dict[str, Any], state: Any) -> float | None:
        t = _event_time(value, None, 0, None)
        last = state.get("last")
        state.set("last", t if last is None else max(last, t))
        seen["last"] = time.monotonic()
        if seen["events"] >= n_events or seen["last"] - seen["first"] > budget_s:
            app.stop()
        return None if last is None else (t - last) / 60_000

    sdf = app.dataframe(source)
    sdf = sdf.update(count)
    sdf.sliding_window(timedelta(hours=1), grace_ms=GRACE_MS).agg(txn_count_1h=Count()).current()
    sdf.sliding_window(timedelta(hours=24), grace_ms=GRACE_MS).agg(
        txn_count_24h=Count(), sum_amount_24h=Sum("amount"), max_amount_24h=Max("amount")
    ).current()
    sdf.sliding_window(timedelta(days=7), grace_ms=GRACE_MS).agg(
        avg_amount_7d=Mean("amount")
    ).current()
    sdf.apply(since_last, stateful=True)
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    app.run()
    s = seen["last"] - seen["first"]
    print(json.dumps({"events": seen["events"], "seconds": s,
                      "events_per_s": seen["events"] / s if s > 0 else None,
                      "quixstreams": __import__("quixstreams").__version__}))  # fmt: skip


if __name__ == "__main__":
    main()
