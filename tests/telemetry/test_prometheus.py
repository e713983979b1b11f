"""PrometheusSensor: every batch lands on the children its labels name (they are cached)."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.telemetry import BatchStats
from streamproc.telemetry.prometheus import PrometheusSensor

REASONS = st.sampled_from(["CORRUPT", "TRUNCATED", "UNKNOWN_SCHEMA"])
batches = st.lists(
    st.tuples(
        st.sampled_from(["1.0.0", "1.1.0"]),  # version
        st.integers(1, 50),  # size
        st.dictionaries(REASONS, st.integers(1, 5), max_size=2),
        st.sampled_from(["size", "deadline"]),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(batches=batches)
def test_counters_add_up_per_label_set(batches):
    p = PrometheusSensor(pipeline="demo")
    out, rejects, released = Counter(), Counter(), Counter()
    for version, size, rej, release in batches:
        n_rej = sum(rej.values())
        p.on_batch(BatchStats(model="m", version=version, backend="onnxruntime",
                              size=size + n_rej, predictions=size, rejects=rej,
                              release=release, wait_ms=1.0, stage_s={"infer": 0.001},
                              latencies_ms=np.full(size, 3.0)))  # fmt: skip
        out[version] += size
        rejects.update(rej)
        released[release] += 1
    get = p.registry.get_sample_value
    total_in = sum(size + sum(rej.values()) for _, size, rej, _ in batches)
    assert get("streamproc_events_in_total", {"pipeline": "demo"}) == total_in
    for version, n in out.items():
        labels = {"pipeline": "demo", "model": "m", "version": version}
        assert get("streamproc_events_out_total", labels) == n
        assert get("streamproc_end_to_end_latency_ms_count", labels) == n
    for reason, n in rejects.items():
        assert get("streamproc_events_rejected_total", {"pipeline": "demo", "reason": reason}) == n
    for release, n in released.items():
        assert get("streamproc_batches_total", {"pipeline": "demo", "release": release}) == n
    assert get("streamproc_batch_size_count", {"pipeline": "demo"}) == len(batches)


def test_unreadable_labels_have_their_own_counter() -> None:
    p = PrometheusSensor("demo")
    for rej in ({"TRUNCATED": 2}, {"TRUNCATED": 1, "BAD_MAGIC": 1}):
        p.on_batch(BatchStats(model="m", version="1.0.0", backend="onnxruntime", size=4,
                              predictions=4, rejects={}, release="size", wait_ms=1.0,
                              stage_s={}, label_rejects=rej))  # fmt: skip
    get = p.registry.get_sample_value
    assert get("streamproc_labels_rejected_total", {"pipeline": "demo", "reason": "TRUNCATED"}) == 3
    assert get("streamproc_labels_rejected_total", {"pipeline": "demo", "reason": "BAD_MAGIC"}) == 1
    # Input events only: a label is not an event in, so it is not an event rejected either.
    assert (
        get("streamproc_events_rejected_total", {"pipeline": "demo", "reason": "TRUNCATED"}) is None
    )
