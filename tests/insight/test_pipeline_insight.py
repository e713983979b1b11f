"""The insight monitor in the batch handler (no broker), and drift.seasonality wired through
StreamMonitor."""

from __future__ import annotations

import io

import fastavro
import numpy as np
import pytest

from streamproc import schemas, synth
from streamproc.backends.onnx import OnnxRuntimeBackend
from streamproc.codecs.encoder import decode_prediction, decode_record
from streamproc.codecs.wire import frame
from streamproc.config import DriftConfig, InsightSettings
from streamproc.drift.seasonal import DAY_MS, SeasonalDriftMonitor, hour_of_day
from streamproc.insight.outliers import OutlierScorer
from streamproc.models.spec import load_model_spec
from streamproc.pipeline.handler import BatchHandler, OutputTopics, SchemaIds
from streamproc.pipeline.insight import InsightMonitor, KeyTap, row_scores
from streamproc.pipeline.monitoring import StreamMonitor, build_profile, load_profile
from streamproc.pipeline.scoring import SingleScorer
from streamproc.types import DecodedBatch, RawBatch

DEMO = "deploy/models/fraud/1.1.0"


def decoder(spec):
    """The pipeline's decoder, its writer schema from memory (no registry)."""
    from streamproc.codecs.decoder import BatchDecoder
    from streamproc.codecs.source import DictSchemaSource
    from streamproc.pipeline.app import reader_schema

    return BatchDecoder(spec, reader_schema(spec),
                        DictSchemaSource({1: schemas.schema_text("Transaction")}))  # fmt: skip


def raw(records, keys, start):
    parsed = schemas.parsed("Transaction")
    vals = []
    for r in records:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, r)
        vals.append(frame(1, buf.getvalue()))
    n = len(vals)
    return RawBatch("in", vals, keys, np.zeros(n, np.int32),
                    np.arange(start, start + n, dtype=np.int64), [None] * n)  # fmt: skip


def test_probing_alert_reaches_the_alerts_topic_through_the_handler():
    spec = load_model_spec(DEMO)
    backend = OnnxRuntimeBackend.from_spec(spec)
    settings = InsightSettings.model_validate(
        {"outliers": {"enabled": True}, "probing": {"enabled": True}}
    )
    tap = KeyTap(SingleScorer(spec, backend))
    mon = InsightMonitor(StreamMonitor(spec, DriftConfig(), load_profile(spec)), tap, settings)
    h = BatchHandler(decoder=decoder(spec), scorer=tap,
                     topics=OutputTopics("p", "dlq", "alerts", "m", "s"),
                     schema_ids=SchemaIds(2, 3, 4, 5), processor_id="t", pipeline="t",
                     monitor=mon, snapshot_interval_s=3600)  # fmt: skip
    # A prober: one event scoring near the threshold, resent with its amount nudged.
    cols = synth.generate_columns(50_000, seed=0)
    s = backend.infer(synth.feature_matrix(cols, spec))[:, 1]
    base = synth.to_records({k: v[[int(np.argmin(np.abs(s - 0.5)))]] for k, v in cols.items()})[0]
    normal, _ = synth.generate(40 * 30, seed=4)
    alerts = []
    for i in range(30):
        probe = dict(base, event_id=f"probe-{i}", amount=base["amount"] * (1 + 0.002 * i))
        batch = [*normal[i * 40 : (i + 1) * 40], probe]
        keys = [r["account_id"].encode() for r in batch[:-1]] + [b"mallory"]
        out = h(raw(batch, keys, i * 41))
        alerts += [decode_record("Alert", r.value) for r in out.records if r.topic == "alerts"]
    backend.close()
    probing = [a for a in alerts if a["type"] == "probing"]
    assert [(a["feature"], a["state"]) for a in probing] == [("key=mallory", "FIRING")]
    assert mon.outliers is not None and mon.outliers.events == 30 * 41
    assert mon.last_outlier_scores.shape == (41,)


@pytest.fixture(scope="module")
def seasonal_profile():
    spec = load_model_spec(DEMO)
    n = 14 * 2_880  # 14 days, one event per 30 s
    cols = synth.generate_columns(n, seed=1)
    t = 1_767_225_600_000 + np.arange(n, dtype=np.int64) * 30_000
    cols["amount"] = cols["amount"] * np.exp(np.sin(2 * np.pi * hour_of_day(t) / 24))
    x = synth.feature_matrix(cols, spec)
    return spec, build_profile(spec, x, event_time_ms=t, seasonality="daily")


def test_stream_monitor_uses_the_seasonal_reference(seasonal_profile):
    spec, prof = seasonal_profile
    assert prof.seasonal is not None and prof.seasonal["period"] == "daily"
    cfg = DriftConfig(seasonality="daily")
    mon = StreamMonitor(spec, cfg, prof)
    assert isinstance(mon.drift, SeasonalDriftMonitor)
    # Two more days with the same cycle: no input or prediction drift alert.
    n = 2 * 2_880
    cols = synth.generate_columns(n, seed=2)
    t = 1_767_225_600_000 + 14 * DAY_MS + np.arange(n, dtype=np.int64) * 30_000
    cols["amount"] = cols["amount"] * np.exp(np.sin(2 * np.pi * hour_of_day(t) / 24))
    x = synth.feature_matrix(cols, spec)
    backend = OnnxRuntimeBackend.from_spec(spec)
    alerts = []
    for i in range(0, n, 960):
        xb = x[i : i + 960]
        m = len(xb)
        dec = DecodedBatch(xb, [f"e{j}" for j in range(m)], t[i : i + m], np.zeros(m, np.uint8),
                           [""] * m, np.ones(m, np.int32))  # fmt: skip
        alerts += mon.observe(dec, np.arange(m), backend.infer(xb),
                              np.arange(i, i + m, dtype=np.int64), {})  # fmt: skip
    backend.close()
    assert [(a.feature, a.statistic, a.message) for a in alerts] == []
    # Without the seasonal reference in the profile, the setting is refused.
    prof.seasonal = None
    with pytest.raises(Exception, match="seasonal reference"):
        StreamMonitor(spec, cfg, prof)


