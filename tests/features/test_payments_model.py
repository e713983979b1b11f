"""The realistic demo's pieces: raw payments whose fraud shows in windowed features, and
fraud 2.0.0, which reads those features and scores backfilled history well."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from streamproc import synth, synth_payments
from streamproc.features.offline import SourceEvent, backfill_rows
from streamproc.models.spec import load_model_spec

MODEL_2 = Path(__file__).resolve().parents[2] / "deploy" / "models" / "fraud" / "2.0.0"


def _rows(n_accounts: int, days: float, seed: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    spec = load_model_spec(MODEL_2)
    cols = synth_payments.generate_columns(n_accounts, days=days, seed=seed)
    records = synth_payments.to_records(cols)
    events = [SourceEvent(0, i, r["account_id"].encode(), r) for i, r in enumerate(records)]
    rows = list(backfill_rows(spec, events))
    assert len(rows) == len(records)  # generated payments pass the model's constraints
    return rows, cols[synth_payments.LABEL]


def test_the_model_reads_windowed_features_of_the_raw_payment():
    spec = load_model_spec(MODEL_2)
    assert spec.features is not None and spec.reader_schema_path is not None
    assert spec.reader_schema_path.name == "Payment.avsc"
    aggs = {d.agg for d in spec.features.definitions}
    assert len(spec.features.definitions) >= 6
    assert {"count", "mean", "std", "since_last", "distinct_count"} <= aggs
    inputs = {f.field for f in spec.inputs}
    assert set(spec.features.names) <= inputs
    assert not {"txn_count_1h", "avg_amount_7d"} & set(synth_payments.FIELDS)


def test_fraud_shows_in_the_windowed_features():
    rows, y = _rows(300, 20, 5)
    fraud = y.astype(bool)
    assert 0.01 < fraud.mean() < 0.06

    def mean(name: str, which: np.ndarray) -> float:
        v = np.array([r[name] for r in rows], np.float64)[which]
        return float(np.nanmean(v))

    for name, factor in (("txn_count_1h", 3), ("amount_sum_1h", 5), ("max_amount_24h", 2),
                         ("distinct_merchants_24h", 1.4)):  # fmt: skip
        assert mean(name, fraud) > factor * mean(name, ~fraud), name
    assert mean("minutes_since_last_txn", fraud) < mean("minutes_since_last_txn", ~fraud) / 2
    ratio = np.array([r["amount"] / r["avg_amount_7d"] if r["avg_amount_7d"] > 0 else np.nan
                      for r in rows])  # fmt: skip
    assert np.nanmedian(ratio[fraud]) > 2 * np.nanmedian(ratio[~fraud])


def test_model_2_scores_backfilled_history():
    spec = load_model_spec(MODEL_2)
    rows, y = _rows(300, 30, 4242)  # accounts it was not trained on
    cols: dict[str, Any] = {}
    for f in spec.inputs:
        values = [r[f.field] for r in rows]
        cols[f.field] = (np.array([np.nan if v is None else v for v in values], np.float64)
                         if f.encoding == "value" else np.array(values, dtype=str))  # fmt: skip
    x = synth.feature_matrix(cols, spec)
    sess = ort.InferenceSession(str(spec.model_path), providers=["CPUExecutionProvider"])
    scores = sess.run(["probabilities"], {"features": x})[0][:, 1]
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = y.astype(bool)
    auc = (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())
    assert auc > 0.95


def test_the_payments_pipeline_registers_payment_on_its_input():
    from streamproc.config import load_config
    from streamproc.pipeline.app import input_schema_text

    root = MODEL_2.parents[2]
    payments = load_config(root / "pipelines" / "payments.yaml")
    assert load_model_spec(payments.model).version == "2.0.0"
    assert '"name": "Payment"' in input_schema_text(payments)
    assert '"name": "Transaction"' in input_schema_text(
        load_config(root / "pipelines" / "fraud.yaml")
    )
