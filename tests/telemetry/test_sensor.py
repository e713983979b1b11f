"""CountingSensor: totals and the ring of recent latencies behind the live p50/p99."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.telemetry.sensor import BatchStats, CountingSensor


def stats(lat: np.ndarray, rejects: dict[str, int] | None = None) -> BatchStats:
    return BatchStats(
        model="m", version="1.0.0", backend="onnx", size=len(lat) + sum((rejects or {}).values()),
        predictions=len(lat), rejects=rejects or {}, release="size", wait_ms=0.0, stage_s={},
        latencies_ms=lat,
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 23), max_size=12), st.integers(1, 16))
def test_quantiles_are_those_of_the_latest_window(sizes: list[int], window: int) -> None:
    s = CountingSensor(latency_window=window)
    seen: list[float] = []
    for b, k in enumerate(sizes):
        lat = np.arange(k, dtype=np.float64) + 100.0 * b
        s.on_batch(stats(lat))
        seen += lat.tolist()
    recent = seen[-window:]
    if not recent:
        assert s.latency_quantiles() == (0.0, 0.0)
        return
    want = np.percentile(np.asarray(recent), [50, 99])
    assert s.latency_quantiles() == (float(want[0]), float(want[1]))
    assert s.events_out == len(seen) and s.batches == len(sizes)


def test_rejects_are_counted_by_reason() -> None:
    s = CountingSensor()
    s.on_batch(stats(np.ones(3), {"TRUNCATED": 2}))
    s.on_batch(stats(np.ones(1), {"TRUNCATED": 1, "UNKNOWN_SCHEMA": 4}))
    assert s.rejected == {"TRUNCATED": 3, "UNKNOWN_SCHEMA": 4}
    assert s.events_in == 3 + 2 + 1 + 5 and s.events_out == 4
