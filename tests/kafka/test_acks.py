"""AckTracker: offsets move only over fully acknowledged prefixes of batches."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.kafka.acks import AckTracker


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_committed_offsets_never_pass_a_batch_still_waiting(
    sizes: list[int], rnd: random.Random
) -> None:
    t = AckTracker()
    batches = [t.add({i % 3: 100 * (i + 1)}, n) for i, n in enumerate(sizes)]
    acks = [i for i, n in enumerate(sizes) for _ in range(n)]
    rnd.shuffle(acks)
    committed: dict[int, int] = {}
    for i in acks:
        batches[i].ack(None, None)
        committed.update(t.collect())
        waiting = [j for j, b in enumerate(batches) if b.remaining > 0]
        limit = waiting[0] if waiting else len(batches)
        # exactly the batches before the first waiting one are committed
        expected: dict[int, int] = {}
        for j in range(limit):
            expected[j % 3] = 100 * (j + 1)
        assert committed == expected
    committed.update(t.collect())
    assert t.pending_batches == 0
    assert committed == {j % 3: 100 * (j + 1) for j in range(len(sizes))}


def test_a_failed_delivery_is_kept_for_the_runner() -> None:
    t = AckTracker()
    b = t.add({0: 1}, 1)
    b.ack("Broker: Message size too large", None)
    assert t.errors == ["Broker: Message size too large"]
    assert t.collect() == {0: 1}  # counted down; the runner raises before committing
