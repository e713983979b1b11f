"""Avro container files read block by block (streamproc.codecs.container, the ``score --file``
reader) against fastavro record by record: the same framed payloads, keys, offsets, and the
same decoded batch; corrupt blocks end in dead letters with their reasons."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import numpy as np
import pytest

from streamproc import schemas, synth
from streamproc.backends.onnx import DEMO_MODEL
from streamproc.codecs import container
from streamproc.codecs.decoder import BatchDecoder
from streamproc.codecs.encoder import EncodedRecords
from streamproc.codecs.source import DictSchemaSource
from streamproc.codecs.wire import frame
from streamproc.models.spec import load_model_spec
from streamproc.pipeline.app import reader_schema
from streamproc.pipeline.batchscore import AvroContainerWriter, _block_batches, _walk_program
from streamproc.types import JoinedKeys, ReasonCode

SID = 7
PARSED = schemas.parsed("Transaction")


def _bodies(records: list[dict]) -> list[bytes]:
    out = []
    for r in records:
        b = io.BytesIO()
        fastavro.schemaless_writer(b, PARSED, r)
        out.append(b.getvalue())
    return out


def _read(data: bytes, key_field: str | None = "account_id", start=0, end=10**9, size=512):
    f = io.BytesIO(data)
    head = container.read_header(f)
    prog = _walk_program(head.schema, key_field)
    assert prog is not None
    return list(_block_batches(f, head, prog, SID, "f", 3, start, end, size, key_field is not None))


@pytest.fixture(scope="module")
def decoder() -> BatchDecoder:
    spec = load_model_spec(DEMO_MODEL)
    return BatchDecoder(spec, reader_schema(spec), DictSchemaSource({SID: PARSED}))


@pytest.mark.parametrize("codec", ["null", "deflate", "snappy", "bzip2", "xz"])
def test_blocks_give_the_records_fastavro_gives(codec):
    records, _ = synth.generate(3000, seed=4)
    f = io.BytesIO()
    fastavro.writer(f, PARSED, records, codec=codec, sync_interval=4000)  # many small blocks
    assert container.count_records(io.BytesIO(f.getvalue())) == 3000
    batches = _read(f.getvalue())
    assert [len(b) for b in batches] == [512] * 5 + [440]  # exact sizes across blocks
    values = [v for b in batches for v in b.values]
    assert values == [frame(SID, body) for body in _bodies(records)]
    keys = [k for b in batches for k in b.keys]
    assert keys == [r["account_id"].encode() for r in records]
    assert all(isinstance(b.keys, JoinedKeys) for b in batches)
    assert np.concatenate([b.offsets for b in batches]).tolist() == list(range(3000))
    assert {int(p) for b in batches for p in b.partitions} == {3}


def test_a_range_starts_and_ends_inside_blocks():
    records, _ = synth.generate(1000, seed=5)
    f = io.BytesIO()
    fastavro.writer(f, PARSED, records, sync_interval=3000)
    batches = _read(f.getvalue(), key_field=None, start=123, end=777, size=100)
    assert np.concatenate([b.offsets for b in batches]).tolist() == list(range(123, 777))
    values = [v for b in batches for v in b.values]
    assert values == [frame(SID, body) for body in _bodies(records[123:777])]
    assert all(k is None for b in batches for k in b.keys)


def test_decoding_in_place_equals_decoding_the_bytes(decoder):
    records, _ = synth.generate(2000, seed=6)
    records[10] = {**records[10], "amount": float("nan")}
    records[11] = {**records[11], "amount": -3.0}
    f = io.BytesIO()
    fastavro.writer(f, PARSED, records, codec="deflate")
    for batch in _read(f.getvalue()):
        got, want = decoder.decode(batch.values), decoder.decode(list(batch.values))
        assert (got.errors == want.errors).all()
        assert np.array_equal(got.features, want.features, equal_nan=True)
        assert list(got.event_ids) == list(want.event_ids)
        assert got.details == want.details
    assert int(decoder.decode(_read(f.getvalue())[0].values).errors[10]) == ReasonCode.NAN_FEATURE


def _container(path_or_buf, blocks: list[list[bytes]]) -> bytes:
    """A null-codec container holding ``blocks`` of raw datums as they are."""
    out = io.BytesIO()
    fastavro.writer(out, PARSED, [], codec="null")
    head = container.read_header(io.BytesIO(out.getvalue()))
    data = bytearray(out.getvalue())
    for blk in blocks:
        body = b"".join(blk)
        data += _zz(len(blk)) + _zz(len(body)) + body + head.sync
    return bytes(data)


def _zz(n: int) -> bytes:
    z, out = (n << 1) ^ (n >> 63), bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    return bytes([*out, z])


def test_malformed_records_become_dead_letters_with_their_reasons(decoder):
    records, _ = synth.generate(300, seed=7)
    bodies = _bodies(records)
    bad_utf8 = bytearray(bodies[5])
    bad_utf8[2] = 0xFF  # inside event_id: the record's bounds are intact
    bodies[5] = bytes(bad_utf8)
    second = list(bodies[100:200])
    second[50] = b"\x05"  # a negative string length: the rest of the block is lost
    third = list(bodies[200:300])
    third[-1] = third[-1][:-3]  # the block ends inside its last record
    data = _container(None, [bodies[:100], second, third])
    batches = _read(data, size=128)
    assert sum(len(b) for b in batches) == 300
    errors: dict[int, tuple[int, str]] = {}
    for b in batches:
        dec = decoder.decode(b.values)
        for i in np.flatnonzero(dec.errors):
            errors[int(b.offsets[i])] = (int(dec.errors[i]), dec.details[i])
    assert errors[5] == (ReasonCode.CORRUPT, "string is not UTF-8 (byte 6, reading str)")
    assert errors[150][0] == ReasonCode.CORRUPT and "negative length" in errors[150][1]
    assert all(errors[i][0] == ReasonCode.TRUNCATED for i in range(151, 200))
    assert errors[299][0] == ReasonCode.TRUNCATED
    assert set(errors) == {5, *range(150, 200), 299}  # the other blocks' records are whole


def test_a_file_that_is_not_a_container_is_refused():
    with pytest.raises(container.ContainerError):
        container.read_header(io.BytesIO(b"PAR1 not avro"))
    records, _ = synth.generate(50, seed=8)
    f = io.BytesIO()
    fastavro.writer(f, PARSED, records)
    cut = f.getvalue()[:-20]  # the last block's sync marker is cut
    with pytest.raises(container.ContainerError):
        _read(cut)


@pytest.mark.parametrize("codec", ["null", "deflate", "snappy"])
def test_the_part_writer_writes_what_fastavro_reads(tmp_path: Path, codec: str):
    records, _ = synth.generate(30, seed=9)
    framed = [frame(2, b) for b in _bodies(records)]
    path = tmp_path / "p.avro"
    w = AvroContainerWriter(path, json.dumps(PARSED), codec)
    w.write(framed[:10])  # a list of bytes
    buf = np.frombuffer(b"".join(framed[10:]), np.uint8)
    ends = np.cumsum([len(v) for v in framed[10:]])
    w.write(EncodedRecords(framed[10:], buf, ends))  # as the encoder returns them
    w.close()
    with path.open("rb") as f:
        reader = fastavro.reader(f)
        assert reader.codec == codec
        got = list(reader)
    assert [r["event_id"] for r in got] == [r["event_id"] for r in records]


RICH = {
    "type": "record", "name": "R", "fields": [
        {"name": "id", "type": "string"},
        {"name": "meta", "type": {"type": "record", "name": "M", "fields": [
            {"name": "flag", "type": "boolean"},
            {"name": "acct", "type": ["null", "string"]},
            {"name": "h", "type": {"type": "fixed", "name": "H", "size": 3}}]}},
        {"name": "tags", "type": {"type": "array", "items": {"type": "record", "name": "T",
            "fields": [{"name": "k", "type": "bytes"}, {"name": "w", "type": "float"}]}}},
        {"name": "counts", "type": {"type": "map", "values": "long"}},
        {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["A", "B", "C"]}},
        {"name": "alt", "type": ["null", "double", "M"]},
    ],
}  # fmt: skip


def _rich(i: int) -> dict:
    meta = {"flag": i % 2 == 0, "acct": None if i % 5 == 0 else f"acct-{i}", "h": b"abc"}
    return {
        "id": f"e{i}", "meta": meta,
        "tags": [{"k": bytes([i % 256]) * (i % 4), "w": 0.5 * j} for j in range(i % 3)],
        # -64 is the varint 0x7f; the others several bytes, negative, large
        "counts": {"neg": -64, "big": -(2**40) - i, **{f"c{j}": j * i for j in range(i % 4)}},
        "kind": "ABC"[i % 3], "alt": [None, 1.5 * i, meta][i % 3],
    }  # fmt: skip


def test_the_specialised_walk_is_the_interpreted_walk():
    records = [_rich(i) for i in range(500)]
    parsed = fastavro.parse_schema(RICH)
    f = io.BytesIO()
    fastavro.writer(f, parsed, records, codec="null")
    f.seek(0)
    head = container.read_header(f)
    data = b"".join(d for _, d in container.read_blocks(f, head))
    data_bad = data[:-2]  # the last record cut short
    for key in ("meta.acct", "id", None):
        walker = _walk_program(head.schema, key)
        assert walker is not None and walker.fn is not None  # compiled, not interpreted
        for blob in (data, data_bad):
            interpreted = container.Walker(walker.program)
            a = container.split_block(blob, 500, walker, b"\0\0\0\0\1")
            b = container.split_block(blob, 500, interpreted, b"\0\0\0\0\1")
            assert (a.walked, a.ok) == (b.walked, b.ok)
            assert (a.values.starts == b.values.starts).all()
            assert (a.values.ends == b.values.ends).all()
            assert container.keys(blob, a.key_off, a.key_len) == container.keys(
                blob, b.key_off, b.key_len
            )
        whole = container.split_block(data, 500, walker, b"\0\0\0\0\1")
        assert whole.ok and list(whole.values) == [
            b"\0\0\0\0\1" + body for body in (_encode(parsed, r) for r in records)
        ]
        if key == "meta.acct":
            keys = container.keys(data, whole.key_off, whole.key_len)
            assert keys == [None if r["meta"]["acct"] is None else r["meta"]["acct"].encode()
                            for r in records]  # fmt: skip


def _encode(parsed, record) -> bytes:
    b = io.BytesIO()
    fastavro.schemaless_writer(b, parsed, record)
    return b.getvalue()
