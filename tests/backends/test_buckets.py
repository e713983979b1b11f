"""Bucket planning, padding and the two-slot pipeline schedule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.backends.buckets import (
    bucket_for,
    pad_rows,
    pipelined,
    pipelined_batches,
    plan,
    run_bucketed,
)

bucket_sets = st.lists(st.integers(1, 300), min_size=1, max_size=6, unique=True).map(
    lambda b: tuple(sorted(b))
)


@given(n=st.integers(0, 2000), buckets=bucket_sets)
def test_plan_covers_every_row_once_in_order(n, buckets):
    chunks = plan(n, buckets)
    covered = [i for a, b, _ in chunks for i in range(a, b)]
    assert covered == list(range(n))
    for i, (a, b, size) in enumerate(chunks):
        assert size in buckets
        assert b - a <= size
        smaller = [x for x in buckets if x < size]
        assert not smaller or smaller[-1] < b - a  # the smallest bucket that fits
        if i < len(chunks) - 1:
            assert b - a == buckets[-1]  # only the last chunk is partial


@given(n=st.integers(1, 700), buckets=bucket_sets)
def test_run_bucketed_equals_running_directly(n, buckets):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    sizes = []

    def fn(batch):
        sizes.append(len(batch))
        assert len(batch) in buckets
        return batch.sum(axis=1, keepdims=True) * 2

    out = run_bucketed(x, buckets, fn)
    np.testing.assert_array_equal(out, x.sum(axis=1, keepdims=True) * 2)
    assert sum(sizes) >= n


def test_bucket_for_and_pad_rows_reject_bad_sizes():
    with pytest.raises(ValueError):
        bucket_for(0, (1, 8))
    with pytest.raises(ValueError, match="largest bucket"):
        bucket_for(9, (1, 8))
    with pytest.raises(ValueError):
        pad_rows(np.zeros((5, 1), np.float32), 4)
    x = np.ones((4, 2), np.float32)
    assert pad_rows(x, 4) is x
    with pytest.raises(ValueError):
        run_bucketed(np.zeros((0, 2), np.float32), (1,), lambda b: b)


class FakeDevice:
    """Records the schedule; checks no slot is reused before it was collected."""

    def __init__(self, slots):
        self.slots = slots
        self.busy: dict[int, object] = {}
        self.max_in_flight = 0

    def submit(self, slot, item):
        assert slot not in self.busy, f"slot {slot} reused before collect"
        assert 0 <= slot < self.slots
        self.busy[slot] = item
        self.max_in_flight = max(self.max_in_flight, len(self.busy))

    def collect(self, slot):
        return self.busy.pop(slot)


@given(items=st.lists(st.integers(), max_size=30), slots=st.integers(1, 4))
def test_pipelined_keeps_order_and_bounds_work_in_flight(items, slots):
    dev = FakeDevice(slots)
    assert list(pipelined(items, dev.submit, dev.collect, slots)) == items
    assert dev.max_in_flight <= slots
    if len(items) >= slots:
        assert dev.max_in_flight == slots  # the overlap really happens
    assert not dev.busy


def test_pipelined_rejects_zero_slots():
    with pytest.raises(ValueError):
        list(pipelined([1], lambda s, x: None, lambda s: None, 0))


@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8), slots=st.integers(1, 3))
def test_pipelined_batches_returns_one_output_per_batch(sizes, slots):
    buckets = (1, 4, 16)
    rng = np.random.default_rng(len(sizes))
    batches = [rng.normal(size=(n, 2)).astype(np.float32) for n in sizes]
    dev = FakeDevice(slots)

    def submit(slot, chunk):
        batch, (a, b, size) = chunk
        assert size in buckets
        dev.submit(slot, (pad_rows(batch[a:b], size) * 3)[: b - a])

    outs = list(pipelined_batches(batches, buckets, submit, dev.collect, slots))
    assert len(outs) == len(batches)
    for out, batch in zip(outs, batches, strict=True):
        np.testing.assert_array_equal(out, batch * 3)


def test_pipelined_batches_rejects_empty_batches():
    with pytest.raises(ValueError, match="empty"):
        list(pipelined_batches([np.zeros((0, 2), np.float32)], (1,), None, None))
