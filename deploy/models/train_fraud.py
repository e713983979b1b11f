"""Train the demo fraud model on synthetic events and export it as ONNX + model.yaml.

Deterministic: the data come from :mod:`streamproc.synth` with fixed seeds, the network is a
small MLP trained in numpy (float64, Adam, seeded initialisation and shuffling).
Standardisation is folded into the first layer, so the exported graph is just
``Gemm -> Relu -> Gemm -> Softmax`` on raw feature columns::

    features float32 [N, F]  ->  probabilities float32 [N, 2]   (opset 17, dynamic N)

Version 2.0.0 reads raw ``Payment`` events (:mod:`streamproc.synth_payments`): its
``features:`` section defines windowed aggregates per account, and its training set is made
by :func:`streamproc.features.offline.backfill_rows`, the same code as ``streamproc
features backfill``, over generated history, so that it trains on the values the pipeline
computes online. A feature with no events in its window (NaN) is imputed as its input says.

Run from the repository root (writes every demo version)::

    .venv/bin/python deploy/models/train_fraud.py
    .venv/bin/python deploy/models/train_fraud.py --only 1.1.0
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from streamproc import synth, synth_payments
from streamproc.features.offline import SourceEvent, backfill_rows
from streamproc.models.spec import ModelSpec

HERE = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 8  # the IR version of opset 17: readable by ONNX Runtime and TensorRT 10

Array = npt.NDArray[np.float64]

INPUTS: list[dict[str, Any]] = [
    {"field": "amount", "min": 0.0, "max": 1.0e6},
    {"field": "merchant_risk", "min": 0.0, "max": 1.0},
    {"field": "distance_from_home_km", "min": 0.0, "max": 20_040.0},
    {"field": "minutes_since_last_txn", "min": 0.0},
    {"field": "txn_count_1h", "min": 0},
    {"field": "txn_count_24h", "min": 0},
    {"field": "avg_amount_7d", "min": 0.0, "max": 1.0e6},
    {"field": "card_age_days", "min": 0},
    {"field": "hour_of_day", "min": 0, "max": 23},
    {"field": "failed_logins_24h", "min": 0},
    {"field": "is_international", "min": 0, "max": 1},
    {
        "field": "device_trust_score",
        "null": "impute",
        "impute": 0.5,
        "min": 0.0,
        "max": 1.0,
    },
    {"field": "channel", "encoding": "onehot", "symbols": list(synth.CHANNELS)},
]


# 2.x: raw payments, windowed features per account (the Kafka record key).
PAYMENT_FEATURES: dict[str, Any] = {
    "allowed_lateness": "5m",
    "definitions": [
        {"name": "txn_count_1h", "agg": "count", "window": {"size": "1h"}},
        {"name": "txn_count_24h", "agg": "count", "window": {"size": "24h"}},
        {"name": "amount_sum_1h", "agg": "sum", "value": "amount", "window": {"size": "1h"}},
        {"name": "avg_amount_7d", "agg": "mean", "value": "amount", "window": {"size": "7d"}},
        {"name": "std_amount_7d", "agg": "std", "value": "amount", "window": {"size": "7d"}},
        {"name": "max_amount_24h", "agg": "max", "value": "amount", "window": {"size": "24h"}},
        {"name": "minutes_since_last_txn", "agg": "since_last", "unit": "min",
         "window": {"size": "7d"}},
        {"name": "distinct_merchants_24h", "agg": "distinct_count", "value": "merchant_id",
         "window": {"size": "24h"}},
    ],
}  # fmt: skip
# The event's own fields, then the features (NaN, no events in the window: imputed).
PAYMENT_EVENT_INPUTS: list[dict[str, Any]] = [
    {"field": "amount", "min": 0.0, "max": 1.0e6},
    {"field": "merchant_risk", "min": 0.0, "max": 1.0},
    {"field": "distance_from_home_km", "min": 0.0, "max": 20_040.0},
    {"field": "card_age_days", "min": 0},
    {"field": "failed_logins_24h", "min": 0},
    {"field": "is_international", "min": 0, "max": 1},
    {"field": "device_trust_score", "null": "impute", "impute": 0.5, "min": 0.0, "max": 1.0},
    {"field": "channel", "encoding": "onehot", "symbols": list(synth.CHANNELS)},
]
PAYMENT_FEATURE_INPUTS: list[dict[str, Any]] = [
    {"field": "txn_count_1h", "min": 0},
    {"field": "txn_count_24h", "min": 0},
    {"field": "amount_sum_1h", "min": 0.0},
    {"field": "avg_amount_7d", "null": "impute", "impute": 0.0, "min": 0.0},
    {"field": "std_amount_7d", "null": "impute", "impute": 0.0, "min": 0.0},
    {"field": "max_amount_24h", "null": "impute", "impute": 0.0, "min": 0.0},
    {"field": "minutes_since_last_txn", "null": "impute", "impute": 10_080.0, "min": 0.0},
    {"field": "distinct_merchants_24h", "min": 0},
]
PAYMENT_DAYS = 30.0
PAYMENT_TRAIN_ACCOUNTS = 2_000
PAYMENT_HOLDOUT_ACCOUNTS = 1_000


@dataclass(frozen=True)
class Recipe:
    version: str
    hidden: int
    init_seed: int
    data_seed: int
    changelog: str
    payments: bool = False  # raw Payment events and windowed features (2.x)


RECIPES = {
    "1.0.0": Recipe("1.0.0", 16, 0, 100, "First demo model: 16 hidden ReLU units."),
    "1.1.0": Recipe(
        "1.1.0", 20, 1, 200, "Retrained on fresh synthetic data; 20 hidden ReLU units."
    ),
    "2.0.0": Recipe(
        "2.0.0",
        24,
        2,
        300,
        "Reads raw Payment events (no precomputed aggregates): 8 windowed features per "
        "account over event time (counts 1h/24h, amount sum 1h, mean and std 7d, max 24h, "
        "minutes since the last payment, distinct merchants 24h), trained on values from "
        "features backfill over 30 days of generated history; 24 hidden ReLU units.",
        payments=True,
    ),
}
N_TRAIN = 50_000
N_HOLDOUT = 20_000
HOLDOUT_SEED = 999


def spec_dict(recipe: Recipe, metrics: dict[str, float]) -> dict[str, Any]:
    auc = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    payments: dict[str, Any] = {}
    if recipe.payments:
        payments = {
            "reader_schema": "../../../../schemas/Payment.avsc",
            "features": PAYMENT_FEATURES,
        }
    return {
        "name": "fraud",
        "version": recipe.version,
        "file": "model.onnx",
        "input_tensor": "features",
        "inputs": PAYMENT_EVENT_INPUTS + PAYMENT_FEATURE_INPUTS if recipe.payments else INPUTS,
        "outputs": {
            "tensor": "probabilities",
            "score_index": 1,
            "labels": ["legit", "fraud"],
            "threshold": 0.5,
        },
        "backends": ["tensorrt", "torch-cuda", "onnxruntime"],
        # up to 1024 (a pipeline batch holds up to max_batch_size, 4096): a batch above the largest
        # bucket runs as several synchronous GPU calls (measured on an H200: benchmarks/GPU.md)
        "buckets": [1, 8, 32, 64, 128, 256, 1024],
        "reader_schema": "../../../../schemas/Transaction.avsc",
        **payments,
        "changelog": f"{recipe.changelog} AUC: {auc}.",
    }


def auc(scores: npt.NDArray[Any], labels: npt.NDArray[Any]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties averaged)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    pos = labels.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _forward(x: Array, p: dict[str, Array]) -> tuple[Array, Array]:
    h = np.maximum(x @ p["w1"] + p["b1"], 0.0)
    logits = h @ p["w2"] + p["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return h, e / e.sum(axis=1, keepdims=True)


def train(
    x: Array, y: npt.NDArray[np.int8], hidden: int, seed: int, epochs: int = 40
) -> dict[str, Array]:
    """Adam on softmax cross-entropy; ``x`` is already standardised."""
    rng = np.random.default_rng(seed)
    n, f = x.shape
    p = {
        "w1": rng.normal(0.0, np.sqrt(2.0 / f), (f, hidden)),
        "b1": np.zeros(hidden),
        "w2": rng.normal(0.0, np.sqrt(2.0 / hidden), (hidden, 2)),
        "b2": np.zeros(2),
    }
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    onehot = np.eye(2)[y.astype(np.int64)]
    lr, beta1, beta2, eps, l2, batch = 3e-3, 0.9, 0.999, 1e-8, 1e-4, 512
    step = 0
    for _ in range(epochs):
        perm = rng.permutation(n)
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            xb, tb = x[idx], onehot[idx]
            h, prob = _forward(xb, p)
            d_logits = (prob - tb) / len(idx)
            grads = {
                "w2": h.T @ d_logits + l2 * p["w2"],
                "b2": d_logits.sum(axis=0),
            }
            d_h = (d_logits @ p["w2"].T) * (h > 0)
            grads["w1"] = xb.T @ d_h + l2 * p["w1"]
            grads["b1"] = d_h.sum(axis=0)
            step += 1
            for k, g in grads.items():
                m[k] = beta1 * m[k] + (1 - beta1) * g
                v[k] = beta2 * v[k] + (1 - beta2) * g * g
                m_hat = m[k] / (1 - beta1**step)
                v_hat = v[k] / (1 - beta2**step)
                p[k] -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def fold_standardisation(p: dict[str, Array], mean: Array, std: Array) -> dict[str, Array]:
    """Weights acting on raw features: ``((x - mean) / std) @ w1 + b1 == x @ w1' + b1'``."""
    w1 = p["w1"] / std[:, None]
    b1 = p["b1"] - (mean / std) @ p["w1"]
    return {**p, "w1": w1, "b1": b1}


def to_onnx(p: dict[str, Array], metadata: dict[str, str]) -> onnx.ModelProto:
    n_features, hidden = p["w1"].shape
    inits = [
        numpy_helper.from_array(p[k].astype(np.float32), name=k) for k in ("w1", "b1", "w2", "b2")
    ]
    nodes = [
        helper.make_node("Gemm", ["features", "w1", "b1"], ["hidden_pre"], name="dense1"),
        helper.make_node("Relu", ["hidden_pre"], ["hidden"], name="relu1"),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"], name="dense2"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "fraud_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="streamproc-train_fraud",
        ir_version=IR_VERSION,
        doc_string=f"Demo fraud MLP {n_features} -> {hidden} ReLU -> 2 softmax.",
    )
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def payment_columns(spec: ModelSpec, n_accounts: int, seed: int) -> dict[str, npt.NDArray[Any]]:
    """Generated payments with their features from :func:`backfill_rows` (one stream, keyed
    by account as the demo producer keys its records), as columns plus ``synth.LABEL``."""
    cols = synth_payments.generate_columns(n_accounts, days=PAYMENT_DAYS, seed=seed)
    records = synth_payments.to_records(cols)
    labels = {r["event_id"]: str(y) for r, y in zip(records, cols[synth.LABEL].tolist(),
                                                     strict=True)}  # fmt: skip
    events = (SourceEvent(0, i, r["account_id"].encode(), r) for i, r in enumerate(records))
    rows = list(backfill_rows(spec, events, labels=labels, label_column="_label"))
    if len(rows) != len(records):
        raise SystemExit(f"backfill dropped {len(records) - len(rows)} generated payments")
    out: dict[str, npt.NDArray[Any]] = {}
    for f in spec.inputs:
        values = [row[f.field] for row in rows]
        if f.encoding == "value":
            out[f.field] = np.array([np.nan if v is None else v for v in values], np.float64)
        else:
            out[f.field] = np.array(values, dtype=str)
    out[synth.LABEL] = np.array([int(row["_label"]) for row in rows], np.int8)
    return out


def _data(
    recipe: Recipe, skeleton: ModelSpec
) -> tuple[Array, Array, npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    """Training and holdout matrices and labels."""
    if recipe.payments:
        train_cols = payment_columns(skeleton, PAYMENT_TRAIN_ACCOUNTS, recipe.data_seed)
        hold_cols = payment_columns(skeleton, PAYMENT_HOLDOUT_ACCOUNTS, HOLDOUT_SEED)
    else:
        train_cols = synth.generate_columns(N_TRAIN, seed=recipe.data_seed)
        hold_cols = synth.generate_columns(N_HOLDOUT, seed=HOLDOUT_SEED)
    x_raw = synth.feature_matrix(train_cols, skeleton).astype(np.float64)
    xh_raw = synth.feature_matrix(hold_cols, skeleton).astype(np.float64)
    return x_raw, xh_raw, train_cols[synth.LABEL], hold_cols[synth.LABEL]


def _fit(x_raw: Array, y: npt.NDArray[np.int8], recipe: Recipe) -> dict[str, Array]:
    mean, std = x_raw.mean(axis=0), x_raw.std(axis=0)
    std = np.where(std < 1e-6, 1.0, std)
    params = train((x_raw - mean) / std, y, recipe.hidden, recipe.init_seed)
    return fold_standardisation(params, mean, std)


def build(recipe: Recipe, out_root: Path) -> dict[str, float]:
    skeleton = ModelSpec.model_validate(spec_dict(recipe, {}))
    x_raw, xh_raw, y, yh = _data(recipe, skeleton)
    folded = _fit(x_raw, y, recipe)

    metrics = {
        "train_auc": auc(_forward(x_raw, folded)[1][:, 1], y),
        "holdout_auc": auc(_forward(xh_raw, folded)[1][:, 1], yh),
    }
    if recipe.payments:
        # What the windowed features add: the same network on the event's own fields.
        own = skeleton.model_copy(
            update={"inputs": skeleton.inputs[: -len(PAYMENT_FEATURE_INPUTS)]}
        )
        n_own = own.n_features
        alone = _fit(x_raw[:, :n_own], y, recipe)
        metrics["holdout_auc_without_windowed_features"] = auc(
            _forward(xh_raw[:, :n_own], alone)[1][:, 1], yh
        )
    meta = {
        "train_rows": str(len(y)),
        "train_fraud_rate": f"{y.mean():.4f}",
        "data_seed": str(recipe.data_seed),
        "init_seed": str(recipe.init_seed),
        "holdout_seed": str(HOLDOUT_SEED),
        **{k: f"{v:.4f}" for k, v in metrics.items()},
    }
    model = to_onnx(folded, meta)
    spec = ModelSpec.model_validate(spec_dict(recipe, metrics))
    assert spec.n_features == x_raw.shape[1]

    out = out_root / recipe.version
    out.mkdir(parents=True, exist_ok=True)
    onnx_bytes = model.SerializeToString()
    (out / "model.onnx").write_bytes(onnx_bytes)
    text = yaml.safe_dump(spec_dict(recipe, metrics), sort_keys=False, width=100)
    (out / "model.yaml").write_text(
        "# Written by deploy/models/train_fraud.py; edit the script, not this file.\n" + text
    )
    _check_with_onnxruntime(out / "model.onnx", xh_raw, _forward(xh_raw, folded)[1])
    print(
        json.dumps(
            {
                "version": recipe.version,
                "hidden": recipe.hidden,
                "bytes": len(onnx_bytes),
                "sha256": hashlib.sha256(onnx_bytes).hexdigest()[:16],
                **{k: round(v, 4) for k, v in metrics.items()},
            }
        )
    )
    return metrics


def _check_with_onnxruntime(path: Path, x: Array, expected: Array) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["probabilities"], {"features": x.astype(np.float32)})[0]
    err = float(np.abs(got - expected).max())
    if err > 1e-4:
        raise SystemExit(f"{path}: ONNX Runtime disagrees with numpy by {err}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(RECIPES), help="build one version")
    ap.add_argument("--out", type=Path, default=HERE / "fraud", help="model root directory")
    args = ap.parse_args()
    for version, recipe in RECIPES.items():
        if args.only in (None, version):
            build(recipe, args.out)


if __name__ == "__main__":
    main()
