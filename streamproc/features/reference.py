"""The semantics of windowed features, in plain Python: the oracle of the differential
tests (slow on purpose: one event at a time, every window recomputed from the events).

Per partition, events come in offset order. For an event ``e`` with key ``k`` at event
time ``t`` and a definition with window ``w``:

* the events it sees are those of key ``k`` **accepted before it** (earlier offsets, not
  late) with event time ``t'`` in

  - sliding: ``t - size < t' <= t``;
  - tumbling / hopping: ``s <= t' <= t`` with ``s = t - t mod step`` (the window that holds
    ``t`` and started last; tumbling: ``step = size``).

  The event itself never counts; an earlier event with the same event time does (ties are
  broken by offset). An event that arrived earlier with a later event time does not.
* count, sum, distinct_count of nothing are 0; mean, min, max, std (population), last and
  since_last of nothing are NaN. ``last`` is the value of the seen event with the greatest
  ``(t', offset)``; ``since_last`` is ``(t - max t') / unit``. An event whose value field is
  NaN (or infinite: not a measurement a window can sum) is absent for that definition.
* the watermark of a partition is the largest event time accepted so far; an event with
  ``t < watermark - allowed_lateness`` is late: given values as above, not added.
* a key holds at most ``max_events_per_key`` events: when an accepted event makes it one
  more, the key's event with the smallest ``(t', offset)`` (possibly the new one) is dropped
  and counted (``StoreStats.dropped_events``); the watermark still moves.
* after each call: every tumbling/hopping window whose end ``<= watermark - lateness`` and
  that was not closed before is closed and reported (its value over all its accepted
  events); then events with ``t' <= watermark - lateness - largest window`` are evicted.
  An event never sees such events (the watermark as it stands before the event), evicted
  yet or not, so values do not depend on how the stream was cut into batches (a late
  event's window may reach below that line; on-time events' windows never do).

>>> from streamproc.features.spec import FeaturesSpec
>>> spec = FeaturesSpec.model_validate({"definitions": [
...     {"name": "n", "agg": "count", "window": {"size": "1m"}},
...     {"name": "avg", "agg": "mean", "value": "x", "window": {"size": "1m"}}]})
>>> ref = ReferenceStore(spec)
>>> r = ref.process(0, [b"a", b"a", b"a", b"b"], np.array([0, 30_000, 30_000, 70_000]),
...                 {"x": np.array([1.0, 2.0, 4.0, 8.0])})
>>> r.values.tolist()
[[0.0, nan], [1.0, 1.0], [2.0, 1.5], [0.0, nan]]
>>> ref.process(0, [b"a"], np.array([75_000]), {"x": np.array([0.0])}).values.tolist()
[[2.0, 3.0]]
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .api import ClosedWindow, FeatureResult, StoreStats
from .spec import FeatureDef, FeaturesSpec

_META = b"\x00streamproc.meta"  # the partition's watermark and sequence, in the changelog


@dataclass
class _Event:
    t: int
    seq: int  # arrival order within the partition
    values: dict[str, float]


@dataclass
class _Partition:
    events: dict[bytes, list[_Event]] = field(default_factory=dict)
    watermark: int | None = None
    seq: int = 0
    closed_bound: int | None = None  # windows ending at or below it were reported
    dirty: set[bytes] = field(default_factory=set)
    late: int = 0
    evicted: int = 0
    dropped: int = 0


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.nan


def _window_start(d: FeatureDef, t: int) -> int:
    """The first event time (inclusive) an event at ``t`` sees under ``d``."""
    w = d.window
    if w.type == "sliding":
        return t - w.size_ms + 1
    return t - t % w.step


def _aggregate(d: FeatureDef, t: int, seen: Sequence[_Event]) -> float:
    if d.value is not None:
        seen = [e for e in seen if not math.isnan(e.values[d.value])]
    if d.agg == "count":
        return float(len(seen))
    if d.agg == "since_last":
        return (t - max(e.t for e in seen)) / d.unit_ms if seen else math.nan
    assert d.value is not None
    xs = [e.values[d.value] for e in seen]
    if d.agg == "sum":
        return math.fsum(xs)
    if d.agg == "distinct_count":
        return float(len(set(xs)))
    if not xs:
        return math.nan
    if d.agg == "mean":
        return math.fsum(xs) / len(xs)
    if d.agg == "min":
        return min(xs)
    if d.agg == "max":
        return max(xs)
    if d.agg == "std":
        mu = math.fsum(xs) / len(xs)
        return math.sqrt(math.fsum((x - mu) ** 2 for x in xs) / len(xs))
    if d.agg == "last":
        return max(seen, key=lambda e: (e.t, e.seq)).values[d.value]
    raise AssertionError(d.agg)


class ReferenceStore:
    """A :class:`~streamproc.features.api.WindowStore` that recomputes everything."""

    def __init__(self, spec: FeaturesSpec) -> None:
        self.spec = spec
        self._parts: dict[int, _Partition] = {}

    def _part(self, partition: int) -> _Partition:
        return self._parts.setdefault(partition, _Partition())

    def process(
        self,
        partition: int,
        keys: Sequence[bytes],
        event_time_ms: npt.NDArray[np.int64],
        values: Mapping[str, npt.NDArray[np.float64]],
    ) -> FeatureResult:
        p = self._part(partition)
        defs = self.spec.definitions
        out = np.empty((len(keys), len(defs)), np.float64)
        late = np.zeros(len(keys), np.bool_)
        lateness = self.spec.allowed_lateness_ms
        for i, key in enumerate(keys):
            t = int(event_time_ms[i])
            history = p.events.get(key, [])
            # Events at or below watermark - lateness - largest window are never seen, evicted
            # or not: a late event's values do not depend on where batches were cut.
            floor = (
                None
                if p.watermark is None
                else p.watermark - lateness - self.spec.max_window_ms + 1
            )
            for j, d in enumerate(defs):
                lo = _window_start(d, t) if floor is None else max(_window_start(d, t), floor)
                out[i, j] = _aggregate(d, t, [e for e in history if lo <= e.t <= t])
            if p.watermark is not None and t < p.watermark - lateness:
                late[i] = True
                p.late += 1
                continue
            row = {f: _finite(float(values[f][i])) for f in self.spec.value_fields}
            kept = p.events.setdefault(key, [])
            kept.append(_Event(t, p.seq, row))
            p.seq += 1
            if len(kept) > self.spec.max_events_per_key:
                kept.remove(min(kept, key=lambda e: (e.t, e.seq)))
                p.dropped += 1
            p.dirty.add(key)
            p.watermark = t if p.watermark is None else max(p.watermark, t)
        closed = self._close(p)
        self._evict(p)
        return FeatureResult(out, late, closed)

    def _close(self, p: _Partition) -> list[ClosedWindow]:
        if p.watermark is None:
            return []
        bound = p.watermark - self.spec.allowed_lateness_ms
        before = p.closed_bound
        p.closed_bound = bound
        closed: list[ClosedWindow] = []
        for d in self.spec.definitions:
            w = d.window
            if w.type == "sliding":
                continue
            for key in sorted(p.events):
                starts: set[int] = set()
                for e in p.events[key]:
                    first = e.t - e.t % w.step
                    starts.update(range(first, e.t - w.size_ms, -w.step))
                for s in sorted(starts):
                    end = s + w.size_ms
                    if end > bound or (before is not None and end <= before):
                        continue
                    seen = [e for e in p.events[key] if s <= e.t < end]
                    n = len([e for e in seen if d.value is None
                             or not math.isnan(e.values[d.value])])  # fmt: skip
                    closed.append(ClosedWindow(d.name, key, s, end,
                                               _aggregate(d, end - 1, seen), n))  # fmt: skip
        return closed

    def _evict(self, p: _Partition) -> None:
        if p.watermark is None:
            return
        cut = p.watermark - self.spec.allowed_lateness_ms - self.spec.max_window_ms
        for key in list(p.events):
            kept = [e for e in p.events[key] if e.t > cut]
            if len(kept) == len(p.events[key]):
                continue
            p.dirty.add(key)
            if kept:
                p.events[key] = kept
            else:
                del p.events[key]
                p.evicted += 1

    # -- changelog ---------------------------------------------------------------------------

    def changes(self, partition: int, prefix: bytes = b"") -> list[tuple[bytes, bytes | None]]:
        p = self._part(partition)
        out: list[tuple[bytes, bytes | None]] = []
        for key in sorted(p.dirty):
            evs = p.events.get(key)
            state = (
                None if evs is None else json.dumps([[e.t, e.seq, e.values] for e in evs]).encode()
            )
            out.append((key, None if state is None else prefix + state))
        if p.dirty:
            meta = [p.watermark, p.seq, p.closed_bound, p.late, p.evicted, p.dropped]
            out.append((_META, prefix + json.dumps(meta).encode()))
        p.dirty.clear()
        return out

    def restore(self, partition: int, entries: Iterable[tuple[bytes, bytes | None]]) -> int:
        p = self._parts[partition] = _Partition()
        n = 0
        for key, state in entries:
            n += 1
            if key == _META:
                assert state is not None
                p.watermark, p.seq, p.closed_bound, p.late, p.evicted, p.dropped = json.loads(state)
            elif state is None:
                p.events.pop(key, None)
            else:
                p.events[key] = [_Event(t, s, v) for t, s, v in json.loads(state)]
        return n

    def revoke(self, partition: int) -> None:
        self._parts.pop(partition, None)

    def stats(self, partition: int) -> StoreStats:
        p = self._part(partition)
        size = sum(len(k) + 48 * len(v) for k, v in p.events.items())
        return StoreStats(len(p.events), size, p.late, p.evicted, p.watermark, p.dropped)