def _handler(spec, scorer, monitor=None, row_scores=None):
    return BatchHandler(decoder=decoder(spec), scorer=scorer,
                        topics=OutputTopics("p", "dlq", "alerts", "m", "s"),
                        schema_ids=SchemaIds(2, 3, 4, 5), processor_id="t", pipeline="t",
                        monitor=monitor, snapshot_interval_s=3600,
                        row_scores=row_scores)  # fmt: skip


def _predictions(out):
    return [decode_prediction(v) for b in out.blocks if b.topic == "p" for v in b.values]


def test_predictions_carry_the_outlier_score_of_their_row(monkeypatch):
    """insight.outliers: each prediction's outlier_score is the stable version's
    OutlierScorer on its own input row, written before encoding; the outlier-share monitor
    counts those same scores, scored once per batch."""
    spec = load_model_spec(DEMO)
    backend = OnnxRuntimeBackend.from_spec(spec)
    settings = InsightSettings.model_validate({"outliers": {"enabled": True}})
    tap = KeyTap(SingleScorer(spec, backend))
    mon = InsightMonitor(StreamMonitor(spec, DriftConfig(), load_profile(spec)), tap, settings)
    assert row_scores(mon) is mon
    h = _handler(spec, tap, mon, row_scores(mon))
    reference = OutlierScorer(load_profile(spec), quantile=settings.outliers.quantile)
    calls = []
    real = OutlierScorer.score

    def counted(self, x):
        calls.append(len(x))
        return real(self, x)

    monkeypatch.setattr(OutlierScorer, "score", counted)
    records, _ = synth.generate(90, seed=5)
    records[3] = dict(records[3], amount=records[3]["amount"] * 1e4)  # far out
    written = {}
    for i in range(3):
        batch = records[i * 30 : (i + 1) * 30]
        keys = [r["account_id"].encode() for r in batch]
        vals = raw(batch, keys, i * 30)
        calls.clear()
        preds = _predictions(h(vals))
        assert calls == [30]  # the handler's call; the monitor reused its scores
        x = decoder(spec).decode(vals.values).features
        want = real(reference, x)
        assert [p["event_id"] for p in preds] == [r["event_id"] for r in batch]
        assert [p["outlier_score"] for p in preds] == want.tolist()
        assert np.array_equal(mon.last_outlier_scores, want)
        written.update((p["event_id"], p["outlier_score"]) for p in preds)
    backend.close()
    assert written[records[3]["event_id"]] > reference.threshold
    assert mon.outliers is not None and mon.outliers.events == 90
    assert mon.outliers.outliers == sum(v > reference.threshold for v in written.values())


def test_with_outliers_off_the_prediction_outlier_score_is_null():
    spec = load_model_spec(DEMO)
    backend = OnnxRuntimeBackend.from_spec(spec)
    probing = InsightSettings.model_validate({"probing": {"enabled": True}})
    tap = KeyTap(SingleScorer(spec, backend))
    mon = InsightMonitor(StreamMonitor(spec, DriftConfig(), load_profile(spec)), tap, probing)
    assert row_scores(mon) is None and row_scores(None) is None
    records, _ = synth.generate(20, seed=6)
    keys = [r["account_id"].encode() for r in records]
    for h in (_handler(spec, SingleScorer(spec, backend)), _handler(spec, tap, mon)):
        preds = _predictions(h(raw(records, keys, 0)))
        assert len(preds) == 20
        assert all(p["outlier_score"] is None for p in preds)
    backend.close()


class _Worker:
    """An explanation worker that counts the idle pipeline's calls."""

    def __init__(self) -> None:
        self.flushes = 0

    def flush_due(self) -> None:
        self.flushes += 1


def test_an_idle_pipeline_has_the_explanations_held_rows_sent():
    # The runner asks the handler for its pending records when it finds nothing to read;
    # the explanation worker then sends the rows it holds for their linger, which no next
    # batch would carry on an idle stream.
    spec = load_model_spec(DEMO)
    backend = OnnxRuntimeBackend.from_spec(spec)
    settings = InsightSettings.model_validate({"explanations": {"enabled": True}})
    tap = KeyTap(SingleScorer(spec, backend))
    worker = _Worker()
    mon = InsightMonitor(StreamMonitor(spec, DriftConfig(), load_profile(spec)), tap, settings,
                         worker=worker)  # type: ignore[arg-type]  # fmt: skip
    h = _handler(spec, tap, mon)
    assert h.pending() == [] and worker.flushes == 1
    backend.close()
