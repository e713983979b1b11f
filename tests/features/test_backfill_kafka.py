"""features backfill over a topic range on the real broker and registry: per partition, the
values equal what the reference store gives for the same events in offset order; bad
records are dead letters; transaction markers and aborted records are stepped over."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from confluent_kafka import Consumer, Producer
from typer.testing import CliRunner

from streamproc import synth_payments
from streamproc.cli import app
from streamproc.cli.deps import Deps
from streamproc.errors import StreamprocError
from streamproc.features.offline import (
    OFFSET_COLUMN,
    PARTITION_COLUMN,
    BackfillReport,
    backfill_rows,
)
from streamproc.features.reference import ReferenceStore
from streamproc.kafka.clients import EventProducer, FramedDecoder
from streamproc.kafka.history import TopicHistory
from streamproc.kafka.registry import Registry
from streamproc.models.spec import load_model_spec

pytestmark = pytest.mark.kafka

MODEL_2 = Path(__file__).resolve().parents[2] / "deploy" / "models" / "fraud" / "2.0.0"


def _ms(v: Any) -> int:
    return int(v.timestamp() * 1000) if isinstance(v, dt.datetime) else int(v)


def _read_all(bootstrap: str, registry: str, topic: str) -> dict[int, list[tuple[int, Any, Any]]]:
    """Every committed record, (offset, key, decoded or None) per partition, read with a
    plain consumer: the oracle's input, independent of TopicHistory."""
    decoder = FramedDecoder(Registry(registry))
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"o-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "enable.partition.eof": True})  # fmt: skip
    c.subscribe([topic])
    out: dict[int, list[tuple[int, Any, Any]]] = {}
    eof: set[int] = set()
    try:
        while len(eof) < 3:
            for m in c.consume(500, timeout=10):
                if m.error() is not None:
                    eof.add(m.partition())  # type: ignore[arg-type]
                    continue
                try:
                    rec = decoder.decode(m.value())[1] if m.value() else None  # type: ignore[arg-type]
                except StreamprocError:
                    rec = None
                out.setdefault(m.partition(), []).append((m.offset(), m.key(), rec))  # type: ignore[arg-type]
    finally:
        c.close()
    return out


Values = dict[tuple[int, int], list[float]]


def _oracle(spec: Any, events: dict[int, list[tuple[int, Any, Any]]], lo: dict[int, int],
            hi: dict[int, int], warmup: bool) -> tuple[Values, int]:  # fmt: skip
    """The reference store per partition over the events in [lo, hi) (with ``warmup``:
    [0, hi), values kept for [lo, hi)) that have a record, a key and an event time."""
    ref = ReferenceStore(spec.features)
    out: dict[tuple[int, int], list[float]] = {}
    late = 0
    for p, evs in sorted(events.items()):
        first = 0 if warmup else lo.get(p, 0)
        ok = [(o, k, r) for o, k, r in evs if first <= o < hi.get(p, 1 << 62)
              and r is not None and k is not None]  # fmt: skip
        if not ok:
            continue
        # float32 first, as the pipeline's decoder reads value fields
        values = {f: np.array([float(r[f]) for _, _, r in ok], np.float32).astype(np.float64)
                  for f in spec.features.value_fields}  # fmt: skip
        times = np.array([_ms(r["event_time"]) for _, _, r in ok], np.int64)
        res = ref.process(p, [k for _, k, _ in ok], times, values)
        for (o, _, _), row, is_late in zip(ok, res.values.tolist(), res.late.tolist(),
                                           strict=True):  # fmt: skip
            if o >= lo.get(p, 0):
                out[p, o] = row
                late += is_late
    return out, late


def _same(a: list[float], b: list[float]) -> bool:
    """Equal within 1e-9: sum, mean and std come from running sums in the compiled store
    and a fresh sum in the reference (the differential tests hold the others exact)."""
    return all((math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)
               for x, y in zip(a, b, strict=True))  # fmt: skip


