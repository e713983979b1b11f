"""The prediction cache: bounds, TTL, hit and miss counts, and no score across a version."""

from __future__ import annotations

import numpy as np
import pytest

from streamproc.backends.base import Backend
from streamproc.config import CacheSettings
from streamproc.models.spec import FeatureSpec, ModelSpec
from streamproc.pipeline.rollout_scorer import RolloutScorer
from streamproc.pipeline.scoring import SingleScorer
from streamproc.rollout.router import assign
from streamproc.rollout.state import Deploy, Promote, Strategy, StrategyParams, apply
from streamproc.serving.cache import ENTRY_OVERHEAD, CachedScorer, PredictionCache


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Counting(Backend):
    """Scores a row as its first value plus the version's offset; counts rows scored."""

    name, device = "counting", "cpu"

    def __init__(self, offset: float) -> None:
        self.offset = offset
        self.rows = 0

    def infer(self, x):
        self.rows += len(x)
        return np.stack([x[:, 0] + self.offset, -x[:, 0]], axis=1).astype(np.float32)


def spec(version: str) -> ModelSpec:
    return ModelSpec(name="m", version=version, inputs=(FeatureSpec(field="x"),))


def rows(*values: float) -> np.ndarray:
    return np.array([[v] for v in values], np.float32)


def test_off_unless_enabled():
    assert PredictionCache.from_settings(CacheSettings()) is None
    c = PredictionCache.from_settings(CacheSettings(enabled=True, max_entries=3, ttl_s=2))
    assert c is not None and c.max_entries == 3


def test_entry_bound_evicts_least_recently_used():
    c = PredictionCache(max_entries=2, max_bytes=10**6, clock=Clock())
    c.put_many("m", ["1"] * 2, rows(1, 2), rows(10, 20))
    assert c.get_many("m", ["1"], rows(1))[0] is not None  # 1 is now the most recent
    c.put_many("m", ["1"], rows(3), rows(30))
    assert len(c) == 2
    got = c.get_many("m", ["1"] * 3, rows(1, 2, 3))
    assert [g is not None for g in got] == [True, False, True]


def test_byte_bound():
    size = ENTRY_OVERHEAD + 4 + 4  # one float32 of input, one of score
    c = PredictionCache(max_entries=1000, max_bytes=3 * size, clock=Clock())
    c.put_many("m", ["1"] * 5, rows(1, 2, 3, 4, 5), rows(1, 2, 3, 4, 5))
    assert len(c) == 3 and c.bytes == 3 * size
    big = PredictionCache(max_entries=10, max_bytes=size - 1, clock=Clock())
    big.put_many("m", ["1"], rows(1), rows(1))  # larger than the whole cache: not kept
    assert len(big) == 0


def test_ttl_and_counts():
    clock = Clock()
    c = PredictionCache(ttl_s=10, clock=clock)
    c.put_many("m", ["1"], rows(1), rows(7))
    clock.t = 9.9
    assert c.get_many("m", ["1"], rows(1))[0].tolist() == [7.0]
    clock.t = 10.0
    assert c.get_many("m", ["1"], rows(1)) == [None]
    assert (c.hits, c.misses) == (1, 1)


def test_key_is_the_exact_bytes_and_the_version():
    c = PredictionCache(clock=Clock())
    c.put_many("m", ["1"], rows(0.1), rows(5))
    near = np.nextafter(np.float32(0.1), np.float32(1))
    assert c.get_many("m", ["1"], np.array([[near]], np.float32)) == [None]
    assert c.get_many("m", ["2"], rows(0.1)) == [None]
    assert c.get_many("other", ["1"], rows(0.1)) == [None]


def test_cached_scorer_hits_return_identical_scores():
    backend = Counting(0.0)
    scorer = CachedScorer(SingleScorer(spec("1.0.0"), backend), PredictionCache(clock=Clock()))
    x = rows(1, 2, 3)
    first = scorer.score(x, [None] * 3)
    again = scorer.score(rows(3, 9, 1), [None] * 3)
    assert backend.rows == 4  # only 9 was new
    assert (
        again.scores.tobytes()
        == np.concatenate([first.scores[2:3], [[9, -9]], first.scores[0:1]])
        .astype(np.float32)
        .tobytes()
    )
    assert [v.version for v in again.versions] == ["1.0.0"]


@pytest.mark.parametrize("wrapped", [False, True])
def test_no_stale_score_after_a_rollout_switch(wrapped):
    """``wrapped``: the rollout scorer behind another scorer (the insight tap): the cache
    still routes each key as the rollout does (Scorer.route), not by the wrapper's type."""
    from streamproc.pipeline.insight import KeyTap

    backends = {"1.0.0": Counting(0.0), "2.0.0": Counting(100.0)}
    state = apply(None, Deploy("m", "1.0.0", at_ms=0))
    inner = RolloutScorer(state, lambda v: (spec(v), backends[v]))
    scorer = CachedScorer(KeyTap(inner) if wrapped else inner, PredictionCache(clock=Clock()))
    x = rows(*range(50))
    keys = [f"k{i}".encode() for i in range(50)]
    assert scorer.score(x, keys).scores[:, 0].tolist() == list(range(50))
    assert scorer.score(x, keys).scores[:, 0].tolist() == list(range(50))  # all hits
    assert backends["1.0.0"].rows == 50

    # A canary: the candidate's keys miss and are scored by it, the others still hit.
    state = apply(state, Deploy("m", "2.0.0", Strategy.CANARY, StrategyParams(percent=50),
                                at_ms=1))  # fmt: skip
    assert inner.apply(state)
    on_candidate = assign(keys, state).variant.astype(bool)
    assert 0 < on_candidate.sum() < 50
    out = scorer.score(x, keys)
    want = np.arange(50) + np.where(on_candidate, 100.0, 0.0)
    assert out.scores[:, 0].tolist() == want.tolist()
    names = [out.versions[i].version for i in out.version_index]
    assert names == ["2.0.0" if c else "1.0.0" for c in on_candidate]
    assert backends["2.0.0"].rows == on_candidate.sum() and backends["1.0.0"].rows == 50

    # Promoted: every row is the new version's, none served from 1.0.0's entries.
    state = apply(state, Promote("m", at_ms=2))
    assert inner.apply(state)
    out = scorer.score(x, keys)
    assert out.scores[:, 0].tolist() == (np.arange(50) + 100.0).tolist()
    assert {v.version for v in out.versions} == {"2.0.0"}


@pytest.mark.parametrize("cached_first", [True, False])
def test_keyless_rows_go_to_stable(cached_first):
    backends = {"1.0.0": Counting(0.0), "2.0.0": Counting(100.0)}
    state = apply(None, Deploy("m", "1.0.0", at_ms=0))
    state = apply(state, Deploy("m", "2.0.0", Strategy.CANARY, StrategyParams(percent=50),
                                at_ms=1))  # fmt: skip
    keys = [f"k{i}".encode() for i in range(20)]
    cand = next(k for k, v in zip(keys, assign(keys, state).variant, strict=True) if v)
    scorer = CachedScorer(RolloutScorer(state, lambda v: (spec(v), backends[v])),
                          PredictionCache(clock=Clock()))  # fmt: skip
    if cached_first:
        scorer.score(rows(1), [None])
    out = scorer.score(rows(1, 2), [None, cand])
    assert out.scores[:, 0].tolist() == [1.0, 102.0]
