"""Labels on the feedback topic are joined to predictions; a worse error rate raises an alert."""

from __future__ import annotations

import time

import pytest

from streamproc.loadgen import produce_synthetic

pytestmark = pytest.mark.kafka


def _scored(n, seed, pipeline_config_factory, processor_factory, event_producer_factory,
            read_topic):  # fmt: skip
    """A running pipeline with a feedback topic, ``n`` synthetic events in and their
    predictions read back; and a producer of labels."""
    cfg = pipeline_config_factory(partitions=1)
    assert cfg.topics.feedback
    running = processor_factory(cfg)
    events = event_producer_factory(cfg.topics.input)
    report = produce_synthetic(events, n, seed=seed)
    preds = read_topic(cfg.topics.predictions, report.good)
    labels = event_producer_factory(cfg.topics.feedback, schema="Label")
    return cfg, running, events, preds, labels


def test_wrong_predictions_raise_an_accuracy_drift_alert(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg, running, events, preds, labels = _scored(
        3000, 41, pipeline_config_factory, processor_factory, event_producer_factory, read_topic
    )
    now = int(time.time() * 1000)
    labels.send({"event_id": "never-scored", "label": "fraud", "time": now})
    for i, p in enumerate(preds):
        truth = p.value["label"]
        if i % 5 < 2:  # 40% of the model's answers are wrong (reference: 3.3%)
            truth = "legit" if truth == "fraud" else "fraud"
        labels.send({"event_id": p.value["event_id"], "label": truth, "time": now})
    labels.flush()
    # Labels are joined on the next input batch: keep a trickle of events flowing.
    alerts = []
    for round_ in range(30):
        produce_synthetic(events, 20, seed=41, offset=3000 + 20 * round_)
        alerts = [a for a in read_topic(cfg.topics.alerts, 1000, idle_s=1.5)
                  if a.value["type"] == "accuracy_drift"]  # fmt: skip
        if alerts:
            break
    running.stop()
    assert alerts, "no accuracy alert"
    assert alerts[0].value["state"] == "FIRING"
    assert len([a for a in alerts if a.value["state"] == "FIRING"]) == 1
    acc = running.processor.handler.monitor.accuracy  # type: ignore[attr-defined]
    # Labels are drained in chunks as batches arrive, so how many were joined when the
    # alert fired varies run to run (499 and >1000 both seen); dozens at the least.
    assert acc.matched >= 50
    assert acc.unmatched >= 1  # the label for an event nobody scored


def test_unreadable_labels_are_dead_lettered_and_the_reader_goes_on(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg, running, events, preds, labels = _scored(
        200, 43, pipeline_config_factory, processor_factory, event_producer_factory, read_topic
    )
    now = int(time.time() * 1000)
    first = {"event_id": preds[0].value["event_id"], "label": "legit", "time": now}
    labels.send(first)  # offset 0
    labels.send_raw(None, key=b"no-value")  # 1
    labels.send_raw(b"\x07not framed", key=b"bad-magic", headers=[("origin", b"test")])  # 2
    cut = labels.encode(first)[:12]
    labels.send_raw(cut, key=b"cut")  # 3: the body ends inside the label
    unknown = {"event_id": preds[2].value["event_id"], "label": "maybe", "time": now}
    labels.send(unknown, key=b"maybe")  # 4: not one of the model's labels
    labels.send({"event_id": preds[1].value["event_id"], "label": "legit", "time": now})  # 5
    labels.flush()
    # Labels and their dead letters go out with the next input batch: keep events flowing.
    dead: list = []
    for round_ in range(30):
        produce_synthetic(events, 20, seed=43, offset=200 + 20 * round_)
        dead = [d for d in read_topic(cfg.topics.dlq, 10_000, idle_s=1.5)
                if d.value["source_topic"] == cfg.topics.feedback]  # fmt: skip
        if len(dead) >= 4:
            break
    handler = running.processor.handler
    acc = handler.monitor.accuracy  # type: ignore[attr-defined]
    alive = handler.monitor.feedback.alive  # type: ignore[attr-defined]
    counted = dict(handler.counters.labels_rejected)
    running.stop()
    got = sorted((d.value["offset"], d.value["reason"], d.key, d.value["value"]) for d in dead)
    assert got == [
        (1, "NULL_VALUE", b"no-value", None),
        (2, "BAD_MAGIC", b"bad-magic", b"\x07not framed"),
        (3, "TRUNCATED", b"cut", cut),
        (4, "UNKNOWN_ENUM", b"maybe", labels.encode(unknown)),
    ]
    bad_magic = next(d for d in dead if d.value["reason"] == "BAD_MAGIC")
    assert bad_magic.value["headers"] == [{"key": "origin", "value": b"test"}]
    assert bad_magic.value["partition"] == 0 and bad_magic.value["schema_id"] is None
    assert counted == {"NULL_VALUE": 1, "BAD_MAGIC": 1, "TRUNCATED": 1, "UNKNOWN_ENUM": 1}
    maybe = next(d for d in dead if d.value["reason"] == "UNKNOWN_ENUM")
    assert "maybe" in maybe.value["detail"] and maybe.value["schema_id"] == labels.schema_id
    # The labels around the bad ones were read and joined: the reader did not stop.
    assert alive and acc.matched == 2
