"""Avro codecs: Confluent framing, schema resolution, batch decoding and encoding.

The public surface is re-exported here::

    from streamproc.codecs import BatchDecoder, DictSchemaSource, PredictionEncoder

Each name is imported on first use (PEP 562): the framing helpers of ``wire`` alone do not
pull in numba and the compiled decoder (about half a second of import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamproc.codecs.decoder import BatchDecoder
    from streamproc.codecs.encoder import (
        PredictionEncoder,
        decode_prediction,
        decode_record,
        encode_record,
    )
    from streamproc.codecs.source import DictSchemaSource, SchemaSource
    from streamproc.codecs.wire import HEADER_SIZE, MAGIC, frame, read_headers, unframe

_HOME = {
    "BatchDecoder": "decoder",
    "PredictionEncoder": "encoder",
    "decode_prediction": "encoder",
    "decode_record": "encoder",
    "encode_record": "encoder",
    "DictSchemaSource": "source",
    "SchemaSource": "source",
    "HEADER_SIZE": "wire",
    "MAGIC": "wire",
    "frame": "wire",
    "read_headers": "wire",
    "unframe": "wire",
}

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "BatchDecoder",
    "DictSchemaSource",
    "PredictionEncoder",
    "SchemaSource",
    "decode_prediction",
    "decode_record",
    "encode_record",
    "frame",
    "read_headers",
    "unframe",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # the next lookup does not come here
    return value
