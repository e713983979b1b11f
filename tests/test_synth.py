"""Synthetic Transaction events: determinism, schema validity, labels, shift."""

from __future__ import annotations

import json
import math
from pathlib import Path

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc import synth
from streamproc.errors import ModelError
from streamproc.models.spec import ModelSpec

SCHEMA = fastavro.parse_schema(
    json.loads((Path(__file__).parents[1] / "schemas" / "Transaction.avsc").read_text())
)


def test_same_seed_same_events_other_seed_other_events():
    a, la = synth.generate(500, seed=11)
    b, lb = synth.generate(500, seed=11)
    c, _ = synth.generate(500, seed=12)
    assert a == b
    assert np.array_equal(la, lb)
    assert [r["amount"] for r in a] != [r["amount"] for r in c]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 300),
    offset=st.integers(0, 20_000),
    seed=st.integers(0, 2**32 - 1),
)
def test_chunks_with_offset_are_slices_of_one_stream(n, offset, seed):
    whole = synth.generate_columns(offset + n, seed=seed)
    chunk = synth.generate_columns(n, seed=seed, offset=offset)
    for name in (*synth.FIELDS, synth.LABEL):
        np.testing.assert_array_equal(chunk[name], whole[name][offset:])


def test_records_are_valid_avro_and_roundtrip():
    records, _ = synth.generate(2_000, seed=3)
    assert fastavro.validation.validate_many(records, SCHEMA)
    import io

    buf = io.BytesIO()
    fastavro.writer(buf, SCHEMA, records)
    buf.seek(0)
    back = list(fastavro.reader(buf, return_record_name=True))
    assert len(back) == len(records)
    assert back[5]["event_id"] == records[5]["event_id"]


def test_record_types_are_avro_ready():
    records, labels = synth.generate(1_000, seed=5)
    r = records[0]
    assert isinstance(r["event_time"], int) and not isinstance(r["event_time"], bool)
    assert isinstance(r["txn_count_1h"], int)
    assert isinstance(r["is_international"], bool)
    assert r["channel"] in synth.CHANNELS
    assert labels.dtype == np.int8 and set(np.unique(labels)) <= {0, 1}
    nulls = sum(rec["device_trust_score"] is None for rec in records)
    assert 60 <= nulls <= 140  # ~10%
    assert all(
        rec["device_trust_score"] is None or not math.isnan(rec["device_trust_score"])
        for rec in records
    )
    assert len({rec["event_id"] for rec in records}) == len(records)


def test_event_time_starts_at_start_ms_and_follows_rate():
    cols = synth.generate_columns(5, seed=0, start_ms=1_000, rate_per_s=500, offset=2)
    assert cols["event_time"].tolist() == [1_004, 1_006, 1_008, 1_010, 1_012]
    default = synth.generate_columns(1, seed=0)
    assert default["event_time"][0] == synth.DEFAULT_START_MS


def test_values_respect_the_demo_model_constraints():
    cols = synth.generate_columns(50_000, seed=9, shift=3.0)
    assert cols["amount"].min() > 0 and cols["amount"].max() <= 1e6
    assert cols["merchant_risk"].min() >= 0 and cols["merchant_risk"].max() <= 1
    assert cols["distance_from_home_km"].max() <= 20_000
    assert cols["hour_of_day"].min() >= 0 and cols["hour_of_day"].max() <= 23
    for name in ("txn_count_1h", "txn_count_24h", "card_age_days", "failed_logins_24h"):
        assert cols[name].min() >= 0
    assert (cols["txn_count_24h"] >= cols["txn_count_1h"]).all()
    trust = cols["device_trust_score"]
    assert np.nanmin(trust) >= 0 and np.nanmax(trust) <= 1


def test_fraud_rate_and_labels_follow_the_features():
    cols = synth.generate_columns(100_000, seed=4)
    y = cols[synth.LABEL].astype(bool)
    assert 0.03 <= y.mean() <= 0.05
    # The hidden rule makes risky merchants and failed logins more often fraud.
    assert cols["merchant_risk"][y].mean() > cols["merchant_risk"][~y].mean()
    assert cols["failed_logins_24h"][y].mean() > cols["failed_logins_24h"][~y].mean()


def test_shift_moves_amount_and_distance_only():
    base = synth.generate_columns(20_000, seed=2)
    moved = synth.generate_columns(20_000, seed=2, shift=1.0)
    ratio = np.median(moved["amount"]) / np.median(base["amount"])
    assert 2.0 < ratio < 3.5  # log-mean moved by one sd (1.0): e^1 ~ 2.7
    assert np.median(moved["distance_from_home_km"]) > 2 * np.median(base["distance_from_home_km"])
    for name in ("merchant_risk", "hour_of_day", "channel", "event_id", "avg_amount_7d"):
        np.testing.assert_array_equal(moved[name], base[name])
    assert moved[synth.LABEL].mean() > base[synth.LABEL].mean()


def test_empty_and_invalid_sizes():
    records, labels = synth.generate(0)
    assert records == [] and labels.shape == (0,)
    with pytest.raises(ValueError):
        synth.generate_columns(-1)
    with pytest.raises(ValueError):
        synth.generate_columns(1, rate_per_s=0)


SPEC = ModelSpec.model_validate(
    {
        "name": "m",
        "version": "1.0.0",
        "inputs": [
            {"field": "amount"},
            {"field": "device_trust_score", "null": "impute", "impute": 0.5},
            {"field": "channel", "encoding": "onehot", "symbols": list(synth.CHANNELS)},
            {"field": "channel", "encoding": "index", "symbols": list(synth.CHANNELS)},
        ],
    }
)


def test_feature_matrix_follows_the_spec():
    cols = synth.generate_columns(1_000, seed=8)
    x = synth.feature_matrix(cols, SPEC)
    assert x.shape == (1_000, SPEC.n_features) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0], cols["amount"].astype(np.float32))
    null = np.isnan(cols["device_trust_score"])
    assert (x[null, 1] == 0.5).all()
    assert (x[:, 2:6].sum(axis=1) == 1).all()
    np.testing.assert_array_equal(x[:, 2:6].argmax(axis=1), x[:, 6])


def test_feature_matrix_rejects_nulls_and_unknown_fields():
    cols = synth.generate_columns(1_000, seed=8)
    strict = ModelSpec.model_validate(
        {"name": "m", "version": "1.0.0", "inputs": [{"field": "device_trust_score"}]}
    )
    with pytest.raises(ModelError, match="nulls"):
        synth.feature_matrix(cols, strict)
    unknown = ModelSpec.model_validate(
        {"name": "m", "version": "1.0.0", "inputs": [{"field": "nope"}]}
    )
    with pytest.raises(ModelError, match="nope"):
        synth.feature_matrix(cols, unknown)
