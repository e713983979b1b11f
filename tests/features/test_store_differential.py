"""The compiled store (``store.py``) equals the plain-Python reference (``reference.py``) on
generated streams: many keys, duplicates, equal event times, out-of-order and late events,
NaN and infinite values, every aggregation and window type, random batch boundaries over two
partitions, and a restore from the changelog in the middle.

Values of count, min, max, last, since_last and distinct_count must be equal; sum, mean and
std within a relative 1e-9, plus an absolute 1e-9 of the stream's largest value (a std of
nearly equal values is the square root of a difference of running sums, so it is off by
about the square root of their rounding, whatever its relative error)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.features import store as store_module
from streamproc.features.api import ClosedWindow, FeatureResult, WindowStore
from streamproc.features.factory import open_store
from streamproc.features.reference import ReferenceStore
from streamproc.features.spec import FeaturesSpec
from streamproc.features.store import CompiledStore

AGGS = ("count", "sum", "mean", "min", "max", "std", "last", "since_last", "distinct_count")
APPROX = frozenset({"sum", "mean", "std"})


@st.composite
def specs(draw: st.DrawFn) -> FeaturesSpec:
    windows: list[dict[str, Any]] = [
        {"size": draw(st.sampled_from([1_000, 3_000, 10_000]))},
        {"type": "tumbling", "size": draw(st.sampled_from([1_000, 5_000]))},
        draw(st.sampled_from([{"type": "hopping", "size": 6_000, "step": 2_000},
                              {"type": "hopping", "size": 4_000, "step": 1_000}])),
    ]  # fmt: skip
    defs = []
    for w in windows:
        for agg in AGGS:
            unit = draw(st.sampled_from(["ms", "s", "min"]))
            d: dict[str, Any] = {"name": f"{agg}_{w.get('type', 'sliding')}", "agg": agg,
                                 "window": w, "unit": unit}  # fmt: skip
            if agg not in ("count", "since_last"):
                d["value"] = draw(st.sampled_from(["x", "y"]))
            defs.append(d)
    return FeaturesSpec.model_validate({
        "allowed_lateness": draw(st.sampled_from([0, 500, 4_000])),
        "max_events_per_key": draw(st.sampled_from([1, 3, 50, 4096])),
        "definitions": defs,
    })  # fmt: skip


# quarters: every sum is exact in floating point, so sum and mean must agree to the last bit
# of fsum's; y: any float, NaN and infinities included.
X = st.one_of(st.integers(-40, 40).map(lambda k: k / 4), st.just(math.nan))
Y = st.one_of(
    st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300])
)


@st.composite
def streams(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 120))
    keys = draw(st.lists(st.integers(0, draw(st.integers(0, 25))), min_size=n, max_size=n))
    # a random walk: steps back make out-of-order and late events, steps of 0 make ties
    steps = draw(st.lists(st.integers(-4_000, 5_000) | st.just(0), min_size=n, max_size=n))
    t = draw(st.integers(-50_000, 50_000)) + np.cumsum(np.array(steps, np.int64))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    nb = len(cuts) + 1
    return {
        "keys": [b"k%d" % k for k in keys],
        "t": t.astype(np.int64),
        "x": np.array(draw(st.lists(X, min_size=n, max_size=n)), np.float64),
        "y": np.array(draw(st.lists(Y, min_size=n, max_size=n)), np.float64),
        "bounds": list(zip([0, *cuts], [*cuts, n], strict=True)),
        "partition": draw(st.lists(st.integers(0, 1), min_size=nb, max_size=nb)),
        "flush": draw(st.lists(st.booleans(), min_size=nb, max_size=nb)),
        "restore_at": draw(st.integers(0, nb)),
    }


def _close(spec: FeaturesSpec, name: str, a: float, b: float, scale: float) -> bool:
    agg = next(d.agg for d in spec.definitions if d.name == name)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if agg in APPROX:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * scale)
    return a == b


def _assert_values(spec: FeaturesSpec, want: FeatureResult, got: FeatureResult,
                   scale: float) -> None:  # fmt: skip
    assert got.values.shape == want.values.shape
    assert got.late.tolist() == want.late.tolist()
    for i, j in np.ndindex(*want.values.shape):
        name = spec.names[j]
        a, b = float(want.values[i, j]), float(got.values[i, j])
        assert _close(spec, name, a, b, scale), (i, name, a, b)
    _assert_closed(spec, want.closed, got.closed, scale)


def _assert_closed(spec: FeaturesSpec, want: list[ClosedWindow], got: list[ClosedWindow],
                   scale: float) -> None:  # fmt: skip
    ident = [(c.feature, c.key, c.start_ms, c.end_ms, c.events) for c in want]
    assert [(c.feature, c.key, c.start_ms, c.end_ms, c.events) for c in got] == ident
    for w, g in zip(want, got, strict=True):
        assert _close(spec, w.feature, w.value, g.value, scale), (w, g)


def _scale(v: npt.NDArray[np.float64]) -> float:
    finite = v[np.isfinite(v)]
    return max(1.0, float(np.abs(finite).max())) if len(finite) else 1.0


def _stats(store: WindowStore, partition: int) -> tuple[Any, ...]:
    s = store.stats(partition)
    return (s.keys, s.late_events, s.evicted_keys, s.watermark_ms, s.dropped_events)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), data=streams())
def test_compiled_store_equals_reference(spec: FeaturesSpec, data: dict[str, Any]) -> None:
    _differential(spec, data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), data=streams())
def test_compiled_store_equals_reference_when_compacting(
    spec: FeaturesSpec, data: dict[str, Any]
) -> None:
    # streams this small never leave 16k events of holes: compact whenever holes are half
    before = store_module.COMPACT_MIN
    store_module.COMPACT_MIN = 0
    try:
        _differential(spec, data)
    finally:
        store_module.COMPACT_MIN = before


def _differential(spec: FeaturesSpec, data: dict[str, Any]) -> None:
    ref = ReferenceStore(spec)
    store: WindowStore = CompiledStore(spec)
    log: dict[int, list[tuple[bytes, bytes | None]]] = {0: [], 1: []}
    scale = _scale(np.concatenate([data["x"], data["y"]]))
    for b, (lo, hi) in enumerate(data["bounds"]):
        if b == data["restore_at"]:
            # a fresh store from the changelog so far, compacted as Kafka would (latest per key)
            fresh = CompiledStore(spec)
            for part, entries in log.items():
                entries.extend(store.changes(part))
                fresh.restore(part, list(dict(entries).items()))
                assert _stats(fresh, part) == _stats(store, part)
            store = fresh
        part = data["partition"][b]
        args = (part, data["keys"][lo:hi], data["t"][lo:hi],
                {"x": data["x"][lo:hi], "y": data["y"][lo:hi]})  # fmt: skip
        _assert_values(spec, ref.process(*args), store.process(*args), scale)
        assert _stats(store, part) == _stats(ref, part)
        if data["flush"][b]:
            log[part].extend(store.changes(part))


def test_changelog_marks_evicted_keys_and_restore_counts_entries() -> None:
    spec = FeaturesSpec.model_validate(
        {"definitions": [{"name": "n", "agg": "count", "window": {"size": "10s"}}]}
    )
    store = CompiledStore(spec)
    store.process(0, [b"a", b"b"], np.array([0, 1_000]), {})
    first = store.changes(0)
    assert {k for k, v in first if v is not None} >= {b"a", b"b"}
    store.process(0, [b"b"], np.array([10_500]), {})  # a's only event falls out of every window
    second = dict(store.changes(0))
    assert second[b"a"] is None and second[b"b"] is not None
    assert store.stats(0).keys == 1 and store.stats(0).evicted_keys == 1
    fresh = CompiledStore(spec)
    assert fresh.restore(0, first + list(second.items())) == len(first) + len(second)
    assert fresh.stats(0).keys == 1
    got = fresh.process(0, [b"a", b"b"], np.array([10_600, 10_600]), {})
    assert got.values[:, 0].tolist() == [0.0, 2.0]  # b: 1_000 and 10_500; a: gone


@pytest.mark.parametrize("prefix", [b"\x00" * 7 + b"\x2a", b"abc"], ids=["one-word", "odd"])
@pytest.mark.parametrize("make", [CompiledStore, ReferenceStore], ids=["compiled", "reference"])
def test_changes_put_the_prefix_before_each_state_and_nothing_else(
    make: Any, prefix: bytes
) -> None:
    """The pipeline frames each state with the input offset it reached (``prefix``); a
    word-sized prefix is written into the compiled store's buffer, any other joined on."""
    spec = FeaturesSpec.model_validate(
        {"definitions": [{"name": "s", "agg": "sum", "value": "x", "window": {"size": "10s"}}]}
    )
    stores = [make(spec), make(spec)]
    for st_ in stores:
        st_.process(0, [b"a", b"b", b"a"], np.array([0, 1_000, 2_000]), {"x": np.ones(3)})
    plain = stores[0].changes(0)
    framed = stores[1].changes(0, prefix)
    assert [k for k, _ in framed] == [k for k, _ in plain] and len(plain) == 3  # a, b, meta
    assert all(f == prefix + v for (_, v), (_, f) in zip(plain, framed, strict=True))
    for st_ in stores:  # a's events fall out of every window: a tombstone, never framed
        st_.process(0, [b"b"], np.array([12_500]), {"x": np.ones(1)})
    framed = dict(stores[1].changes(0, prefix))
    assert framed[b"a"] is None and dict(stores[0].changes(0))[b"a"] is None
    assert framed[b"b"] is not None and framed[b"b"].startswith(prefix)


