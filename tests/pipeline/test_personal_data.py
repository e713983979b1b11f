"""Personal data kept out of the DLQ, on the real broker: with ``personal_data`` configured,
no byte of a personal field's value reaches a dead letter (key, value, headers); without
it, the same rejects carry them (the search can find what it looks for)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer

from streamproc import loadgen, synth
from streamproc.config import PersonalDataSettings
from streamproc.deadletters import Outcome, Selection
from streamproc.kafka import dlq as dlq_tools
from streamproc.kafka.clients import FramedDecoder
from streamproc.kafka.registry import Registry
from streamproc.personal import REDACTED, Redactor, personal_fields


def test_personal_fields_come_from_the_config_and_the_avro_schema() -> None:
    schema = {"type": "record", "name": "T", "fields": [
        {"name": "account_id", "type": "string", "personal": True},
        {"name": "amount", "type": "double"},
        {"name": "card", "type": {"type": "record", "name": "C", "fields": [
            {"name": "pan", "type": "string", "personal": True}]}},
    ]}  # fmt: skip
    assert personal_fields(schema) == ["account_id", "card.pan"]
    assert Redactor.from_settings(PersonalDataSettings(), {"fields": []}) is None
    r = Redactor.from_settings(PersonalDataSettings(fields=["email"]), schema, env={})
    assert r is not None and r.fields == ("email", "account_id", "card.pan")
    keyed = Redactor.from_settings(
        PersonalDataSettings(key=True), env={"STREAMPROC_PERSONAL_DATA_KEY": "k"}
    )
    assert keyed is not None and keyed.key(b"acct-1") == keyed.key(b"acct-1") != b"acct-1"
    assert keyed.key(None) is None and r.key(b"acct-1") == b"acct-1"  # key not marked


def _raw_records(bootstrap: str, topic: str, n: int) -> list[tuple[bytes, bytes, list]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})  # fmt: skip
    c.subscribe([topic])
    out: list[tuple[bytes, bytes, list]] = []
    try:
        while len(out) < n:
            msgs = c.consume(n - len(out), timeout=30)
            if not msgs:
                break
            out += [(m.key() or b"", m.value() or b"", m.headers() or [])
                    for m in msgs if m.error() is None]  # fmt: skip
    finally:
        c.close()
    return out


@pytest.mark.kafka
@pytest.mark.parametrize("redact", [True, False], ids=["personal", "unmarked"])
def test_dead_letters_hold_no_raw_personal_value(
    redact, kafka, schema_registry, pipeline_config_factory, processor_factory,
    event_producer_factory, monkeypatch,
):  # fmt: skip
    monkeypatch.setenv("STREAMPROC_PERSONAL_DATA_KEY", "test-hash-key")
    over = {"personal_data": {"fields": ["account_id"], "key": True}} if redact else {}
    cfg = pipeline_config_factory(**over)
    producer = event_producer_factory(cfg.topics.input)
    records, _ = synth.generate(len(loadgen.KINDS) + 4, seed=11)
    markers = []
    for i, orig in enumerate(records):
        marker = f"PII-{uuid.uuid4().hex}"
        markers.append(marker)
        r = {**orig, "account_id": marker}
        if i < len(loadgen.KINDS):  # one of each kind of reject, the marker in key and value
            value = loadgen.corrupt(loadgen.KINDS[i], producer.encode(r), r, producer.encode)
            producer.send_raw(value, key=marker, headers=[("trace", b"t")])
        else:
            producer.send(r, key=marker)
    producer.flush()
    n_bad = len(loadgen.KINDS)
    running = processor_factory(cfg)
    dlq = _raw_records(kafka, cfg.topics.dlq, n_bad)
    running.stop()
    assert len(dlq) == n_bad
    blob = b"".join(k + v + b"".join(h or b"" for _, h in hs) for k, v, hs in dlq)
    rejected = markers[:n_bad]
    if not redact:  # the control: the search finds the raw values where nothing is marked
        assert all(m.encode() in blob for m in rejected)
        return
    assert not [m for m in rejected if m.encode() in blob]
    decoder = FramedDecoder(Registry(schema_registry))
    for key, value, _ in dlq:
        _, rec = decoder.decode(value)
        assert rec["value"] is None and rec["detail"].startswith(REDACTED)
        assert key.startswith(b"hmac-sha256:") and rec["key"] == key
    # Equal keys hash equal under one hash key: one account's dead letters stay together.
    assert len({k for k, _, _ in dlq}) == n_bad
    # Replay has nothing to resend: even forced, a redacted dead letter is passed, not sent.
    report = dlq_tools.replay(cfg, Selection.build(), lambda dl: None, force=True)
    assert report.sent == 0 and report.total(Outcome.PASSED_FAILING) == n_bad, report.as_dict()
