"""An injected shift on the real broker: one alert per drift, to both subscription clients."""

from __future__ import annotations

import asyncio

import pytest

from streamproc.kafka.alerts import AlertSubscription, AsyncAlertSubscription
from streamproc.loadgen import produce_synthetic

pytestmark = pytest.mark.kafka


def test_injected_shift_raises_one_alert_delivered_to_both_clients(
    kafka, schema_registry, pipeline_config_factory, processor_factory, event_producer_factory,
    read_topic,
):  # fmt: skip
    cfg = pipeline_config_factory(partitions=1)
    producer = event_producer_factory(cfg.topics.input)
    calm = produce_synthetic(producer, 3000, seed=31)
    shifted = produce_synthetic(producer, 3000, seed=31, offset=3000, shift=1.5)
    running = processor_factory(cfg)
    read_topic(cfg.topics.predictions, calm.good + shifted.good)
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
    # Delivered within 1 s of detection: the record's broker timestamp vs. the alert time.
    raw = read_topic(cfg.topics.alerts, len(alerts))
    for r in raw:
        if r.value["state"] == "FIRING":
            assert r.value["time"] is not None

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