@pytest.fixture
def payments_topic(kafka: str, schema_registry: str, topic_factory: Any) -> tuple[str, int]:
    """3 partitions of payments keyed by account: in event-time order, then some sent again
    late (their event time hours behind), bad records, and a committed and an aborted
    transaction. Returns the topic and how many payments were sent."""
    topic = topic_factory("payments", partitions=3)
    records, _ = synth_payments.generate(40, days=2, seed=11)
    late = [dict(r, event_id=r["event_id"] + "-late") for r in records[::40]]
    with EventProducer(kafka, schema_registry, topic, schema="Payment") as producer:
        for r in records[: len(records) // 2]:
            producer.send(r, r["account_id"])
        producer.send_raw(b"\x01not avro", b"acct-000001")  # BAD_MAGIC
        producer.send_raw(None, b"acct-000002")  # a tombstone: NULL_VALUE
        producer.send(records[0], None)  # no key: MISSING_KEY
        producer.flush()
        tx = Producer({"bootstrap.servers": kafka, "transactional.id": f"tx-{uuid.uuid4().hex}"})
        tx.init_transactions(30)
        half = records[len(records) // 2 :]
        tx.begin_transaction()
        for r in half[:30]:
            tx.produce(topic, producer.encode(r), r["account_id"])
        tx.commit_transaction(30)
        tx.begin_transaction()
        tx.produce(topic, producer.encode(dict(half[0], amount=999_999.0)), "acct-000003")
        tx.abort_transaction(30)
        tx.close()
        for r in [*half[30:], *late]:
            producer.send(r, r["account_id"])
    return topic, len(records) + len(late)


@pytest.mark.parametrize("warmup", [True, False])
def test_topic_range_backfill_equals_the_reference_per_partition(
    kafka: str, schema_registry: str, payments_topic: tuple[str, int], warmup: bool
):
    """The range's rows equal the reference over the same events; with warm-up, over the
    partition from its start (the state the pipeline had), rows only for the range."""
    topic, sent = payments_topic
    spec = load_model_spec(MODEL_2)
    everything = _read_all(kafka, schema_registry, topic)
    assert sum(len(v) for v in everything.values()) == sent + 3  # the aborted one is not read
    ends = {p: evs[-1][0] + 1 for p, evs in everything.items()}
    lo, hi = {0: 4}, {1: ends[1] - 5}  # a range: part of partition 0 skipped, 1 cut short

    with TopicHistory(kafka, schema_registry, topic, start_offsets=lo, end_offsets=hi,
                      reader_schema=json.loads(spec.reader_schema_path.read_text()),  # type: ignore[union-attr]
                      warmup=warmup) as history:  # fmt: skip
        assert {p: (a, b) for p, a, b in history.ranges}[0][0] == 4
        report = BackfillReport()
        emit_from = history.emit_from if warmup else None
        rows = list(backfill_rows(spec, history, report=report, emit_from=emit_from))

    expected, late = _oracle(spec, everything, lo, hi, warmup)
    got = {(r[PARTITION_COLUMN], r[OFFSET_COLUMN]): [r[n] for n in spec.features.names]  # type: ignore[union-attr]
           for r in rows}  # fmt: skip
    assert got.keys() == expected.keys()
    bad = [k for k in expected if not _same(got[k], expected[k])]
    assert not bad, (bad[:3], [got[k] for k in bad[:3]], [expected[k] for k in bad[:3]])
    assert report.rows == len(expected) and late > 0 and report.late_events == late
    in_range = sum(1 for p, evs in everything.items() for o, _, _ in evs
                   if lo.get(p, 0) <= o < hi.get(p, 1 << 62))  # fmt: skip
    assert report.events_read == in_range
    assert report.warmup_events == (4 if warmup else 0)
    # the bad records sit in the first half; partition 0's first offsets may hold one
    assert sum(report.dead_letters.values()) == in_range - len(expected)
    assert set(report.dead_letters) <= {"BAD_MAGIC", "NULL_VALUE", "MISSING_KEY"}
    assert max(r["txn_count_1h"] for r in rows) >= 3  # the fraud bursts are there


def test_cli_backfill_of_a_topic_with_labels(
    kafka: str, schema_registry: str, payments_topic: tuple[str, int], topic_factory: Any,
    tmp_path: Path,
):  # fmt: skip
    topic, sent = payments_topic
    feedback = topic_factory("labels", partitions=1)
    with EventProducer(kafka, schema_registry, feedback, schema="Label") as p:
        first = synth_payments.generate(40, days=2, seed=11)[0][0]["event_id"]
        p.send({"event_id": first, "label": "legit", "time": 0})
        p.send({"event_id": first, "label": "fraud", "time": 1})  # the later label wins
    out = tmp_path / "train.avro"
    result = CliRunner().invoke(
        app, ["features", "backfill", "--model", str(MODEL_2), "--topic", topic,
              "--bootstrap", kafka, "--registry", schema_registry, "--labels-topic", feedback,
              "--out", str(out), "--no-progress", "-o", "json"],
        obj=Deps(env={}, stack=lambda: None),
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads(result.output)
    assert summary["events_read"] == sent + 3
    assert summary["dead_letters"] == 3 and summary["rows_written"] == sent
    assert summary["late_events"] > 0 and summary["labels"] == 1
    with out.open("rb") as fh:
        rows = list(fastavro.reader(fh))
    assert len(rows) == sent
    labelled = [r for r in rows if r["label"] is not None]  # type: ignore[call-overload,index]
    assert [(r["event_id"], r["label"]) for r in labelled] == [(first, "fraud")]  # type: ignore[call-overload,index]


def test_produce_payments_then_backfill_with_the_payments_pipeline(
    kafka: str, schema_registry: str, topic_factory: Any, tmp_path: Path
):
    """`produce -c payments.yaml` sends raw payments (the model reads Payment); backfill
    over them accounts for every one."""
    topic = topic_factory("pay-cli", partitions=2)
    pipeline = str(MODEL_2.parents[2] / "pipelines" / "payments.yaml")
    where = ["-c", pipeline, "--topic", topic, "--bootstrap", kafka, "--registry", schema_registry]
    deps = Deps(env={}, stack=lambda: None)
    produced = CliRunner().invoke(app, ["produce", *where, "-n", "600", "--days", "3",
                                        "--malformed", "0.03"], obj=deps)  # fmt: skip
    assert produced.exit_code == 0, (produced.output, produced.exception)
    report = json.loads(produced.output)
    out = tmp_path / "train.csv"
    result = CliRunner().invoke(app, ["features", "backfill", *where, "--out", str(out),
                                      "--no-progress", "-o", "json"], obj=deps)  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads(result.output)
    assert summary["events_read"] == report["produced"] == 600
    assert summary["rows_written"] == report["good"]
    assert summary["dead_letters"] == sum(report["malformed"].values()) > 0