def test_memory_per_key_is_bounded_and_drops_are_counted() -> None:
    cap = 64
    spec = FeaturesSpec.model_validate({
        "max_events_per_key": cap,
        "definitions": [{"name": "s", "agg": "sum", "value": "x", "window": {"size": "30d"}},
                        {"name": "sd", "agg": "std", "value": "x", "window": {"size": "30d"}}],
    })  # fmt: skip
    store = CompiledStore(spec)
    sizes = []
    for b in range(20):
        t = np.arange(b * 1_000, (b + 1) * 1_000, dtype=np.int64)
        got = store.process(0, [b"hot"] * 1_000, t, {"x": np.ones(1_000)})
        sizes.append(store.stats(0).bytes)
        assert got.values[-1, 0] == cap  # the key's sum covers its last `cap` events only
    assert store.stats(0).dropped_events == 20_000 - cap
    assert max(sizes) == sizes[0]  # memory stops growing once the key is at its cap
    # Restored at the cap, the key gets the same spare room once touched: without it every
    # insert slid all of its events back to its block's start.
    restored = CompiledStore(spec)
    restored.restore(0, store.changes(0))
    part = restored._parts[0]
    slot = part.index[b"hot"]
    t = np.arange(20_000, 21_000, dtype=np.int64)
    got = restored.process(0, [b"hot"] * 1_000, t, {"x": np.ones(1_000)})
    assert got.values[-1, 0] == cap
    assert part.capb[slot] == cap + cap // 4


