"""Avro codecs: Confluent framing, schema resolution, batch decoding and encoding.

The public surface is re-exported here::

    from streamproc.codecs import BatchDecoder, DictSchemaSource, PredictionEncoder
"""

from __future__ import annotations

from streamproc.codecs.decoder import BatchDecoder
from streamproc.codecs.encoder import (
    PredictionEncoder,
    decode_prediction,
    decode_record,
    encode_record,
)
from streamproc.codecs.source import DictSchemaSource, SchemaSource
from streamproc.codecs.wire import HEADER_SIZE, MAGIC, frame, read_headers, unframe

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
