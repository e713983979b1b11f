"""Insight on the real broker: sampled explanations on their topic, agreeing with the
predictions; outliers and probing on in the same run."""

from __future__ import annotations

import pytest

from streamproc import synth

pytestmark = pytest.mark.kafka


def test_explanations_topic_carries_explanations_of_sampled_events(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg = pipeline_config_factory(insight={
        "outliers": {"enabled": True},
        "probing": {"enabled": True},
        "explanations": {"enabled": True, "share": 0.2, "keys": ["acct-42"], "samples": 128},
    })  # fmt: skip
    topic = f"{cfg.topics.input}.explanations"
    producer = event_producer_factory(cfg.topics.input)
    records, _ = synth.generate(500, seed=3)
    records[7]["account_id"] = "acct-42"  # explained whatever the draw: asked for by key
    for r in records:
        producer.send(r, key=r["account_id"])
    producer.flush()
    running = processor_factory(cfg)
    preds = read_topic(cfg.topics.predictions, 500)
    assert len(preds) == 500
    # insight.outliers: every prediction carries its outlier score, the scores the
    # outlier-share monitor counted.
    mon = running.processor.handler.monitor
    outlier = [p.value["outlier_score"] for p in preds]
    assert all(isinstance(v, float) for v in outlier)
    assert mon.outliers is not None and mon.outliers.events == 500
    assert mon.outliers.outliers == sum(v > mon.outliers.scorer.threshold for v in outlier)
    worker = running.processor.handler.monitor.worker
    assert worker is not None and worker.wait_idle(60)
    running.stop()  # closes the worker's producer: its records are flushed
    explained = read_topic(topic, 500, idle_s=5.0, committed=False)
    score = {p.value["event_id"]: p.value["score"] for p in preds}
    ids = [e.value["event_id"] for e in explained]
    assert len(ids) == len(set(ids)) == worker.counts.explained
    assert worker.counts.dropped == 0 and worker.counts.failed == 0
    assert 50 <= len(ids) <= 160  # a 20% sample of 500 and the asked-for key
    assert records[7]["event_id"] in ids
    columns = set(running.processor.handler.scorer.primary.columns)
    for e in explained:
        v = e.value
        # method auto: DeepSHAP, the demo model being a chain network (the torch extra)
        assert (v["model_name"], v["model_version"], v["method"]) == (
            "fraud",
            "1.0.0",
            "deep_shap",
        )
        assert set(v["attributions"]) == columns
        # Additive, and the explained output is the prediction's score.
        assert abs(v["base_value"] + sum(v["attributions"].values()) - v["output"]) < 1e-6
        assert abs(v["output"] - score[v["event_id"]]) < 1e-5
        assert e.key == v["event_id"].encode()
