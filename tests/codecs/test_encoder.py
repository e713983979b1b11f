from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.codecs import encoder
from streamproc.codecs.encoder import (
    PredictionEncoder,
    decode_prediction,
    decode_record,
    encode_record,
    split_records,
    zigzag_varint,
)
from streamproc.codecs.wire import unframe
from streamproc.types import JoinedIds


def _batch(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = rng.random((n, k), dtype=np.float32)
    ids = [f"ev-{i}-é" for i in range(n)]
    keys = [None if i % 3 == 0 else f"acct-{i}" for i in range(n)]
    labels = ["fraud" if i % 2 else "legit" for i in range(n)]
    times = np.arange(n, dtype=np.int64) * 1000 + 1_700_000_000_000
    return ids, keys, scores, labels, times


def test_prediction_fields():
    ids, keys, scores, labels, times = _batch(5, 2)
    enc = PredictionEncoder(11)
    out = enc.encode(ids, keys, "fraud", "1.2.0", scores, 1, labels, times, 1_700_000_009_000)
    assert len(out) == 5
    for i, p in enumerate(out):
        sid, _ = unframe(p)
        assert sid == 11
        rec = decode_prediction(p)
        assert rec["event_id"] == ids[i] and rec["key"] == keys[i]
        assert rec["model_name"] == "fraud" and rec["model_version"] == "1.2.0"
        assert rec["score"] == float(scores[i, 1])
        assert rec["scores"] == [float(x) for x in scores[i]]
        assert rec["label"] == labels[i]
        assert rec["event_time"] == times[i] and rec["processed_time"] == 1_700_000_009_000
        assert rec["latency_ms"] == float(1_700_000_009_000 - times[i])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 6),
    k=st.integers(0, 5),
    seed=st.integers(0, 2**16),
    t=st.integers(-(2**62), 2**62),
    key=st.one_of(st.none(), st.text(max_size=5), st.binary(max_size=5)),
)
def test_fast_equals_fastavro(n, k, seed, t, key):
    ids, _, scores, labels, _ = _batch(n, k, seed)
    keys = [key] * n
    times = np.full(n, t, dtype=np.int64)
    enc = PredictionEncoder(3)
    args = (ids, keys, "m", "0.1.0", scores, 0, labels, times, 5)
    assert enc.encode(*args) == enc.encode_reference(*args)


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(st.text(max_size=12), min_size=1, max_size=4),
    data=st.data(),
)
def test_indexed_labels_encode_like_a_list_of_labels(names, data):
    n = data.draw(st.integers(0, 8))
    choice = np.array(data.draw(st.lists(st.integers(0, len(names) - 1), min_size=n, max_size=n)),
                      dtype=np.uint8)  # fmt: skip
    ids, keys, scores, _, times = _batch(n, 2)
    indexed = encoder.IndexedLabels(names, choice)
    listed = [names[c] for c in choice.tolist()]
    assert list(indexed) == listed
    enc = PredictionEncoder(4)
    args = (ids, keys, "m", "0.1.0", scores, 1)
    out = enc.encode(*args, indexed, times, 7)
    assert (
        out == enc.encode(*args, listed, times, 7) == enc.encode_reference(*args, listed, times, 7)
    )


def test_indexed_labels_out_of_range_raise():
    ids, keys, scores, _, times = _batch(3, 2)
    bad = encoder.IndexedLabels(("a", "b"), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="label index"):
        PredictionEncoder(1).encode(ids, keys, "m", "1.0.0", scores, 1, bad, times, 0)


def test_length_mismatch_raises():
    ids, keys, scores, labels, times = _batch(3, 2)
    with pytest.raises(ValueError):
        PredictionEncoder(1).encode(ids[:2], keys, "m", "1.0.0", scores, 1, labels, times, 0)


