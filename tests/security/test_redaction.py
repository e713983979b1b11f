"""Personal values stay out of a dead letter's detail (the decoder's words may quote the
value that broke a rule) and out of the lineage header (it names the model, its version, the
batch and the writer schema, nothing of the event)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import fastavro

from streamproc import lineage, schemas
from streamproc.codecs.decoder import BatchDecoder
from streamproc.config import PersonalDataSettings
from streamproc.models.spec import load_model_spec
from streamproc.personal import Redactor
from streamproc.synth import generate

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "deploy" / "models" / "fraud" / "1.0.0"
AMOUNT = -123456.75  # a value the detail would quote


class _Schemas:
    def __init__(self, schema: dict[str, Any]) -> None:
        self._schema = schema

    def schema(self, schema_id: int) -> dict[str, Any] | None:
        return self._schema if schema_id == 1 else None


def _rejected_detail() -> tuple[str, bytes]:
    schema = schemas.schema_dict("Transaction")
    [record], _ = generate(1, seed=3)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), {**record, "amount": AMOUNT})
    payload = b"\x00" + (1).to_bytes(4, "big") + buf.getvalue()
    decoder = BatchDecoder(load_model_spec(MODEL), schema, _Schemas(schema), compiled=True)
    dec = decoder.decode([payload])
    assert dec.errors[0] != 0
    return dec.details[0], payload


def test_a_personal_field_s_value_is_not_in_the_dead_letter_s_detail() -> None:
    detail, payload = _rejected_detail()
    assert "123456.75" in detail  # the decoder quotes it: the check below can fail
    redactor = Redactor.from_settings(PersonalDataSettings(fields=["amount"]), env={})
    assert redactor is not None
    redacted = redactor.detail(detail, payload)
    assert "123456.75" not in redacted and "amount: detail withheld" in redacted
    # a detail about another field is kept as it was
    other = Redactor.from_settings(PersonalDataSettings(fields=["account_id"]), env={})
    assert other is not None and other.detail(detail, payload).endswith(detail)


def test_the_lineage_header_names_nothing_of_the_event() -> None:
    fields = lineage.decode(lineage.encode("fraud", "1.0.0", "b1", 7))
    assert set(fields) == {"model", "version", "batch", "schema-id"}
