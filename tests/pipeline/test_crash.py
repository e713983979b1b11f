"""kill -9 mid-stream, then restart: the guarantees hold (separate OS processes)."""

from __future__ import annotations

import signal

import pytest

from streamproc.loadgen import produce_synthetic

pytestmark = pytest.mark.kafka


def _wait_some_output(read_topic, topic, n, processes):
    got = read_topic(topic, n, idle_s=60, committed=False)
    for p in processes:
        assert p.poll() is None, "processor died on its own"
    return got


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_kill_9_and_restart(
    guarantee, pipeline_config_factory, subprocess_factory, event_producer_factory, read_topic
):
    cfg = pipeline_config_factory(guarantee=guarantee, partitions=2)
    producer = event_producer_factory(cfg.topics.input)
    n = 4000
    report = produce_synthetic(producer, n, seed=21)
    first = subprocess_factory(cfg, instance="p1")
    # Wait until it has produced some output, then kill it without warning.
    _wait_some_output(read_topic, cfg.topics.predictions, 300, [first])
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    second = subprocess_factory(cfg, instance="p1")  # same replica id: fences the old one
    committed = read_topic(cfg.topics.predictions, n * 2, idle_s=20)
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0
    ids = [p.value["event_id"] for p in committed]
    expected = {f"ev-21-{i:010d}" for i in range(report.produced)}
    assert set(ids) == expected  # every input has a prediction
    if guarantee == "exactly-once":
        assert len(ids) == len(expected)  # and read_committed sees exactly one each
