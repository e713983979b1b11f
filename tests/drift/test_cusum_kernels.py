"""The three-arm CUSUM kernel against the generic one: same state, same transitions."""

from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np
import pytest

from streamproc.drift import ReferenceProfile
from streamproc.drift.base import Transition
from streamproc.drift.cusum import CusumDetector


def _pair(profile: ReferenceProfile, **kw: object) -> tuple[CusumDetector, CusumDetector]:
    fast = CusumDetector.from_profile(profile, **kw)  # type: ignore[arg-type]
    generic = CusumDetector.from_profile(profile, **kw)  # type: ignore[arg-type]
    assert fast._mean_var
    generic._mean_var = False  # the generic kernel, as for any other set of arms
    return fast, generic


def _same(a: Transition, b: Transition) -> bool:
    return all(
        x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(astuple(a), astuple(b), strict=True)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_var_kernel_equals_the_generic_kernel(normal_profile, seed):
    rng = np.random.default_rng(seed)
    # A low ARL and a short recovery: many FIRING and RESOLVED transitions, several per batch.
    fast, generic = _pair(normal_profile, arl=200.0, recovery=40)
    transitions = 0
    t0 = 0
    for b in range(12):
        n = int(rng.integers(1, 900))
        x = rng.normal(size=(n, 3)) * (1.0 + 0.6 * (b % 3 == 1)) + 0.8 * (b % 4 == 2)
        x[rng.random((n, 3)) < 0.02] = np.nan  # skipped by every arm
        x[rng.random((n, 3)) < 0.005] = np.inf
        offsets = np.arange(t0, t0 + n, dtype=np.int64) * 2
        t0 += n
        fast.update(x, offsets)
        generic.update(x, offsets)
        a, g = fast.transitions, generic.transitions
        assert len(a) == len(g)
        assert all(_same(x, y) for x, y in zip(a, g, strict=True))
        assert fast.drift_detected.tolist() == generic.drift_detected.tolist()
        transitions += len(a)
        for name in ("_s", "_start_t", "_start_pos", "_firing", "_last_t", "_fire_t",
                     "_fire_pos", "_last_pos", "_fire_arm"):  # fmt: skip
            np.testing.assert_array_equal(getattr(fast, name), getattr(generic, name), name)
    assert transitions > 20  # the comparison saw both kinds of transitions, many times
