"""The tensor route's input rules against a column-by-column reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamproc.codecs.features import check_number
from streamproc.models.spec import FeatureSpec, ModelSpec
from streamproc.serving.service import ColumnRules, check_matrix
from streamproc.types import ReasonCode

SPEC = ModelSpec(
    name="m",
    version="1.0.0",
    inputs=(
        FeatureSpec(field="a", min=0, max=10),
        FeatureSpec(field="b"),  # no bounds
        FeatureSpec(field="n", min=-1, max=1, allow_nan=True),
        FeatureSpec(field="c", encoding="onehot", symbols=("X", "Y", "Z")),
        FeatureSpec(field="i", encoding="index", symbols=("P", "Q")),
    ),
)


def reference(x: np.ndarray) -> list[tuple[int, ReasonCode]]:
    """The first failing rule of each row: value columns by the decoders' check, the
    symbols' columns by their range, then the one-hot group and the index."""
    out = []
    for i, row in enumerate(x.astype(np.float64).tolist()):
        code = ReasonCode.OK
        for c, f in enumerate(SPEC.inputs[:3]):
            code = ReasonCode(check_number(f, row[c], f.field)[0])
            if code:
                break
        for c, hi in ((3, 1), (4, 1), (5, 1), (6, 1)):
            if code:
                break
            v = row[c]
            if math.isnan(v):
                code = ReasonCode.NAN_FEATURE
            elif not 0 <= v <= hi:
                code = ReasonCode.OUT_OF_RANGE
        if not code and sorted(row[3:6]) != [0.0, 0.0, 1.0]:
            code = ReasonCode.UNKNOWN_ENUM
        if not code and row[6] not in (0.0, 1.0):
            code = ReasonCode.UNKNOWN_ENUM
        if code:
            out.append((i, code))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_check_matrix_agrees_with_the_reference(seed):
    rng = np.random.default_rng(seed)
    n = 200
    x = np.zeros((n, 7), np.float32)
    x[:, 0] = rng.uniform(0, 10, n)
    x[:, 1] = rng.normal(0, 1e6, n)
    x[:, 2] = rng.uniform(-1, 1, n)
    x[np.arange(n), 3 + rng.integers(0, 3, n)] = 1
    x[:, 6] = rng.integers(0, 2, n)
    specials = np.array([np.nan, np.inf, -np.inf, -0.5, 11.0, 0.5, 2.0, -1.0, 1.0, 0.0],
                        np.float32)  # fmt: skip
    for _ in range(60):  # break some cells
        x[rng.integers(0, n), rng.integers(0, 7)] = specials[rng.integers(0, len(specials))]
    got = [(r.index, r.reason) for r in check_matrix(ColumnRules.of(SPEC), x)]
    assert got == reference(x)
    assert 0 < len(got) < n  # both kinds of row are there
    assert {code for _, code in got} >= {ReasonCode.NAN_FEATURE, ReasonCode.OUT_OF_RANGE}


def test_what_a_feature_allows_is_valid():
    x = np.array([[1, np.nan, np.nan, 0, 1, 0, 0], [1, np.inf, 0, 0, 0, 1, 1]], np.float32)
    got = [(r.index, r.reason) for r in check_matrix(ColumnRules.of(SPEC), x)]
    assert got == [(0, ReasonCode.NAN_FEATURE), (1, ReasonCode.NAN_FEATURE)]  # b allows none
    x[:, 1] = 5.0
    assert check_matrix(ColumnRules.of(SPEC), x) == []  # n allows NaN
    x[0, 6] = 0.5
    assert [r.reason for r in check_matrix(ColumnRules.of(SPEC), x)] == [ReasonCode.UNKNOWN_ENUM]