def test_open_store_is_the_compiled_store_and_warms_without_state() -> None:
    spec = FeaturesSpec.model_validate(
        {"definitions": [{"name": "n", "agg": "count", "window": {"size": "10s"}},
                         {"name": "m", "agg": "max", "value": "x",
                          "window": {"type": "tumbling", "size": "10s"}}]}
    )  # fmt: skip
    store = open_store(spec)
    assert isinstance(store, CompiledStore)
    assert store.warm() >= 0
    assert store.changes(0) == [] and store.stats(0).keys == 0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), data=streams())
def test_values_do_not_depend_on_where_batches_are_cut(
    spec: FeaturesSpec, data: dict[str, Any]
) -> None:
    # Online batches and an offline backfill cut the same partition differently: late
    # events included, each event's values must be the same either way.
    whole: list[FeatureResult] = []
    cut: list[FeatureResult] = []
    for make, out, bounds in ((ReferenceStore, whole, [(0, len(data["t"]))]),
                              (CompiledStore, cut, data["bounds"])):  # fmt: skip
        store = make(spec)
        for lo, hi in bounds:
            out.append(store.process(0, data["keys"][lo:hi], data["t"][lo:hi],
                                     {"x": data["x"][lo:hi], "y": data["y"][lo:hi]}))  # fmt: skip
    scale = _scale(np.concatenate([data["x"], data["y"]]))
    want = FeatureResult(np.concatenate([r.values for r in whole]),
                         np.concatenate([r.late for r in whole]))  # fmt: skip
    got = FeatureResult(np.concatenate([r.values for r in cut]),
                        np.concatenate([r.late for r in cut]))  # fmt: skip
    _assert_values(spec, want, got, scale)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=24)), max_size=300))
def test_key_table_agrees_with_a_dict(ops: list[tuple[bool, bytes]]) -> None:
    """The compiled key -> slot table (``store._KeyTable``) through adds, removals, slot
    reuse, growth and rebuilds answers as a dict does."""
    from streamproc.features.store import _KeyTable

    class Small(_KeyTable):
        MIN_SIZE = 4
        MIN_GARBAGE = 8

    table = Small()
    table.rebuild([])
    keys: list[bytes | None] = []
    index: dict[bytes, int] = {}
    free: list[int] = []
    for add, key in ops:
        if add and key not in index:
            s = free.pop() if free else len(keys)
            if s == len(keys):
                keys.append(key)
            else:
                keys[s] = key
            index[key] = s
            table.add([s], [key], keys)
        elif not add and key in index:
            s = index.pop(key)
            table.remove(np.array([s], np.int64))
            keys[s] = None
            free.append(s)
        probe = [*index, key, key + b"\x00"]
        got, missing = table.lookup(probe)
        want = [index.get(k, -1) for k in probe]
        assert got.tolist() == want
        assert missing == want.count(-1)
