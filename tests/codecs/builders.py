"""Builders shared by the codec tests and benchmarks: Transaction records, specs, payloads."""

from __future__ import annotations

import copy
import io
from typing import Any

import fastavro

from streamproc.codecs.wire import frame
from streamproc.models.spec import ModelSpec
from streamproc.schemas import schema_dict

CHANNELS = ("POS", "ECOM", "ATM", "MOTO")
NUMERIC_FIELDS = (
    "amount",
    "merchant_risk",
    "distance_from_home_km",
    "minutes_since_last_txn",
    "txn_count_1h",
    "txn_count_24h",
    "avg_amount_7d",
    "card_age_days",
    "hour_of_day",
    "failed_logins_24h",
)


def transaction_schema() -> dict[str, Any]:
    return schema_dict("Transaction")


def fraud_spec(**overrides: Any) -> ModelSpec:
    """The test model: every numeric field as a value (amount >= 0), is_international,
    device_trust_score imputed 0.5 when null, channel one-hot."""
    inputs: list[dict[str, Any]] = [
        {"field": f, **({"min": 0} if f == "amount" else {})} for f in NUMERIC_FIELDS
    ]
    inputs.append({"field": "is_international"})
    inputs.append({"field": "device_trust_score", "null": "impute", "impute": 0.5})
    inputs.append({"field": "channel", "encoding": "onehot", "symbols": list(CHANNELS)})
    raw: dict[str, Any] = {"name": "fraud", "version": "1.0.0", "inputs": inputs}
    raw.update(overrides)
    return ModelSpec.model_validate(raw)


def transaction(i: int = 0, **overrides: Any) -> dict[str, Any]:
    """A deterministic valid Transaction record."""
    rec: dict[str, Any] = {
        "event_id": f"ev-{i:08d}",
        "account_id": f"acct-{i % 97}",
        "event_time": 1_700_000_000_000 + i,
        "amount": 10.0 + (i % 1000) * 0.25,
        "merchant_risk": (i % 100) / 128.0,  # exact in float32
        "distance_from_home_km": float(i % 500),
        "minutes_since_last_txn": 0.5 * (i % 60),
        "txn_count_1h": i % 7,
        "txn_count_24h": i % 31,
        "avg_amount_7d": 50.0 + (i % 17),
        "card_age_days": i % 2000,
        "hour_of_day": i % 24,
        "failed_logins_24h": i % 3,
        "is_international": i % 5 == 0,
        "device_trust_score": None if i % 4 == 0 else (i % 10) / 16.0,
        "channel": CHANNELS[i % 4],
    }
    rec.update(overrides)
    return rec


def expected_row(rec: dict[str, Any]) -> list[float]:
    """The fraud_spec feature row of a Transaction record."""
    row = [float(rec[f]) for f in NUMERIC_FIELDS]
    row.append(1.0 if rec["is_international"] else 0.0)
    dts = rec["device_trust_score"]
    row.append(0.5 if dts is None else float(dts))
    row.extend(1.0 if rec["channel"] == c else 0.0 for c in CHANNELS)
    return row


def body(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(copy.deepcopy(schema)), record)
    return buf.getvalue()


def payload(schema_id: int, schema: Any, record: dict[str, Any]) -> bytes:
    return frame(schema_id, body(schema, record))


def evolve(schema: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a record schema with fields replaced (a dict), added (name not present) or
    removed (value None): ``evolve(s, amount={"name": "amount", "type": "int"}, x=None)``."""
    out = copy.deepcopy(schema)
    fields = out["fields"]
    for name, new in changes.items():
        idx = next((i for i, f in enumerate(fields) if f["name"] == name), None)
        if new is None:
            if idx is not None:
                del fields[idx]
        elif idx is None:
            fields.append(new)
        else:
            fields[idx] = new
    return out
