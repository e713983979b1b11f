"""The insight monitor in the batch handler (no broker), and drift.seasonality wired through
StreamMonitor."""

from __future__ import annotations

import io

import fastavro
import numpy as np
import pytest

from streamproc import schemas, synth
from streamproc.backends.onnx import OnnxRuntimeBackend
from streamproc.codecs.encoder import decode_record
from streamproc.codecs.wire import frame
from streamproc.config import DriftConfig, InsightSettings
from streamproc.drift.seasonal import DAY_MS, SeasonalDriftMonitor, hour_of_day
from streamproc.models.spec import load_model_spec
from streamproc.pipeline.handler import BatchHandler, OutputTopics, SchemaIds
from streamproc.pipeline.insight import InsightMonitor, KeyTap
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