def test_encode_record_dead_letter_roundtrip():
    rec = {
        "reason": "BAD_MAGIC",
        "reason_code": 1,
        "detail": "x",
        "source_topic": "t",
        "partition": 2,
        "offset": 9,
        "schema_id": None,
        "key": b"k",
        "value": b"\x01",
        "headers": [{"key": "h", "value": None}],
        "processor": "p",
        "time": 123,
    }
    p = encode_record("DeadLetter", 4, rec)
    assert unframe(p)[0] == 4
    assert decode_record("DeadLetter", p) == rec


def test_encode_record_metrics_snapshot():
    rec = {
        "processor": "p",
        "pipeline": "q",
        "model_name": "m",
        "model_version": "1.0.0",
        "time": 5,
        "events_in": 10,
        "events_out": 9,
        "events_rejected": {"BAD_MAGIC": 1},
        "batches": 1,
        "mean_batch_size": 10.0,
        "p50_latency_ms": 1.0,
        "p99_latency_ms": 2.0,
        "consumer_lag": 0,
        "cpu_seconds": 0.5,
        "rss_bytes": 100,
    }
    # The windowed-feature fields (appended, optional) default to null.
    added = ["feature_state_keys", "feature_state_bytes", "feature_evicted_keys",
             "feature_late_events", "feature_restore_records",
             "feature_restore_seconds"]  # fmt: skip
    want = {**rec, **dict.fromkeys(added)}
    assert decode_record("MetricsSnapshot", encode_record("MetricsSnapshot", 1, rec)) == want


@pytest.mark.parametrize("n", [0, 1, -1, 63, -64, 64, 2**31, -(2**63), 2**63 - 1])
def test_zigzag_matches_fastavro(n):
    import io

    import fastavro

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", n)
    assert zigzag_varint(n) == buf.getvalue()


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.text(max_size=6), min_size=1, max_size=5),
    k=st.integers(0, 4),
    label=st.text(max_size=4),
    key_kind=st.sampled_from(["none", "str", "bytes", "nul"]),
    outlier=st.one_of(st.none(), st.floats(allow_nan=False, width=64)),
)
def test_kernel_python_and_fastavro_agree(ids, k, label, key_kind, outlier):
    n = len(ids)
    scores = np.random.default_rng(n).random((n, k), dtype=np.float32)
    key: str | bytes | None = {"none": None, "str": "κ", "bytes": b"\xffk", "nul": "a\0b"}[key_kind]
    times = np.arange(n, dtype=np.int64) * -(2**40)
    enc = PredictionEncoder(2**31 - 1)
    args = (ids, [key] * n, "m", "1.0.0", scores, 0, [label] * n, times, 2**41)
    rows = None if outlier is None else np.linspace(outlier, outlier / 2, n)
    fast = enc.encode(*args, None, rows)
    assert fast == enc.encode_python(*args, None, rows) == enc.encode_reference(*args, None, rows)
    want = [None] * n if rows is None else rows.tolist()
    assert [decode_prediction(p)["outlier_score"] for p in fast] == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=50))
def test_split_records_gives_each_record_as_laid_end_to_end(records: list[bytes]) -> None:
    buf = np.frombuffer(b"".join(records), np.uint8)
    ends = np.cumsum([len(r) for r in records], dtype=np.int64)
    got = split_records(buf, ends)
    assert got == records
    assert all(type(r) is bytes for r in got)


def test_split_records_slices_when_marshal_reads_the_framing_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encoder, "_marshal_ok", lambda: False)
    monkeypatch.setattr(encoder.marshal, "loads", _no_marshal)
    buf = np.frombuffer(b"abcdef", np.uint8)
    assert split_records(buf, np.array([1, 1, 6], np.int64)) == [b"a", b"", b"bcdef"]


def test_the_marshal_framing_is_checked_once_against_marshal_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check = encoder._marshal_ok.__wrapped__  # the check itself, not its cached answer
    monkeypatch.setattr(encoder.marshal, "loads", lambda data: ["something else"])
    assert check() is False
    monkeypatch.undo()
    assert check() is True
    assert encoder._marshal_ok() is True
    assert encoder._marshal_ok.cache_info().currsize == 1


