"""The Confluent wire format: magic byte ``0``, a 4-byte big-endian schema id, the Avro body.

>>> payload = frame(42, b"\\x02hi")
>>> payload
b'\\x00\\x00\\x00\\x00*\\x02hi'
>>> unframe(payload)
(42, b'\\x02hi')
>>> ids, codes = read_headers([payload, b"\\x01abcd", b"\\x00\\x00", None])
>>> ids.tolist(), codes.tolist()
([42, -1, -1, -1], [0, 1, 2, 13])
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from fastavro.read import SchemaResolutionError

from streamproc.errors import CodecError
from streamproc.types import ReasonCode

MAGIC = 0
HEADER_SIZE = 5
_HEADER = struct.Struct(">bi")


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header for ``schema_id``."""
    return _HEADER.pack(MAGIC, schema_id) + body


def header(schema_id: int) -> bytes:
    """The 5 header bytes for ``schema_id`` (to prepend to many bodies)."""
    return _HEADER.pack(MAGIC, schema_id)


def header_verdict(payload: bytes | None, max_message_bytes: int | None = None) -> ReasonCode:
    """The framing checks in their fixed order: null, oversize, magic, short header.

    >>> header_verdict(b"\\x00\\x00\\x00\\x00\\x01"), header_verdict(b"\\x07")
    (<ReasonCode.OK: 0>, <ReasonCode.BAD_MAGIC: 1>)
    """
    if payload is None:
        return ReasonCode.NULL_VALUE
    n = len(payload)
    if max_message_bytes is not None and n > max_message_bytes:
        return ReasonCode.OVERSIZE
    if n == 0:
        return ReasonCode.TRUNCATED
    if payload[0] != MAGIC:
        return ReasonCode.BAD_MAGIC
    if n < HEADER_SIZE:
        return ReasonCode.TRUNCATED
    return ReasonCode.OK


def unframe(payload: bytes) -> tuple[int, bytes]:
    """Split a payload into ``(schema_id, body)``; raise :class:`CodecError` if not framed."""
    code = header_verdict(payload)
    if code != ReasonCode.OK:
        raise CodecError(code.name, _HEADER_DETAIL[code])
    return _HEADER.unpack_from(payload)[1], payload[HEADER_SIZE:]


_HEADER_DETAIL = {
    ReasonCode.NULL_VALUE: "payload is null (tombstone)",
    ReasonCode.OVERSIZE: "payload larger than the configured maximum",
    ReasonCode.TRUNCATED: "payload shorter than the 5-byte Confluent header",
    ReasonCode.BAD_MAGIC: "first byte is not the Confluent magic byte 0",
}


def header_detail(code: ReasonCode, payload: bytes | None, max_message_bytes: int) -> str:
    """Words for a failed framing check."""
    if code == ReasonCode.OVERSIZE and payload is not None:
        return f"payload is {len(payload)} bytes, more than max_message_bytes={max_message_bytes}"
    if code == ReasonCode.BAD_MAGIC and payload:
        return f"first byte is 0x{payload[0]:02x}, not the Confluent magic byte 0x00"
    return _HEADER_DETAIL[code]


def read_headers(
    payloads: Sequence[bytes | None], max_message_bytes: int | None = None
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint8]]:
    """Schema ids (-1 where unreadable) and framing verdicts of many payloads at once."""
    n = len(payloads)
    ids = np.full(n, -1, dtype=np.int32)
    codes = np.zeros(n, dtype=np.uint8)
    unpack = _HEADER.unpack_from
    for i, p in enumerate(payloads):
        code = header_verdict(p, max_message_bytes)
        if code == ReasonCode.OK:
            ids[i] = unpack(p)[1]  # type: ignore[arg-type]
        else:
            codes[i] = code
    return ids, codes


def frame_many(schema_id: int, bodies: Sequence[bytes]) -> list[bytes]:
    """Frame many bodies with the same schema id."""
    head = header(schema_id)
    return [head + b for b in bodies]


def classify_read_error(exc: BaseException) -> tuple[ReasonCode, str]:
    """Map an exception fastavro raised while reading a body to a reason code."""
    msg = str(exc)
    if isinstance(exc, SchemaResolutionError):
        if "not found in reader symbol list" in msg:
            return ReasonCode.UNKNOWN_ENUM, f"enum symbol unknown to the reader schema: {msg}"
        return ReasonCode.INCOMPATIBLE_SCHEMA, f"value not readable as the reader schema: {msg}"
    if isinstance(exc, EOFError):
        if "Expected -" in msg:
            return ReasonCode.CORRUPT, f"negative length: {msg}"
        return ReasonCode.TRUNCATED, f"body ended before the record did {msg}".rstrip()
    if isinstance(exc, IndexError):
        if "list index" in msg:
            return ReasonCode.CORRUPT, "union branch or enum index out of range"
        return ReasonCode.TRUNCATED, "body ended inside a number"
    if isinstance(exc, UnicodeDecodeError):
        return ReasonCode.CORRUPT, f"string is not UTF-8: {msg}"
    if isinstance(exc, RecursionError):
        return ReasonCode.CORRUPT, "record nested too deeply"
    return ReasonCode.CORRUPT, f"not a valid Avro body: {type(exc).__name__}: {msg}"
