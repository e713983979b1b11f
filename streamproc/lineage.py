"""The lineage of a prediction: the model, version, batch and writer schema that made it.

All four travel in one Kafka header, ``streamproc-lineage``, as a URL query string that
any language parses. One header, not four: the client converts every header on every
``produce`` call, and on the benchmark machine four headers cost the producing thread
0.75 to 1.6 us per record more than one (``benchmarks/produce_cost.py``; benchmarks/README.md,
"What a produced record costs").

>>> value = encode("fraud", "1.0.0", "3f9c2a1b", 7)
>>> value
b'model=fraud&version=1.0.0&batch=3f9c2a1b&schema-id=7'
>>> decode(value)
{'model': 'fraud', 'version': '1.0.0', 'batch': '3f9c2a1b', 'schema-id': '7'}
>>> decode(None)
{}
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

HEADER = "streamproc-lineage"


def encode(model: str, version: str, batch: str, schema_id: int) -> bytes:
    """The header value for one block of predictions."""
    fields = {"model": model, "version": version, "batch": batch, "schema-id": str(schema_id)}
    return urlencode(fields).encode()


def decode(value: bytes | str | None) -> dict[str, str]:
    """The fields of a header value; ``{}`` for a record without one."""
    if value is None:
        return {}
    text = value.decode() if isinstance(value, bytes) else value
    return dict(parse_qsl(text, keep_blank_values=True))
