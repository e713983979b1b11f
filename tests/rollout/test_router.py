from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.errors import DeploymentError
from streamproc.rollout.router import BUCKETS, assign, bucket_of, buckets, salt_for
from streamproc.rollout.state import (
    Deploy,
    Promote,
    Rollback,
    Step,
    Strategy,
    StrategyParams,
    apply,
)

SALT = b"fraud:1.1.0"
# Buckets are part of the contract: a key must land in the same bucket on every machine,
# in every process, in every release. Changing the hash moves live traffic between versions.
FIXED = {
    b"acct-00000001": 1325,
    b"acct-00000002": 1259,
    b"acct-00000043": 579,
    b"acct-00000052": 683,
    b"acct-42": 5639,
    b"": 3066,
    "Zürich-7".encode(): 496,
    b"\x00\xff" * 20: 7931,
}


def _state(strategy=Strategy.CANARY, **params):
    s = apply(None, Deploy("fraud", "1.0.0", at_ms=0))
    return apply(s, Deploy("fraud", "1.1.0", strategy, StrategyParams(**params), at_ms=1))


def _random_keys(n, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, n)
    return [rng.bytes(int(k)) for k in lengths]


def test_fixed_buckets():
    keys = list(FIXED)
    assert [bucket_of(k, SALT) for k in keys] == list(FIXED.values())
    assert buckets(keys, SALT).tolist() == list(FIXED.values())


def test_fixed_assignments_for_a_ten_percent_canary():
    s = _state(percent=10)
    assert salt_for(s) == SALT
    got = assign(list(FIXED), s).variant.tolist()
    assert got == [int(b < 1000) for b in FIXED.values()] == [0, 0, 1, 1, 0, 0, 1, 0]


def test_buckets_are_the_same_in_another_process():
    keys = list(FIXED)
    code = (
        "import json, sys; from streamproc.rollout.router import buckets; "
        "keys = [bytes.fromhex(k) for k in json.loads(sys.argv[1])]; "
        "print(json.dumps(buckets(keys, b'fraud:1.1.0').tolist()))"
    )
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps([k.hex() for k in keys])],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(out.stdout) == list(FIXED.values())


@pytest.mark.parametrize("percent", [1, 10, 50, 90])
def test_canary_share_within_two_points(percent):
    keys = _random_keys(20_000, seed=percent)
    share = assign(keys, _state(percent=percent)).variant.mean() * 100
    assert abs(share - percent) <= 2


def test_share_of_realistic_account_ids():
    keys = [f"acct-{i:08d}".encode() for i in range(20_000)]
    assert abs(assign(keys, _state(percent=10)).variant.mean() - 0.10) <= 0.02


def test_same_key_same_variant_whatever_the_batch():
    s = _state(percent=30)
    keys = _random_keys(2_000, seed=7)
    whole = assign(keys, s).variant
    rng = np.random.default_rng(1)
    order = rng.permutation(len(keys))
    shuffled = assign([keys[i] for i in order], s).variant
    np.testing.assert_array_equal(shuffled, whole[order])
    for i in range(0, len(keys), 97):  # one at a time
        assert assign([keys[i]], s).variant[0] == whole[i]


def test_raising_the_share_only_adds_keys():
    s = _state(Strategy.ROLLOUT, steps=(5, 25, 50, 100))
    keys = _random_keys(5_000, seed=3)
    before = assign(keys, s).variant.astype(bool)
    for _ in range(3):
        s = apply(s, Step("fraud", at_ms=s.updated_ms + 1))
        now = assign(keys, s).variant.astype(bool)
        assert (now | ~before).all()  # everything on the candidate stays there
        before = now
    assert before.all()


def test_another_rollout_samples_other_keys():
    keys = _random_keys(10_000, seed=5)
    a = assign(keys, _state(percent=10)).variant.astype(bool)
    s = apply(
        apply(_state(percent=10), Rollback("fraud", at_ms=2)),
        Deploy("fraud", "1.2.0", Strategy.CANARY, StrategyParams(percent=10), at_ms=3),
    )
    b = assign(keys, s).variant.astype(bool)
    assert (a & b).mean() < 0.03  # independent 10% samples overlap by about 1%


def test_none_keys_hash_on_the_event_id():
    s = _state(percent=50)
    ids = [f"evt-{i}" for i in range(200)]
    by_id = assign([i.encode() for i in ids], s).variant
    mixed = assign([None] * 200, s, event_ids=ids).variant
    np.testing.assert_array_equal(mixed, by_id)
    with pytest.raises(DeploymentError, match="event_id"):
        assign([b"k", None], s)


def test_strategies_and_states_at_rest():
    keys = _random_keys(1_000)
    shadow = assign(keys, _state(Strategy.SHADOW))
    assert shadow.shadow and not shadow.variant.any() and shadow.versions == ("1.0.0", "1.1.0")
    bg = assign(keys, _state(Strategy.BLUE_GREEN))
    assert not bg.shadow and not bg.variant.any()
    promoted = apply(_state(Strategy.BLUE_GREEN), Promote("fraud", at_ms=2))
    done = assign(keys, promoted)
    assert not done.variant.any() and done.versions == ("1.1.0", None)
    assert assign(keys, None).versions == (None, None)
    assert len(assign([], _state()).variant) == 0
    a = assign(keys, _state(percent=40))
    assert a.version_of(int(np.argmax(a.variant))) == "1.1.0"


@given(st.lists(st.binary(max_size=64), max_size=50), st.binary(max_size=16))
def test_compiled_hash_equals_the_reference(keys, salt):
    got = buckets(keys, salt)
    assert got.tolist() == [bucket_of(k, salt) for k in keys]
    assert ((got >= 0) & (got < BUCKETS)).all()
