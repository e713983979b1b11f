"""features backfill offline: the values equal the reference store's on the same events,
per partition in offset order, whatever the interleaving and batch size; dead letters never
enter the state; Avro container files are one stream; the CLI writes a readable training set."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from streamproc import schemas, synth_payments
from streamproc.cli import app
from streamproc.cli.deps import Deps
from streamproc.features.offline import (
    OFFSET_COLUMN,
    PARTITION_COLUMN,
    BackfillReport,
    SourceEvent,
    avro_file_events,
    backfill_rows,
    output_schema,
    record_key,
    write_avro,
)
from streamproc.features.reference import ReferenceStore
from streamproc.features.spec import FeaturesSpec
from streamproc.models.spec import load_model_spec

ROOT = Path(__file__).resolve().parents[2]
MODEL_2 = ROOT / "deploy" / "models" / "fraud" / "2.0.0"

# Every aggregation, every window type.
SPEC = FeaturesSpec.model_validate({
    "allowed_lateness": "30s",
    "definitions": [
        {"name": "n_1m", "agg": "count", "window": {"size": "1m"}},
        {"name": "sum_5m", "agg": "sum", "value": "x", "window": {"size": "5m"}},
        {"name": "mean_5m", "agg": "mean", "value": "x", "window": {"size": "5m"}},
        {"name": "min_2m", "agg": "min", "value": "x", "window": {"size": "2m"}},
        {"name": "max_2m", "agg": "max", "value": "x", "window": {"size": "2m"}},
        {"name": "std_5m", "agg": "std", "value": "x", "window": {"size": "5m"}},
        {"name": "last_x", "agg": "last", "value": "x", "window": {"size": "10m"}},
        {"name": "since", "agg": "since_last", "unit": "s", "window": {"size": "10m"}},
        {"name": "distinct_m", "agg": "distinct_count", "value": "m", "window": {"size": "5m"}},
        {"name": "tumble_n", "agg": "count", "window": {"type": "tumbling", "size": "1m"}},
        {"name": "hop_sum", "agg": "sum", "value": "x",
         "window": {"type": "hopping", "size": "2m", "step": "1m"}},
    ],
})  # fmt: skip


def _stream(seed: int, n: int, partitions: int) -> list[SourceEvent]:
    """Interleaved partitions, few keys, ties, out-of-order and late events, null values."""
    rng = np.random.default_rng(seed)
    out: list[SourceEvent] = []
    offsets = [0] * partitions
    t = 0
    for _ in range(n):
        p = int(rng.integers(partitions))
        t += int(rng.integers(0, 20_000))
        jitter = int(rng.choice([0, 0, 0, -5_000, -40_000, -200_000]))  # late or not
        x = None if rng.random() < 0.05 else float(rng.integers(0, 50))
        rec = {"event_time": max(0, t + jitter), "x": x, "m": int(rng.integers(0, 6))}
        out.append(SourceEvent(p, offsets[p], f"k{rng.integers(4)}".encode(), rec))
        offsets[p] += 1 + int(rng.integers(0, 2))  # gaps, as transaction markers leave
    return out


def _reference(
    spec: FeaturesSpec, events: list[SourceEvent]
) -> tuple[dict[tuple[int, int], list[float]], set[tuple[int, int]]]:
    """The reference store, one call per partition with all its events in offset order:
    values by (partition, offset), and which events were late."""
    ref = ReferenceStore(spec)
    out: dict[tuple[int, int], list[float]] = {}
    late: set[tuple[int, int]] = set()
    for p in sorted({e.partition for e in events}):
        evs = [e for e in events if e.partition == p]
        assert [e.offset for e in evs] == sorted(e.offset for e in evs)
        recs: list[dict[str, Any]] = [e.record for e in evs if e.record is not None]
        assert len(recs) == len(evs)
        # float32 first, as the pipeline's decoder reads value fields
        values = {f: np.array([math.nan if r[f] is None else r[f] for r in recs], np.float32)
                  .astype(np.float64) for f in spec.value_fields}  # fmt: skip
        times = np.array([r["event_time"] for r in recs], np.int64)
        res = ref.process(p, [e.key or b"" for e in evs], times, values)
        for e, row, is_late in zip(evs, res.values.tolist(), res.late.tolist(), strict=True):
            out[e.partition, e.offset] = row
            if is_late:
                late.add((e.partition, e.offset))
    return out, late


def _expected(spec: FeaturesSpec, events: list[SourceEvent]) -> dict[tuple[int, int], list[float]]:
    return _reference(spec, events)[0]


def _same(a: list[float], b: list[float]) -> bool:
    """Equal within 1e-9: sum, mean and std come from running sums in the compiled store
    and a fresh sum in the reference (the differential tests hold the others exact)."""
    return all((math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)
               for x, y in zip(a, b, strict=True))  # fmt: skip


def _assert_same(got: dict[Any, list[float]], expected: dict[Any, list[float]]) -> None:
    assert got.keys() == expected.keys()
    bad = [k for k in expected if not _same(got[k], expected[k])]
    assert not bad, (bad[:3], [got[k] for k in bad[:3]], [expected[k] for k in bad[:3]])


def _got(rows: list[dict[str, Any]], spec: FeaturesSpec) -> dict[tuple[int, int], list[float]]:
    return {(r[PARTITION_COLUMN], r[OFFSET_COLUMN]): [r[n] for n in spec.names] for r in rows}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.sampled_from([1, 3, 17, 4096]),
       partitions=st.integers(1, 3))  # fmt: skip
def test_backfill_equals_the_reference_per_partition(seed: int, batch: int, partitions: int):
    """Every event's values, late events' too, equal the reference's with one call per
    partition, at any batch size: the store is batch-invariant."""
    events = _stream(seed, 120, partitions)
    report = BackfillReport()
    rows = list(backfill_rows(SPEC, events, batch_size=batch, report=report))
    expected, late = _reference(SPEC, events)
    got = _got(rows, SPEC)
    assert got.keys() == expected.keys()
    bad = [k for k in expected if not _same(got[k], expected[k])]
    assert not bad, (bad[:3], [got[k] for k in bad[:3]], [expected[k] for k in bad[:3]])
    assert report.events_read == report.rows == len(events)
    assert report.late_events == len(late)


def test_late_events_are_in_the_stream():
    """The generated streams exercise lateness (else the test above proves little)."""
    report = BackfillReport()
    list(backfill_rows(SPEC, _stream(1, 400, 2), report=report))
    assert report.late_events > 10


def test_dead_letters_never_enter_the_state():
    good = _stream(7, 80, 2)
    bad = [
        SourceEvent(0, 0, None, {"event_time": 5, "x": 1.0, "m": 1}),  # no key
        SourceEvent(1, 0, b"k1", {"event_time": None, "x": 9.0, "m": 1}),  # no event time
        SourceEvent(1, 1, b"k1", {"x": 9.0, "m": 1}),  # event time absent
        SourceEvent(0, 1, b"k1", None, "BAD_MAGIC"),  # undecodable
        SourceEvent(0, 2, b"k1", None, "NULL_VALUE"),
    ]
    shifted = [SourceEvent(e.partition, e.offset + 10, e.key, e.record) for e in good]
    report = BackfillReport()
    rows = list(backfill_rows(SPEC, [*bad, *shifted], report=report))
    _assert_same(_got(rows, SPEC), _expected(SPEC, shifted))
    assert dict(report.dead_letters) == {"MISSING_KEY": 1, "MISSING_EVENT_TIME": 2,
                                         "BAD_MAGIC": 1, "NULL_VALUE": 1}  # fmt: skip
    assert report.events_read == len(bad) + len(good) and report.rows == len(good)


def test_warmup_events_build_the_state_and_give_no_row():
    events = _stream(3, 150, 2)
    emit_from = {0: events[60].offset, 1: 10**9}  # partition 1: all warm-up
    report = BackfillReport()
    rows = list(backfill_rows(SPEC, events, emit_from=emit_from, report=report))
    full = _expected(SPEC, events)
    want = {k: v for k, v in full.items() if k[0] == 0 and k[1] >= emit_from[0]}
    _assert_same(_got(rows, SPEC), want)
    assert report.rows == report.events_read == len(want)
    assert report.warmup_events == len(events) - len(want)
    # Cold, the same range's first values differ: the history before it is missing.
    cold = [e for e in events if e.partition == 0 and e.offset >= emit_from[0]]
    cold_values = _expected(SPEC, cold)
    assert any(not _same(cold_values[k], want[k]) for k in want)


def test_offsets_out_of_order_are_refused():
    evs = [SourceEvent(0, 5, b"a", {"event_time": 1, "x": 1.0, "m": 0}),
           SourceEvent(0, 5, b"a", {"event_time": 2, "x": 1.0, "m": 0})]  # fmt: skip
    with pytest.raises(ValueError, match="offset order"):
        list(backfill_rows(SPEC, evs))


def test_composite_key_from_fields():
    spec = FeaturesSpec.model_validate({"key": ["account_id", "card"], "definitions": [
        {"name": "n", "agg": "count", "window": {"size": "1h"}}]})  # fmt: skip
    recs = [{"account_id": "a", "card": 1, "event_time": 1},
            {"account_id": "a", "card": 2, "event_time": 2},
            {"account_id": "a", "card": 1, "event_time": 3},
            {"account_id": "a", "card": None, "event_time": 4}]  # fmt: skip
    report = BackfillReport()
    rows = list(backfill_rows(spec, [SourceEvent(0, i, b"ignored", r)
                                     for i, r in enumerate(recs)], report=report))  # fmt: skip
    assert [r["n"] for r in rows] == [0.0, 0.0, 1.0]
    assert report.dead_letters == {"MISSING_KEY": 1}
    assert record_key(recs[0], ["account_id", "card"]) == b"a|1"  # as repartitioning joins


def test_an_empty_kafka_key_is_no_key():
    report = BackfillReport()
    evs = [SourceEvent(0, 0, b"", {"event_time": 1, "x": 1.0, "m": 0}),
           SourceEvent(0, 1, b"a", {"event_time": 2, "x": 1.0, "m": 0})]  # fmt: skip
    assert len(list(backfill_rows(SPEC, evs, report=report))) == 1
    assert report.dead_letters == {"MISSING_KEY": 1}


def _payments(n_accounts: int, days: float, seed: int) -> list[dict[str, Any]]:
    return synth_payments.generate(n_accounts, days=days, seed=seed)[0]


def test_model_inputs_rejected_as_the_decoder_rejects_them():
    spec = load_model_spec(MODEL_2)
    assert spec.features is not None
    recs = _payments(20, 2, 3)
    broken = [dict(recs[0], amount=-5.0), dict(recs[1], channel="SWIPE"),
              dict(recs[2], merchant_risk=float("nan"))]  # fmt: skip
    evs = [SourceEvent(0, i, r["account_id"].encode(), r)
           for i, r in enumerate([*broken, *recs[3:]])]  # fmt: skip
    report = BackfillReport()
    rows = list(backfill_rows(spec, evs, report=report))
    assert dict(report.dead_letters) == {"OUT_OF_RANGE": 1, "UNKNOWN_ENUM": 1, "NAN_FEATURE": 1}
    assert len(rows) == len(recs) - 3
    # Unchecked, every event is a row and enters the state.
    assert len(list(backfill_rows(spec, evs, check_inputs=False))) == len(recs)


def test_avro_files_are_one_stream(tmp_path: Path):
    spec = load_model_spec(MODEL_2)
    assert spec.features is not None
    recs = _payments(30, 3, 4)
    schema = schemas.parsed("Payment")
    half = len(recs) // 2
    paths = [tmp_path / "a.avro", tmp_path / "b.avro"]
    for path, part in zip(paths, (recs[:half], recs[half:]), strict=True):
        with path.open("wb") as fh:
            fastavro.writer(fh, schema, part)
    events = list(avro_file_events(paths, "account_id"))
    assert [(e.partition, e.offset) for e in events] == [(0, i) for i in range(len(recs))]
    rows = list(backfill_rows(spec, events))
    # The same values as the reference over the records as written (event_time in ms).
    plain = [SourceEvent(0, i, r["account_id"].encode(), r) for i, r in enumerate(recs)]
    ref = _expected(spec.features, plain)
    _assert_same(_got(rows, spec.features), ref)
    assert any(r["txn_count_1h"] > 2 for r in rows)  # bursts are there
    out = tmp_path / "train.avro"
    n = write_avro(rows, out, output_schema(schemas.schema_dict("Payment"),
                                            spec.features.names, None))  # fmt: skip
    with out.open("rb") as fh:
        back = list(fastavro.reader(fh))
    assert n == len(back) == len(recs)
    assert back[5]["distinct_merchants_24h"] == rows[5]["distinct_merchants_24h"]


def test_cli_backfill_of_avro_files(tmp_path: Path):
    recs = _payments(25, 3, 5)
    src = tmp_path / "payments.avro"
    with src.open("wb") as fh:
        fastavro.writer(fh, schemas.parsed("Payment"), recs)
    labels = tmp_path / "labels.csv"
    labels.write_text("event_id,label\n" + f"{recs[0]['event_id']},fraud\n")
    out = tmp_path / "train.csv"
    runner = CliRunner()
    result = runner.invoke(app, ["features", "backfill", "--model", str(MODEL_2), "--avro",
                                 str(src), "--out", str(out), "--labels-file", str(labels),
                                 "--no-progress", "-o", "json"],
                           obj=Deps(env={}, stack=lambda: None))  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads(result.output)
    assert summary["events_read"] == summary["rows_written"] == len(recs)
    assert summary["dead_letters"] == 0 and summary["late_events"] == 0
    assert summary["labels"] == 1
    with out.open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(recs)
    assert table[0]["label"] == "fraud" and table[1]["label"] == ""
    assert table[0]["event_time"] == str(recs[0]["event_time"])
    assert {"txn_count_1h", "distinct_merchants_24h", "_partition", "_offset"} <= set(table[0])


def test_cli_refuses_a_model_without_features(tmp_path: Path):
    result = CliRunner().invoke(
        app, ["features", "backfill", "--model", str(ROOT / "deploy/models/fraud/1.1.0"),
              "--avro", str(tmp_path / "x.avro"), "--out", str(tmp_path / "o.csv")],
        obj=Deps(env={}, stack=lambda: None),
    )  # fmt: skip
    assert result.exit_code != 0
    assert "has no features" in str(result.exception)
