"""kill -9 mid-stream, then restart: the guarantees hold (separate OS processes).

Events keep arriving while the first processor is killed, and the kill is shown to land
mid-stream: at that moment the group's committed offsets are below the input's end, so
the second processor has to take over records the first had read but not committed.
"""

from __future__ import annotations

import signal

import pytest
from confluent_kafka import Consumer, TopicPartition

from streamproc.kafka.admin import Admin
from tests.pipeline.trickle import Trickle

pytestmark = pytest.mark.kafka


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (0 where nothing is committed yet)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})  # fmt: skip
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
    finally:
        c.close()
    return {tp.partition: max(tp.offset, 0) for tp in tps}


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_kill_9_mid_stream_and_restart(
    guarantee, pipeline_config_factory, subprocess_factory, event_producer_factory, read_topic
):
    cfg = pipeline_config_factory(guarantee=guarantee, partitions=2)
    producer = event_producer_factory(cfg.topics.input)
    trickle = Trickle(producer, seed=21)
    first = subprocess_factory(cfg, instance="p1")
    # Wait until it has produced some output, then kill it without warning, mid-stream.
    read_topic(cfg.topics.predictions, 300, idle_s=60, committed=False)
    assert first.poll() is None, "processor died on its own"
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert trickle.running, "the input stopped before the kill: not a kill mid-stream"
    admin = Admin(cfg.kafka.bootstrap)
    committed = committed_offsets(cfg.kafka.bootstrap, cfg.group_id, cfg.topics.input, 2)
    ends = admin.latest_offsets(cfg.topics.input)
    at_kill = sum(ends.values())
    assert sum(committed.values()) < at_kill, (committed, ends)  # uncommitted work was lost

    second = subprocess_factory(cfg, instance="p1")  # same replica id: fences the old one
    read_topic(cfg.topics.predictions, at_kill + 1, idle_s=60)  # the second is at work
    n = trickle.stop()
    assert n > at_kill  # events kept arriving after the kill, while the second started
    out = read_topic(cfg.topics.predictions, n * 2, idle_s=10)
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0
    ids = [p.value["event_id"] for p in out]
    expected = {f"ev-21-{i:010d}" for i in range(n)}
    assert set(ids) == expected  # every input has a prediction
    if guarantee == "exactly-once":
        assert len(ids) == len(expected)  # and read_committed sees exactly one each
    # The second processor took over where the first had committed, mid-stream.
    final = committed_offsets(cfg.kafka.bootstrap, cfg.group_id, cfg.topics.input, 2)
    assert final == admin.latest_offsets(cfg.topics.input)
