"""The users' FramedDecoder: bytes that are not Avro of their schema give a CodecError with
the pipeline's reason code, never fastavro's own exception."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest

from streamproc import schemas
from streamproc.errors import CodecError
from streamproc.kafka.clients import FramedDecoder


class _Source:
    def schema(self, schema_id: int) -> dict[str, Any] | None:
        return schemas.schema_dict("Label") if schema_id == 7 else None


def _framed(body: bytes) -> bytes:
    return b"\x00" + (7).to_bytes(4, "big") + body


def _label() -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schemas.parsed("Label"),
                               {"event_id": "e1", "label": "fraud", "time": 1})  # fmt: skip
    return buf.getvalue()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_framed(_label()[:4]), "TRUNCATED"),  # fastavro: EOFError
        (_framed(b"\x01"), "CORRUPT"),  # a negative string length
        (b"\x07" + _label(), "BAD_MAGIC"),
        (b"\x00\x00\x00\x00\x08" + _label(), "UNKNOWN_SCHEMA"),
    ],
)
def test_unreadable_payloads_raise_codec_errors(payload: bytes, reason: str) -> None:
    decoder = FramedDecoder(_Source())  # type: ignore[arg-type]
    with pytest.raises(CodecError) as err:
        decoder.decode(payload)
    assert err.value.reason == reason


def test_a_readable_payload_decodes() -> None:
    decoder = FramedDecoder(_Source())  # type: ignore[arg-type]
    sid, rec = decoder.decode(_framed(_label()))
    assert (sid, rec["event_id"], rec["label"]) == (7, "e1", "fraud")
