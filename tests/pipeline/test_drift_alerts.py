"""An injected shift on the real broker: one alert per drift, to both subscription clients."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from streamproc.kafka.alerts import AlertSubscription, AsyncAlertSubscription
from streamproc.loadgen import produce_synthetic

pytestmark = pytest.mark.kafka
DELIVERY_MS = 1_000  # the README's promise: an alert is on its topic within 1 s


def append_time(bootstrap: str, topic: str) -> None:
    """Have the broker stamp ``topic``'s records with the time it appends them."""
    entry = ConfigEntry("message.timestamp.type", "LogAppendTime",
                        incremental_operation=AlterConfigOpType.SET)  # fmt: skip
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    client = AdminClient({"bootstrap.servers": bootstrap})  # alive until the result is in
    client.incremental_alter_configs([res])[res].result(30)


def epoch_ms(value: datetime | int) -> int:
    """Epoch milliseconds of a timestamp-millis field (fastavro may give a datetime)."""
    return round(value.timestamp() * 1000) if isinstance(value, datetime) else int(value)


def test_injected_shift_raises_one_alert_delivered_to_both_clients(
    kafka, schema_registry, pipeline_config_factory, processor_factory, event_producer_factory,
    read_topic,
):  # fmt: skip
    cfg = pipeline_config_factory(partitions=1)
    append_time(kafka, cfg.topics.alerts)
    producer = event_producer_factory(cfg.topics.input)
    calm = produce_synthetic(producer, 3000, seed=31)
    shifted = produce_synthetic(producer, 3000, seed=31, offset=3000, shift=1.5)
    running = processor_factory(cfg)
    preds = read_topic(cfg.topics.predictions, calm.good + shifted.good)
    running.stop()

    with AlertSubscription(kafka, schema_registry, cfg.topics.alerts, severity="WARNING",
                           model="fraud") as sub:  # fmt: skip
        alerts = sub.alerts(timeout_s=10)
    firing = [a for a in alerts if a["state"] == "FIRING" and a["type"] == "input_drift"]
    assert firing, f"no input drift alert: {alerts}"
    features = [a["feature"] for a in firing]
    assert len(features) == len(set(features))  # one alert per drifting feature, no repeats
    assert {"amount", "distance_from_home_km"} & set(features)
    for a in firing:
        assert a["last_offset"] >= 3000  # raised by the shifted events, not before
        assert a["model_version"] == "1.0.0"
    # Raised by the batch that scored the triggering event: the alert's time is that
    # batch's time, the processed_time of the prediction for the event at last_offset.
    by_id = {p.value["event_id"]: p.value for p in preds}
    for a in firing:
        trigger = by_id[f"ev-31-{a['last_offset']:010d}"]  # one partition: offset = index
        assert epoch_ms(a["time"]) == epoch_ms(trigger["processed_time"])
        assert epoch_ms(trigger["event_time"]) <= epoch_ms(a["time"])
    # Delivered within 1 s of detection: the broker's append time of each alert record
    # (LogAppendTime, set above) is at or after the alert time, and less than 1 s after it.
    raw = read_topic(cfg.topics.alerts, len(alerts))
    assert len(raw) == len(alerts)
    for r in raw:
        detected = epoch_ms(r.value["time"])
        assert detected <= r.timestamp_ms <= detected + DELIVERY_MS, (r.value, r.timestamp_ms)

    async def read_async():
        got = []
        async with AsyncAlertSubscription(kafka, schema_registry, cfg.topics.alerts,
                                          severity="WARNING", model="fraud") as sub:  # fmt: skip
            async for _msg, rec in sub:
                got.append(rec)
                if len(got) == len(alerts):
                    return got
        return got

    got = asyncio.run(asyncio.wait_for(read_async(), 60))
    assert [a["alert_id"] for a in got] == [a["alert_id"] for a in alerts]
