"""BatchHandler without Kafka: predictions come out as blocks with shared lineage headers."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import fastavro
import numpy as np
import pytest

from streamproc import lineage, schemas, synth
from streamproc.backends.base import Backend
from streamproc.backends.onnx import DEMO_MODEL
from streamproc.backends.select import load_backend
from streamproc.codecs.decoder import BatchDecoder
from streamproc.codecs.source import DictSchemaSource
from streamproc.codecs.wire import frame
from streamproc.errors import ModelError
from streamproc.models.spec import load_model_spec
from streamproc.pipeline.app import reader_schema
from streamproc.pipeline.handler import BatchHandler, OutputTopics, SchemaIds
from streamproc.pipeline.monitoring import build_monitor
from streamproc.pipeline.scoring import SingleScorer
from streamproc.types import RawBatch

TOPICS = OutputTopics("in.p", "in.dlq", "in.alerts", "in.metrics", "in.shadow")


def _handler() -> BatchHandler:
    spec = load_model_spec(DEMO_MODEL)
    text = schemas.schema_text("Transaction")
    return BatchHandler(
        decoder=BatchDecoder(spec, reader_schema(spec), DictSchemaSource({7: text, 8: text})),
        scorer=SingleScorer(spec, load_backend(spec, prefer=["onnxruntime"])),
        topics=TOPICS,
        schema_ids=SchemaIds(prediction=2, dead_letter=3, alert=4, metrics=5),
        processor_id="t",
        pipeline="t",
        snapshot_interval_s=3600.0,
    )


def _batch(n: int) -> tuple[RawBatch, list[dict]]:
    records, _ = synth.generate(n, seed=21)
    parsed = schemas.parsed("Transaction")
    values: list[bytes | None] = []
    for i, r in enumerate(records):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, r)
        values.append(frame(7 if i % 3 else 8, buf.getvalue()))  # two writer schema ids
    values[5] = b"\x01garbage"  # one malformed event
    raw = RawBatch(
        topic="in",
        values=values,
        keys=[r["account_id"].encode() for r in records],
        partitions=np.zeros(n, dtype=np.int32),
        offsets=np.arange(100, 100 + n, dtype=np.int64),
        headers=[None] * n,
        batch_id="b-1",
    )
    return raw, records


def test_predictions_are_blocks_per_schema_id_with_lineage_and_nothing_lost() -> None:
    raw, records = _batch(40)
    out = _handler()(raw)
    assert out.n_predictions == 39 and out.n_dead_letters == 1
    assert {b.topic for b in out.blocks} == {"in.p"}
    assert all(len(b.headers) == 1 for b in out.blocks)  # one header: lineage
    by_sid = {lineage.decode(dict(b.headers)[lineage.HEADER])["schema-id"]: b for b in out.blocks}
    assert set(by_sid) == {"7", "8"}
    assert [len(by_sid["8"]), len(by_sid["7"])] == [14, 25]  # i % 3 == 0 -> id 8
    parsed = schemas.parsed("Prediction")
    by_id = {r["event_id"]: r for r in records}
    seen = []
    for rec in out.all_records():
        if rec.topic != "in.p":
            continue
        h = lineage.decode(dict(rec.headers or [])[lineage.HEADER])
        assert (h["model"], h["version"], h["batch"]) == ("fraud", "1.0.0", "b-1")
        value = fastavro.schemaless_reader(io.BytesIO(rec.value[5:]), parsed)
        assert rec.key == by_id[value["event_id"]]["account_id"].encode()
        seen.append(value["event_id"])
    assert sorted(seen) == sorted(r["event_id"] for i, r in enumerate(records) if i != 5)
    dead = [r for r in out.all_records() if r.topic == "in.dlq"]
    assert len(dead) == 1 and dict(dead[0].headers or [])["streamproc-reason"] == b"BAD_MAGIC"


def _framed(records: list[dict], schema_id: int) -> list[bytes | None]:
    parsed = schemas.parsed("Transaction")
    out: list[bytes | None] = []
    for r in records:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, r)
        out.append(frame(schema_id, buf.getvalue()))
    return out


def test_new_schema_alert_only_for_a_schema_events_decode_with() -> None:
    spec = load_model_spec(DEMO_MODEL)
    handler = _handler()
    handler.monitor = build_monitor(spec, {})
    records, _ = synth.generate(300, seed=4)
    alert_schema = schemas.parsed("Alert")

    def new_schema_alerts(values: list[bytes | None], start: int) -> list[dict]:
        n = len(values)
        raw = RawBatch(topic="in", values=values, keys=[b"k"] * n,
                       partitions=np.zeros(n, dtype=np.int32),
                       offsets=np.arange(start, start + n, dtype=np.int64),
                       headers=[None] * n, batch_id=f"b{start}")  # fmt: skip
        alerts = [fastavro.schemaless_reader(io.BytesIO(r.value[5:]), alert_schema)
                  for r in handler(raw).all_records() if r.topic == "in.alerts"]  # fmt: skip
        return [a for a in alerts if a["type"] == "new_schema"]

    assert new_schema_alerts(_framed(records[:100], 7), 0) == []  # the baseline
    garbage = _framed(records[100:150], 7)
    garbage[3] = frame(424242, b"\x02\x04junk")  # an id the registry does not know
    garbage[9] = frame(8, b"\xff")  # a known id, but the body does not decode
    assert new_schema_alerts(garbage, 100) == []
    fired = new_schema_alerts(_framed(records[150:200], 8), 150)
    assert len(fired) == 1 and fired[0]["value"] == 8.0
    assert new_schema_alerts(_framed(records[200:300], 8), 200) == []  # once per id


class _Deferred(Backend):
    """A backend that defers the work to ``result()``: what a GPU backend's ``submit`` does
    (the real one is tested on a GPU, tests/backends/test_gpu.py)."""

    asynchronous = True

    def __init__(self, inner: Any, fail: bool = False) -> None:
        self.inner, self.fail = inner, fail
        self.name, self.device = "deferred", "cpu"
        self.log: list[str] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.submit(batch).result()

    def submit(self, batch: np.ndarray) -> Any:
        self.log.append("submit")

        def result() -> np.ndarray:
            self.log.append("result")
            if self.fail:
                raise ModelError("the device failed")
            out: np.ndarray = self.inner.infer(batch)
            return out

        return SimpleNamespace(result=result)

    def close(self) -> None:
        pass


def _with_backend(backend: Any) -> BatchHandler:
    handler = _handler()
    handler.scorer = SingleScorer(handler.scorer.primary, backend)
    handler.clock_ms = lambda: 1_700_000_000_000.0
    return handler


def test_an_asynchronous_backend_is_waited_for_in_finish_and_gives_the_same_outputs() -> None:
    raw, _ = _batch(40)
    plain = _handler()
    plain.clock_ms = lambda: 1_700_000_000_000.0
    deferred = _Deferred(plain.scorer.backend)  # type: ignore[attr-defined]
    handler = _with_backend(deferred)
    assert handler.overlaps and not plain.overlaps
    started = handler.start(raw)
    assert deferred.log == ["submit"]  # start() queued the work and did not wait for it
    out = handler.finish(started)
    assert deferred.log == ["submit", "result"]
    want = plain(raw)

    def events(o: Any) -> list[bytes]:  # predictions and dead letters (not the CPU snapshot)
        return [r.value for r in o.all_records() if r.topic in ("in.p", "in.dlq")]

    assert len(events(out)) == 40 and events(out) == events(want)
    assert out.n_predictions == 39 and out.n_dead_letters == 1


@pytest.mark.parametrize("when", ["submit", "result"])
def test_a_model_that_fails_dead_letters_every_valid_event_with_the_reason(when: str) -> None:
    raw, _ = _batch(40)
    inner = _handler().scorer.backend  # type: ignore[attr-defined]
    backend = _Deferred(inner, fail=when == "result")
    if when == "submit":
        backend.asynchronous = False  # scored at once: the error raises in start()
        backend.infer = lambda batch: (_ for _ in ()).throw(ModelError("the device failed"))  # type: ignore[method-assign]
    out = _with_backend(backend)(raw)
    assert out.n_predictions == 0 and out.n_dead_letters == 40
    dead = [r for r in out.all_records() if r.topic == "in.dlq"]
    reasons = [dict(r.headers or [])["streamproc-reason"] for r in dead]
    assert reasons.count(b"INFERENCE_FAILED") == 39 and reasons.count(b"BAD_MAGIC") == 1
    parsed = schemas.parsed("DeadLetter")
    details = [fastavro.schemaless_reader(io.BytesIO(r.value[5:]), parsed)["detail"] for r in dead]
    assert sorted(set(details)) == [
        "ModelError: the device failed",
        "first byte is 0x01, not the Confluent magic byte 0x00",
    ]


def test_alerts_decided_between_batches_are_pending_records_once() -> None:
    """A rollout guard's rollback decided after the last batch: the handler gives it as an
    alert record when the runner asks (it finds nothing to read), and only once."""
    from streamproc.pipeline.guard import rollback_alert
    from streamproc.rollout.controller import RolloutAlert
    from streamproc.types import Alert

    handler = _handler()
    inner = handler.scorer
    queued = [rollback_alert(RolloutAlert(model="fraud", version="1.1.0", stable="1.0.0",
                                          reason="errors", metric="error_rate", value=1.0,
                                          threshold=0.01, window_events=60, at_ms=1,
                                          revision=3))]  # fmt: skip

    class Deciding(SingleScorer):
        def drain_alerts(self) -> list[Alert]:
            out = list(queued)
            queued.clear()
            return out

    handler.scorer = Deciding(inner.primary, load_backend(inner.primary, prefer=["onnxruntime"]))
    (record,) = handler.pending()
    assert record.topic == "in.alerts" and record.value is not None
    alert = fastavro.schemaless_reader(io.BytesIO(record.value[5:]), schemas.parsed("Alert"))
    assert (alert["type"], alert["model_name"], alert["statistic"]) == (
        "rollback", inner.primary.name, "error_rate")  # fmt: skip
    assert handler.pending() == []
