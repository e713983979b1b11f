"""The changelog reader on the real broker: read to the end, the keys ahead of the commit."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from streamproc.features.spec import CHANGELOG_TOPIC_CONFIG
from streamproc.kafka.changelog import ChangelogReader, frame_state

pytestmark = pytest.mark.kafka


def test_reads_every_partition_to_its_end_with_the_keys_ahead_of_the_commit(
    kafka, topic_factory, producer_factory
):
    cl = topic_factory("cl", partitions=2, config=CHANGELOG_TOPIC_CONFIG)
    inp = topic_factory("in", partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    p = producer_factory()
    # Partition 0: a written at input offset 10, b at 20, then a again at 30, c evicted.
    for key, off, state in [(b"a", 10, b"A1"), (b"b", 20, b"B"), (b"c", 20, b"C"),
                            (b"a", 30, b"A2"), (b"c", 30, None)]:  # fmt: skip
        p.produce(cl, frame_state(off, state), key, partition=0)
    p.produce(cl, frame_state(5, b"D"), b"d", partition=1)
    for i in range(3):  # the input: 3 records on partition 1, none on partition 0
        p.produce(inp, b"x%d" % i, None, partition=1)
    assert p.flush(30) == 0
    # The group committed input offset 20 on partition 0 and nothing on partition 1.
    c = Consumer({"bootstrap.servers": kafka, "group.id": group})
    c.commit(offsets=[TopicPartition(inp, 0, 20)], asynchronous=False)
    c.close()
    r = ChangelogReader(kafka, cl, input_topic=inp, group_id=group, timeout_s=60)
    try:
        got = r.read([0, 1])
        empty = ChangelogReader(kafka, topic_factory("cl", partitions=1), input_topic=inp,
                                group_id=group).read([0])  # fmt: skip
    finally:
        r.close()
    zero, one = got[0], got[1]
    assert zero.entries == [(b"a", b"A1"), (b"b", b"B"), (b"c", b"C"), (b"a", b"A2"), (b"c", None)]
    assert zero.records == 5 and zero.committed == 20
    assert (zero.input_end, one.input_end) == (0, 3)  # what tells an earlier input topic
    assert zero.ahead == {b"a": 30}  # b is at the commit; c is gone
    assert one.entries == [(b"d", b"D")] and one.committed is None
    assert one.ahead == {b"d": 5}  # nothing committed: every key is ahead
    assert empty[0].entries == [] and empty[0].records == 0