def _no_marshal(data: object) -> object:
    raise AssertionError("marshal.loads called")


@pytest.mark.parametrize(
    "joined", [b"ev-1\x00\x00ev-3", "é\x00ü\x00x".encode(), b"bad-\xff\x00ok\x00\xc3"]
)
def test_joined_ids_encode_like_their_strings(joined):
    # The decoder's ids as one buffer (bytes ids may be any bytes: read with replacement
    # characters, as the strings are)
    ids = JoinedIds(joined, 3)
    _, keys, scores, labels, times = _batch(3, 2)
    enc = PredictionEncoder(5)
    args = (keys, "m", "0.1.0", scores, 1, labels, times, 9)
    out = enc.encode(ids, *args)
    assert out == enc.encode(list(ids), *args) == enc.encode_reference(list(ids), *args)
    assert [decode_prediction(p)["event_id"] for p in out] == list(ids)


@pytest.mark.parametrize("k", [0, 1, 5])
def test_prediction_features_map_compiled_python_and_reference_agree(k):
    """``outputs.include_features``: the map of the model's inputs is the same bytes on the
    three paths and reads back; without it the field is null."""
    ids, keys, scores, labels, times = _batch(7, 2, seed=k)
    names = [f"col-{j}" for j in range(k - 1)] + (["é=POS"] if k else [])
    values = np.random.default_rng(k).normal(size=(7, k))
    values[0, :] = np.nan if k else values[0, :]
    feats = encoder.Features(names, values)
    enc = PredictionEncoder(3)
    args = (ids, keys, "fraud", "2.0.0", scores, 1, labels, times, 1_700_000_009_000)
    out = enc.encode(*args, feats)
    assert out == enc.encode_python(*args, feats) == enc.encode_reference(*args, feats)
    for i, p in enumerate(out):
        got = decode_prediction(p)["features"]
        assert list(got) == names
        assert np.array_equal(list(got.values()), values[i], equal_nan=True)
    assert all(decode_prediction(p)["features"] is None for p in enc.encode(*args))
    with pytest.raises(ValueError, match="features for 6 events"):
        enc.encode(*args, encoder.Features(names, values[:6]))


@pytest.mark.parametrize("with_features", [False, True])
@pytest.mark.parametrize("n", [1, 6])
def test_prediction_outlier_score_compiled_python_and_reference_agree(n, with_features):
    """``insight.outliers``: each event's outlier score follows the features map, the same
    bytes on the three paths (union branch 1, then the double); None: the field is null."""
    ids, keys, scores, labels, times = _batch(n, 2, seed=n)
    feats = (
        encoder.Features(["a", "b"], np.arange(2.0 * n).reshape(n, 2)) if with_features else None
    )
    outlier = np.random.default_rng(n).exponential(3.0, size=n)
    outlier[0] = np.inf
    enc = PredictionEncoder(8)
    args = (ids, keys, "fraud", "2.0.0", scores, 1, labels, times, 1_700_000_009_000, feats)
    out = enc.encode(*args, outlier)
    assert out == enc.encode_python(*args, outlier) == enc.encode_reference(*args, outlier)
    # The field is the record's last bytes: branch 1 and the little-endian double.
    assert [p[-9:] for p in out] == [b"\x02" + struct.pack("<d", v) for v in outlier.tolist()]
    assert [decode_prediction(p)["outlier_score"] for p in out] == outlier.tolist()
    off = enc.encode(*args)
    assert off == enc.encode_python(*args) == enc.encode_reference(*args)
    assert all(p[-1:] == b"\x00" and decode_prediction(p)["outlier_score"] is None for p in off)
    with pytest.raises(ValueError, match=f"outlier scores for {n + 1} events"):
        enc.encode(*args, np.zeros(n + 1))
