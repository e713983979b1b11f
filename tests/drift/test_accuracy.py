"""The accuracy monitor's label join against a plain model of it, and its memory bound."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.drift.accuracy import AccuracyMonitor
from streamproc.drift.config import DriftConfig


class _Model:
    """The join as the monitor documents it, one event at a time: the last ``capacity``
    predictions recorded are kept (joined or not); an older one still waiting for its
    label is evicted; every evicted id remembered."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.window: deque[str] = deque()
        self.preds: dict[str, tuple[object, str | None]] = {}
        self.evicted_ids: set[str] = set()
        self.matched = self.unmatched = self.late = self.evicted = self.errors = 0
        self.outcomes: dict[str, list[bool]] = {}
        self.errs: list[float] = []

    def record(self, ids: list[str], labels: list[int], versions: list[str] | None) -> None:
        for i, eid in enumerate(ids):
            self.preds[eid] = (labels[i], None if versions is None else versions[i])
            self.window.append(eid)
            if len(self.window) > self.capacity:
                old = self.window.popleft()
                if self.preds.pop(old, None) is not None:
                    self.evicted += 1
                    self.evicted_ids.add(old)

    def join(self, ids: list[str], labels: list[int]) -> None:
        for eid, label in zip(ids, labels, strict=True):
            pred = self.preds.pop(eid, None)
            if pred is None:
                self.unmatched += 1
                if eid in self.evicted_ids:
                    self.late += 1
                    self.evicted_ids.discard(eid)
                continue
            self.matched += 1
            wrong = pred[0] != label
            self.errors += wrong
            self.errs.append(float(wrong))
            if pred[1] is not None:
                self.outcomes.setdefault(pred[1], []).append(not wrong)


# One step: record the next `size` fresh ids (labels 0/1, a version each or none), or
# label a choice of ids (recorded ones, repeats and unknown ones among them).
_record = st.tuples(st.just("record"), st.integers(1, 9), st.booleans(), st.integers(0, 2**16))
_label = st.tuples(
    st.just("label"),
    st.lists(st.integers(-3, 40), min_size=1, max_size=12),
    st.lists(st.integers(0, 1), min_size=12, max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 8), steps=st.lists(st.one_of(_record, _label), max_size=25))
def test_join_equals_the_model(capacity: int, steps: list[tuple[object, ...]]) -> None:
    am = AccuracyMonitor(DriftConfig(label_retention=capacity), reference_error_rate=0.1)
    model = _Model(capacity)
    seen = 0
    for step in steps:
        if step[0] == "record":
            _, size, with_versions, bits = step
            assert isinstance(size, int) and isinstance(bits, int)
            if seen + size >= 3 * capacity:
                continue  # past three generations the log forgets evicted ids: see below
            ids = [f"e{i}" for i in range(seen, seen + size)]
            labels = [(bits >> i) & 1 for i in range(size)]
            versions = [f"v{(bits >> (i + 9)) & 1}" for i in range(size)] if with_versions else None
            seen += size
            am.record_predictions(ids, labels, versions)
            model.record(ids, labels, versions)
        else:
            _, picks, truth = step
            assert isinstance(picks, list) and isinstance(truth, list)
            ids = [f"e{i}" if i >= 0 else f"unknown{i}" for i in picks]
            am.record_labels(ids, truth[: len(ids)])
            model.join(ids, truth[: len(ids)])
        got = (am.matched, am.unmatched, am.late, am.evicted, am.errors, am.pending)
        want = (model.matched, model.unmatched, model.late, model.evicted, model.errors,
                len(model.preds))  # fmt: skip
        assert got == want
        assert am.outcomes == model.outcomes


def test_a_late_label_is_told_apart_for_at_least_a_capacity_and_memory_stays_bounded() -> None:
    cap = 1000
    am = AccuracyMonitor(DriftConfig(label_retention=cap), reference_error_rate=0.1)
    ids = [f"e{i}" for i in range(10 * cap)]
    for lo in range(0, len(ids), 300):
        am.record_predictions(ids[lo : lo + 300], [0] * len(ids[lo : lo + 300]))
    assert am.evicted == 9 * cap and am.pending == cap
    assert sum(map(len, am._log.gens)) <= 3 * cap  # never more than three generations
    # The last `cap` predictions are live; the `cap` before them were evicted lately.
    am.record_labels(ids[-cap:], [0] * cap)
    assert (am.matched, am.unmatched, am.late) == (cap, 0, 0)
    am.record_labels(ids[-2 * cap : -cap], [0] * cap)
    assert (am.unmatched, am.late) == (cap, cap)
    # Evicted long ago (over two capacities before the newest): an unknown id by now.
    am.record_labels(ids[:cap], [0] * cap)
    assert (am.unmatched, am.late) == (2 * cap, cap)
    assert am.pending == 0 and am._log.labels.size == cap


@pytest.mark.parametrize(
    ("ids", "predicted", "versions", "labels"),
    [
        (["a", "b"], [1], None, None),
        (["a"], [1], ["1.0.0", "1.1.0"], None),
        (["a"], [1], None, [1, 0]),
    ],
)
def test_lengths_must_agree(
    ids: list[str], predicted: list[int], versions: list[str] | None, labels: list[int] | None
) -> None:
    am = AccuracyMonitor(reference_error_rate=0.1)
    with pytest.raises(ValueError, match="differ in length"):
        if labels is None:
            am.record_predictions(ids, predicted, versions)
        else:
            am.record_predictions(ids, predicted, versions)
            am.record_labels(ids, labels)
