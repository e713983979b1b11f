"""Contract of BatchDecoder: one row per payload, reason codes in their fixed order."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pytest

from streamproc.codecs.decoder import BatchDecoder
from streamproc.codecs.source import DictSchemaSource
from streamproc.codecs.wire import frame
from streamproc.errors import ModelError, RegistryUnavailableError
from streamproc.models.spec import ModelSpec
from streamproc.telemetry.prometheus import PrometheusSensor
from streamproc.types import JoinedIds
from streamproc.types import ReasonCode as R
from tests.codecs.builders import (
    body,
    evolve,
    expected_row,
    fraud_spec,
    payload,
    transaction,
)
from tests.codecs.conftest import TXN_ID, Mode


def make(
    spec: ModelSpec, schema: dict[str, Any], source: DictSchemaSource, mode: Mode, **kw: Any
) -> BatchDecoder:
    return BatchDecoder(spec, schema, source, **mode, **kw)


def one(dec: BatchDecoder, p: bytes | None) -> tuple[R, str]:
    out = dec.decode([p])
    return R(int(out.errors[0])), out.details[0]


def test_valid_batch_decodes_in_order(spec, txn_schema, source, mode):
    dec = make(spec, txn_schema, source, mode)
    recs = [transaction(i) for i in range(40)]
    out = dec.decode([payload(TXN_ID, txn_schema, r) for r in recs])
    assert len(out) == 40
    assert out.features.dtype == np.float32 and out.features.shape == (40, spec.n_features)
    assert out.errors.tolist() == [0] * 40
    assert out.details == [""] * 40
    assert out.event_ids == [r["event_id"] for r in recs]
    # the compiled paths hand the ids on as one buffer, as the kernel gathered them
    assert isinstance(out.event_ids, JoinedIds) == mode.get("compiled", True)
    assert out.event_time_ms.tolist() == [r["event_time"] for r in recs]
    assert out.schema_ids.tolist() == [TXN_ID] * 40
    want = np.array([expected_row(r) for r in recs], dtype=np.float32)
    np.testing.assert_array_equal(out.features, want)


def test_a_sample_of_the_ids_is_read_without_splitting_the_rest(spec, txn_schema, source, mode):
    dec = make(spec, txn_schema, source, mode)
    recs = [transaction(i) for i in range(40)]
    recs[7]["event_id"] = ""  # an empty id keeps its place
    recs[8]["event_id"] = "évènement"  # and a multi-byte one its bytes
    out = dec.decode([payload(TXN_ID, txn_schema, r) for r in recs])
    ids = out.event_ids
    rows = [39, 0, 7, 8, 9, 7]
    if isinstance(ids, JoinedIds):
        assert ids.starts is not None  # the decoder said where each id begins
        assert ids.take(rows) == [recs[i]["event_id"] for i in rows]
        assert ids._items is None  # no split of the batch on the way
    assert list(ids) == [r["event_id"] for r in recs]


def test_empty_batch(spec, txn_schema, source, mode):
    out = make(spec, txn_schema, source, mode).decode([])
    assert len(out) == 0 and out.features.shape == (0, spec.n_features)


def test_framing_codes_in_order(spec, txn_schema, source, mode):
    good = payload(TXN_ID, txn_schema, transaction(1))
    dec = make(spec, txn_schema, source, mode, max_message_bytes=len(good))
    cases: list[tuple[bytes | None, R]] = [
        (None, R.NULL_VALUE),
        (b"\x07" * (len(good) + 1), R.OVERSIZE),  # oversize is checked before the magic byte
        (b"", R.TRUNCATED),
        (b"\x01" + good[1:], R.BAD_MAGIC),
        (b"\x05", R.BAD_MAGIC),
        (b"\x00\x00\x00", R.TRUNCATED),
        (frame(TXN_ID, b""), R.TRUNCATED),
    ]
    out = dec.decode([p for p, _ in cases])
    assert [R(int(c)) for c in out.errors] == [c for _, c in cases]
    assert all(out.details[i] for i in range(len(cases)))
    assert out.schema_ids.tolist()[:6] == [-1] * 6
    assert out.schema_ids[6] == TXN_ID
    assert out.event_ids == [""] * len(cases)


def test_body_codes(spec, txn_schema, source, mode):
    dec = make(spec, txn_schema, source, mode)
    good = payload(TXN_ID, txn_schema, transaction(2))
    b = body(txn_schema, transaction(2))
    bad_utf8 = frame(TXN_ID, b"\x06\xff\xfe\xfd" + b[1 + len("ev-00000002") :])
    last = len(good) - 1  # the channel enum index is the last byte
    cases: list[tuple[bytes, R]] = [
        (good[:-1], R.TRUNCATED),
        (good[:20], R.TRUNCATED),
        (good + b"\x00", R.TRAILING_BYTES),
        (good[:last] + b"\x08", R.CORRUPT),  # enum index 4 of 4 symbols
        (bad_utf8, R.CORRUPT),
        (frame(TXN_ID, b"\x01" + b[1:]), R.CORRUPT),  # negative string length
    ]
    out = dec.decode([p for p, _ in cases])
    assert [R(int(c)).name for c in out.errors] == [c.name for _, c in cases]
    assert out.event_ids == [""] * len(cases)


def test_negative_enum_index_wraps_like_fastavro(spec, txn_schema, source, mode):
    # fastavro indexes the symbol list with Python semantics (-1 is the last symbol); the
    # compiled decoder does the same so both paths agree event by event.
    dec = make(spec, txn_schema, source, mode)
    good = payload(TXN_ID, txn_schema, transaction(0))
    out = dec.decode([good[:-1] + b"\x01", good[:-1] + b"\x09"])  # index -1, then -5
    assert [R(int(c)).name for c in out.errors] == ["OK", "CORRUPT"]
    assert out.features[0, -4:].tolist() == [0.0, 0.0, 0.0, 1.0]  # MOTO


def test_unknown_schema_is_cached_negatively(spec, txn_schema, source, mode):
    dec = make(spec, txn_schema, source, mode)
    p = payload(77, txn_schema, transaction(0))
    out = dec.decode([p, p])
    assert out.errors.tolist() == [R.UNKNOWN_SCHEMA] * 2
    assert out.schema_ids.tolist() == [77, 77]
    assert "77" in out.details[0]
    n = source.lookups
    dec.decode([p])
    assert source.lookups == n


def test_registry_outage_propagates_and_is_not_cached(spec, txn_schema, source, mode):
    dec = make(spec, txn_schema, source, mode)
    p = payload(TXN_ID, txn_schema, transaction(0))
    source.unavailable = True
    with pytest.raises(RegistryUnavailableError):
        dec.decode([p])
    source.unavailable = False
    assert dec.decode([p]).errors.tolist() == [0]


def test_an_outage_names_the_waiting_ids_and_rows_and_cached_ids_still_decode(
    spec, txn_schema, source, mode
):
    # The runner goes on with the events of cached writer schemas: the error must say which
    # rows wait, and a batch of cached ids must not ask the registry at all.
    dec = make(spec, txn_schema, source, mode)
    a = payload(TXN_ID, txn_schema, transaction(0))
    dec.decode([a])  # schema A is cached now
    new = evolve(txn_schema, note={"name": "note", "type": ["null", "string"], "default": None})
    source.register(7, new)
    source.register(9, new)
    b, c = payload(7, new, transaction(1)), payload(9, new, transaction(2))
    source.unavailable = True
    with pytest.raises(RegistryUnavailableError) as err:
        dec.decode([a, b, None, a, c, b])
    assert err.value.schema_ids == (7, 9)
    assert err.value.rows == [1, 4, 5]
    n = source.lookups
    assert dec.decode([a, None, a]).errors.tolist() == [0, R.NULL_VALUE, 0]
    assert source.lookups == n
    source.unavailable = False
    assert dec.decode([a, b, c]).errors.tolist() == [0, 0, 0]


def test_registry_outage_not_hit_for_framing_errors(spec, txn_schema, source, mode):
    dec = make(spec, txn_schema, source, mode)
    source.unavailable = True
    out = dec.decode([None, b"\x01\x02"])
    assert out.errors.tolist() == [R.NULL_VALUE, R.BAD_MAGIC]


def test_writer_schema_looked_up_once(spec, txn_schema, source, mode):
    dec = make(spec, txn_schema, source, mode)
    ps = [payload(TXN_ID, txn_schema, transaction(i)) for i in range(5)]
    dec.decode(ps)
    dec.decode(ps)
    assert source.lookups == 1


# -- schema evolution ---------------------------------------------------------------------


def _decode_with_writer(spec, txn_schema, writer, rec, mode) -> tuple[R, str, Any]:
    src = DictSchemaSource({5: writer})
    dec = BatchDecoder(spec, txn_schema, src, **mode)
    out = dec.decode([payload(5, writer, rec)])
    return R(int(out.errors[0])), out.details[0], out


def test_added_field_with_default_is_accepted(spec, txn_schema, mode):
    writer = evolve(txn_schema, loyalty={"name": "loyalty", "type": "string", "default": ""})
    rec = transaction(3, loyalty="gold")
    code, _, out = _decode_with_writer(spec, txn_schema, writer, rec, mode)
    assert code == R.OK
    np.testing.assert_array_equal(out.features[0], np.float32(expected_row(rec)))


@pytest.mark.parametrize(
    "field,wtype",
    [("amount", "int"), ("amount", "long"), ("amount", "float"), ("distance_from_home_km", "long")],
)
def test_numeric_promotions_are_accepted(spec, txn_schema, mode, field, wtype):
    writer = evolve(txn_schema, **{field: {"name": field, "type": wtype}})
    value: Any = 7 if wtype in ("int", "long") else 7.5
    rec = transaction(4, **{field: value})
    code, _, out = _decode_with_writer(spec, txn_schema, writer, rec, mode)
    assert code == R.OK
    np.testing.assert_array_equal(out.features[0], np.float32(expected_row(rec)))


def test_reader_promotes_int_field_to_long_reader(txn_schema, mode):
    reader = evolve(txn_schema, txn_count_1h={"name": "txn_count_1h", "type": "long"})
    spec = fraud_spec()
    code, _, out = _decode_with_writer(spec, reader, txn_schema, transaction(9), mode)
    assert code == R.OK
    assert out.features[0, 4] == transaction(9)["txn_count_1h"]


def test_removed_unused_field_is_accepted(spec, txn_schema, mode):
    writer = evolve(txn_schema, account_id=None)
    rec = transaction(5)
    del rec["account_id"]
    code, _, out = _decode_with_writer(spec, txn_schema, writer, rec, mode)
    assert code == R.OK
    assert out.event_ids == ["ev-00000005"]


def test_removed_used_field_is_incompatible(spec, txn_schema, mode):
    writer = evolve(txn_schema, amount=None)
    rec = transaction(5)
    del rec["amount"]
    code, detail, out = _decode_with_writer(spec, txn_schema, writer, rec, mode)
    assert code == R.INCOMPATIBLE_SCHEMA
    assert "amount" in detail and "default" in detail
    assert out.schema_ids.tolist() == [5]


def test_changed_type_is_incompatible(spec, txn_schema, mode):
    writer = evolve(txn_schema, amount={"name": "amount", "type": "string"})
    code, detail, _ = _decode_with_writer(
        spec, txn_schema, writer, transaction(1, amount="12"), mode
    )
    assert code == R.INCOMPATIBLE_SCHEMA
    assert "amount" in detail and "string" in detail


def test_renamed_record_is_incompatible(spec, txn_schema, mode):
    writer = dict(txn_schema, name="Payment")
    code, detail, _ = _decode_with_writer(spec, txn_schema, writer, transaction(1), mode)
    assert code == R.INCOMPATIBLE_SCHEMA
    assert "Payment" in detail


def test_invalid_writer_schema_is_incompatible(spec, txn_schema, mode):
    src = DictSchemaSource({5: {"type": "record", "name": "T", "fields": [{"name": "x"}]}})
    dec = BatchDecoder(spec, txn_schema, src, **mode)
    assert one(dec, frame(5, b"\x00"))[0] == R.INCOMPATIBLE_SCHEMA


def test_nullable_writer_union_null_branch_per_event(spec, txn_schema, mode):
    # The writer made amount nullable; the reader's amount is not: a null amount cannot be
    # read (per event), a present one can.
    writer = evolve(txn_schema, amount={"name": "amount", "type": ["null", "double"]})
    src = DictSchemaSource({5: writer})
    dec = BatchDecoder(spec, txn_schema, src, **mode)
    out = dec.decode(
        [
            payload(5, writer, transaction(1, amount=None)),
            payload(5, writer, transaction(2, amount=3.0)),
        ]
    )
    assert out.errors.tolist() == [R.INCOMPATIBLE_SCHEMA, R.OK]
    assert out.features[1, 0] == 3.0


def test_new_enum_symbol_is_unknown_enum_per_event(spec, txn_schema, mode):
    channel = {"type": "enum", "name": "Channel", "symbols": ["POS", "ECOM", "ATM", "MOTO", "P2P"]}
    writer = evolve(txn_schema, channel={"name": "channel", "type": channel})
    src = DictSchemaSource({5: writer})
    dec = BatchDecoder(spec, txn_schema, src, **mode)
    out = dec.decode(
        [
            payload(5, writer, transaction(1, channel="P2P")),
            payload(5, writer, transaction(2, channel="ATM")),
        ]
    )
    assert out.errors.tolist() == [R.UNKNOWN_ENUM, R.OK]
    assert "P2P" in out.details[0]
    assert out.features[1, -4:].tolist() == [0.0, 0.0, 1.0, 0.0]


# -- feature checks -----------------------------------------------------------------------


def test_feature_codes(txn_schema, source, mode):
    spec = fraud_spec(
        inputs=[
            {"field": "amount", "min": 0, "max": 1e6},
            {"field": "merchant_risk", "allow_nan": True},
            {"field": "device_trust_score"},  # null -> reject
            {"field": "channel", "encoding": "onehot", "symbols": ["POS", "ECOM"]},
        ]
    )
    dec = make(spec, txn_schema, source, mode)
    recs = [
        (transaction(1, device_trust_score=0.5), R.OK),
        (transaction(1, device_trust_score=None), R.MISSING_FEATURE),
        (transaction(1, amount=math.nan, device_trust_score=0.5), R.NAN_FEATURE),
        (transaction(1, amount=math.inf, device_trust_score=0.5), R.NAN_FEATURE),
        (transaction(1, amount=-0.01, device_trust_score=0.5), R.OUT_OF_RANGE),
        (transaction(1, amount=2e6, device_trust_score=0.5), R.OUT_OF_RANGE),
        (transaction(1, merchant_risk=math.nan, device_trust_score=0.5), R.OK),
        (transaction(2, device_trust_score=0.5), R.UNKNOWN_ENUM),  # ATM not in the spec
        # the first failing feature in spec order decides
        (transaction(2, amount=-1.0, device_trust_score=None), R.OUT_OF_RANGE),
    ]
    out = dec.decode([payload(TXN_ID, txn_schema, r) for r, _ in recs])
    assert [R(int(c)).name for c in out.errors] == [c.name for _, c in recs]
    # decoded events keep their id even when a feature is rejected
    assert out.event_ids == [r["event_id"] for r, _ in recs]
    assert math.isnan(out.features[6, 1])
    assert "device_trust_score" in out.details[1]


def test_float32_overflow_is_out_of_range(txn_schema, source, mode):
    spec = fraud_spec(inputs=[{"field": "amount"}])
    dec = make(spec, txn_schema, source, mode)
    out = dec.decode(
        [
            payload(TXN_ID, txn_schema, transaction(1, amount=1e39)),
            payload(TXN_ID, txn_schema, transaction(1, amount=-3.4e38)),
        ]
    )
    assert out.errors.tolist() == [R.OUT_OF_RANGE, R.OK]


def test_null_policies(txn_schema, source, mode):
    spec = fraud_spec(
        inputs=[
            {"field": "device_trust_score", "null": "nan"},
            {"field": "device_trust_score", "null": "impute", "impute": -2},
        ]
    )
    dec = make(spec, txn_schema, source, mode)
    out = dec.decode([payload(TXN_ID, txn_schema, transaction(0, device_trust_score=None))])
    assert out.errors.tolist() == [0]
    assert math.isnan(out.features[0, 0]) and out.features[0, 1] == -2.0


def test_index_encoding_and_boolean(txn_schema, source, mode):
    spec = fraud_spec(
        inputs=[
            {"field": "channel", "encoding": "index", "symbols": ["MOTO", "ATM", "ECOM", "POS"]},
            {"field": "is_international"},
        ]
    )
    dec = make(spec, txn_schema, source, mode)
    out = dec.decode([payload(TXN_ID, txn_schema, transaction(i)) for i in range(5)])
    assert out.features[:, 0].tolist() == [3.0, 2.0, 1.0, 0.0, 3.0]
    assert out.features[:, 1].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


NESTED = {
    "type": "record",
    "name": "Event",
    "namespace": "t",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {
            "name": "device",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Device",
                    "fields": [
                        {"name": "score", "type": "float"},
                        {"name": "os", "type": "string"},
                    ],
                },
            ],
            "default": None,
        },
        {"name": "embedding", "type": {"type": "array", "items": "float"}},
        {"name": "kind", "type": "string"},
        {"name": "hash", "type": {"type": "fixed", "name": "H", "size": 4}},
        {"name": "tags", "type": {"type": "map", "values": "long"}},
    ],
}


def test_nested_records_arrays_strings(mode):
    spec = ModelSpec.model_validate(
        {
            "name": "n",
            "version": "1.0.0",
            "inputs": [
                {"field": "device.score", "null": "impute", "impute": -1},
                {"field": "embedding", "length": 3, "min": -1, "max": 1},
                {"field": "kind", "encoding": "onehot", "symbols": ["a", "b"]},
            ],
        }
    )
    src = DictSchemaSource({3: NESTED})
    dec = BatchDecoder(spec, NESTED, src, **mode)

    def rec(**kw: Any) -> dict[str, Any]:
        base = {
            "event_id": "x",
            "event_time": 9,
            "device": {"score": 0.25, "os": "ios"},
            "embedding": [0.5, -0.5, 1.0],
            "kind": "b",
            "hash": b"abcd",
            "tags": {"k": 1},
        }
        base.update(kw)
        return base

    recs = [
        (rec(), R.OK, [0.25, 0.5, -0.5, 1.0, 0.0, 1.0]),
        (rec(device=None), R.OK, [-1.0, 0.5, -0.5, 1.0, 0.0, 1.0]),
        (rec(embedding=[0.5, 0.5]), R.MISSING_FEATURE, None),
        (rec(embedding=[0.5, 0.5, 2.0]), R.OUT_OF_RANGE, None),
        (rec(kind="c"), R.UNKNOWN_ENUM, None),
    ]
    out = dec.decode([payload(3, NESTED, r) for r, _, _ in recs])
    assert [R(int(c)).name for c in out.errors] == [c.name for _, c, _ in recs]
    for i, (_, _, row) in enumerate(recs):
        if row is not None:
            assert out.features[i].tolist() == row
    assert out.event_time_ms.tolist() == [9] * 5


def test_spec_not_matching_reader_raises(txn_schema, source):
    for bad in (
        [{"field": "nope"}],
        [{"field": "event_id"}],  # a string as a value
        [{"field": "amount", "encoding": "onehot", "symbols": ["a"]}],
        [{"field": "amount", "length": 2}],
    ):
        with pytest.raises(ModelError):
            BatchDecoder(fraud_spec(inputs=bad), txn_schema, source)


def test_mixed_schema_ids_in_one_batch(spec, txn_schema, mode):
    writer = evolve(txn_schema, amount={"name": "amount", "type": "int"})
    src = DictSchemaSource({1: txn_schema, 2: writer})
    dec = BatchDecoder(spec, txn_schema, src, **mode)
    ps = [
        payload(1, txn_schema, transaction(0)),
        payload(2, writer, transaction(1, amount=3)),
        payload(1, txn_schema, transaction(2)),
        payload(9, txn_schema, transaction(3)),
    ]
    out = dec.decode(ps)
    assert out.errors.tolist() == [0, 0, 0, R.UNKNOWN_SCHEMA]
    assert out.schema_ids.tolist() == [1, 2, 1, 9]
    assert out.features[1, 0] == 3.0
    assert out.event_ids[:3] == ["ev-00000000", "ev-00000001", "ev-00000002"]


def test_timestamp_field_is_raw_long(spec, txn_schema, source, mode):
    dec = make(spec, txn_schema, source, mode)
    t = 1_234_567_890_123_456
    out = dec.decode([payload(TXN_ID, txn_schema, transaction(0, event_time=t))])
    assert out.event_time_ms.tolist() == [t]


def test_arbitrary_bytes_never_raise(spec, txn_schema, source, mode):
    dec = make(spec, txn_schema, source, mode)
    rng = np.random.default_rng(1)
    good = payload(TXN_ID, txn_schema, transaction(7))
    ps: list[bytes | None] = []
    for _ in range(300):
        b = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(5, len(b)))] = int(rng.integers(0, 256))
        ps.append(bytes(b))
    ps += [frame(TXN_ID, rng.bytes(int(n))) for n in rng.integers(0, 80, 100)]
    ps += [struct.pack(">bi", 0, TXN_ID) + b"\xff" * 30]
    out = dec.decode(ps)
    assert len(out) == len(ps)
    assert set(out.errors.tolist()) <= {int(c) for c in R}


LINKED = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "event_time", "type": "long"},
        {"name": "amount", "type": "double"},
        {"name": "chain", "type": ["null", {"type": "record", "name": "Link", "fields": [
            {"name": "v", "type": "int"}, {"name": "next", "type": ["null", "Link"]}]}]},
    ],
}  # fmt: skip


def test_recursive_writer_falls_back_to_fastavro(caplog):
    spec = ModelSpec.model_validate(
        {"name": "n", "version": "1.0.0", "inputs": [{"field": "amount", "min": 0}]}
    )
    src = DictSchemaSource({4: LINKED})
    sensor = PrometheusSensor(pipeline="p")
    comp = BatchDecoder(spec, LINKED, src, compiled=True, sensor=sensor)
    ref = BatchDecoder(spec, LINKED, src, compiled=False)
    deep: Any = None
    for i in range(50):
        deep = {"v": i, "next": deep}
    recs = [
        {"event_id": "a", "event_time": 1, "amount": 2.0, "chain": deep},
        {"event_id": "b", "event_time": 2, "amount": -1.0, "chain": None},
    ]
    ps = [payload(4, LINKED, r) for r in recs]
    # nesting deeper than Python's stack: a per-event error, not a crash
    ps.append(frame(4, body(LINKED, recs[1])[:-1] + b"\x02\x00" * 5000 + b"\x00"))
    a, b = comp.decode(ps), ref.decode(ps)
    assert comp.fallbacks == 1 and ref.fallbacks == 0
    assert "writer schema 4 decoded by fastavro: recursive schema" in caplog.text
    assert (
        sensor.registry.get_sample_value("streamproc_decoder_fallbacks_total", {"pipeline": "p"})
        == 1
    )
    assert a.errors.tolist() == b.errors.tolist() == [R.OK, R.OUT_OF_RANGE, R.CORRUPT]
    assert a.features[0].tolist() == [2.0]
    assert a.event_ids[:2] == ["a", "b"]


def test_reader_defaults_fill_id_time_and_features(mode):
    writer = {"type": "record", "name": "E", "fields": [{"name": "x", "type": "double"}]}
    reader = {
        "type": "record",
        "name": "E",
        "fields": [
            {"name": "x", "type": "double"},
            {"name": "event_id", "type": "string", "default": "no-id"},
            {"name": "event_time", "type": "long", "default": 42},
            {"name": "w", "type": "int", "default": 7},
            {"name": "c", "type": {"type": "enum", "name": "C", "symbols": ["P", "Q"]},
             "default": "Q"},
            {"name": "v", "type": {"type": "array", "items": "float"}, "default": [1.0, 2.0]},
            {"name": "s", "type": "string", "default": "b"},
        ],
    }  # fmt: skip
    spec = ModelSpec.model_validate(
        {
            "name": "d",
            "version": "1.0.0",
            "inputs": [
                {"field": "x"},
                {"field": "w"},
                {"field": "c", "encoding": "index", "symbols": ["P", "Q"]},
                {"field": "v", "length": 2},
                {"field": "s", "encoding": "onehot", "symbols": ["a", "b"]},
                {"field": "event_time"},
            ],
        }
    )
    dec = BatchDecoder(spec, reader, DictSchemaSource({2: writer}), **mode)
    out = dec.decode([payload(2, writer, {"x": 0.5})])
    assert out.errors.tolist() == [0]
    assert out.event_ids == ["no-id"] and out.event_time_ms.tolist() == [42]
    assert out.features[0].tolist() == [0.5, 7.0, 1.0, 1.0, 2.0, 0.0, 1.0, 42.0]


def test_kernels_compile_once(spec, txn_schema, source):
    from streamproc.codecs import encode_kernel, kernel
    from streamproc.codecs.encoder import PredictionEncoder

    dec = BatchDecoder(spec, txn_schema, source)
    good = payload(TXN_ID, txn_schema, transaction(1))
    dec.decode([good, None, b"\x01" * 3, good + b"\x00", b"\x00" * (2 * 10**6)])
    dec.decode([good])
    enc = PredictionEncoder(1)
    enc.encode(["a"], [None], "m", "1.0.0", np.ones((1, 2), np.float32), 1, ["x"],
               np.zeros(1, np.int64), 5)  # fmt: skip
    for fn in (kernel.decode, kernel.read_headers, kernel.gather_ids,
               encode_kernel.encode_predictions, encode_kernel.split_ends):  # fmt: skip
        assert len(fn.signatures) == 1, fn
