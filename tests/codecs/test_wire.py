from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.codecs.wire import frame, frame_many, read_headers, unframe
from streamproc.errors import CodecError
from streamproc.types import ReasonCode as R


@settings(max_examples=200)
@given(st.integers(-(2**31), 2**31 - 1), st.binary(max_size=64))
def test_frame_roundtrip(schema_id, body):
    p = frame(schema_id, body)
    assert p[0] == 0 and len(p) == len(body) + 5
    assert unframe(p) == (schema_id, body)


def test_frame_is_big_endian():
    assert frame(0x01020304, b"") == b"\x00\x01\x02\x03\x04"


@pytest.mark.parametrize(
    "bad,code",
    [(b"", R.TRUNCATED), (b"\x00\x01", R.TRUNCATED), (b"\x01\x00\x00\x00\x01", R.BAD_MAGIC)],
)
def test_unframe_rejects(bad, code):
    with pytest.raises(CodecError) as info:
        unframe(bad)
    assert info.value.reason == code.name


def test_read_headers_order_of_checks():
    ids, codes = read_headers(
        [frame(3, b"x"), None, b"\x01" * 10, b"\x00\x00", b"\x00" * 11, b""], max_message_bytes=10
    )
    assert ids.tolist() == [3, -1, -1, -1, -1, -1]
    assert codes.tolist() == [0, R.NULL_VALUE, R.BAD_MAGIC, R.TRUNCATED, R.OVERSIZE, R.TRUNCATED]


def test_frame_many():
    assert frame_many(2, [b"a", b""]) == [frame(2, b"a"), frame(2, b"")]
