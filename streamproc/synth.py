"""Deterministic synthetic ``Transaction`` events with fraud labels, for demos and benchmarks.

Every event is a function of ``(seed, index)`` only: events are drawn in fixed blocks, each
block from its own ``numpy`` generator seeded with ``(seed, block)``, so ``generate(n)`` is a
prefix of ``generate(n + m)`` and a producer can emit one endless stream in chunks with
``offset``. Labels come from a hidden rule on the features plus Gaussian noise (about 4%
fraud at ``shift=0``). ``shift`` moves the log-mean of ``amount`` and
``distance_from_home_km`` by that many of their standard deviations, a covariate shift for
drift demos; the underlying random draws are the same for every ``shift``.

>>> records, labels = generate(3, seed=7)
>>> sorted(records[0]) == sorted(FIELDS)
True
>>> records[0]["event_id"], records[0]["event_time"], records[1]["event_time"]
('ev-7-0000000000', 1700000000000, 1700000000001)
>>> [r["channel"] in CHANNELS for r in records], labels.dtype.name
([True, True, True], 'int8')
>>> a, _ = generate(5, seed=7)
>>> b, _ = generate(2, seed=7, offset=3)
>>> a[3:] == b
True
>>> cols = generate_columns(50_000, seed=1)
>>> bool(0.03 <= cols[LABEL].mean() <= 0.05)
True
>>> shifted = generate_columns(50_000, seed=1, shift=2.0)
>>> bool(np.median(shifted["amount"]) > 5 * np.median(cols["amount"]))
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from streamproc.errors import ModelError
from streamproc.models.spec import ModelSpec

__all__ = [
    "CHANNELS",
    "DEFAULT_START_MS",
    "FIELDS",
    "LABEL",
    "feature_matrix",
    "generate",
    "generate_columns",
    "to_records",
]

CHANNELS: tuple[str, ...] = ("POS", "ECOM", "ATM", "MOTO")
# Transaction fields, in schema order.
FIELDS: tuple[str, ...] = (
    "event_id",
    "account_id",
    "event_time",
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
    "is_international",
    "device_trust_score",
    "channel",
)
LABEL = "label"  # key of the int8 fraud label in generate_columns' result
DEFAULT_START_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z; fixed so output is reproducible

_BLOCK = 8192
_N_ACCOUNTS = 100_000
_CHANNEL_P = (0.55, 0.30, 0.10, 0.05)
_CHANNEL_RISK = np.array([0.0, 0.6, 0.3, 1.0])
_LOG_AMOUNT_SD = 1.0  # sd of log(amount): 0.6 (account level) and 0.8 (this payment)
_LOG_DISTANCE_SD = 1.3
_MAX_AMOUNT = 1e6
_MAX_DISTANCE_KM = 20_000.0
_NULL_DEVICE_RATE = 0.10
_FRAUD_THRESHOLD = 3.7  # puts about 4% of shift-0 events above the hidden rule
_hours = np.arange(24)
_HOUR_P = 0.25 + np.exp(-0.5 * ((_hours - 14) / 4.0) ** 2)
_HOUR_P = _HOUR_P / _HOUR_P.sum()


def _block(seed: int, block: int, shift: float) -> dict[str, npt.NDArray[Any]]:
    """Draw one block of ``_BLOCK`` events (numeric columns only) and their labels."""
    rng = np.random.default_rng([seed, block])
    m = _BLOCK
    log_avg = 3.7 + 0.6 * rng.standard_normal(m)
    log_amount = log_avg + 0.8 * rng.standard_normal(m) + shift * _LOG_AMOUNT_SD
    amount = np.round(np.clip(np.exp(log_amount), 0.01, _MAX_AMOUNT), 2)
    avg_amount = np.round(np.exp(log_avg), 2)
    merchant_risk = rng.beta(2.0, 10.0, m).astype(np.float32)
    intl = rng.random(m) < 0.07
    log_dist = 1.5 + _LOG_DISTANCE_SD * rng.standard_normal(m) + shift * _LOG_DISTANCE_SD
    distance = np.clip(np.exp(log_dist) * np.where(intl, 40.0, 1.0), 0.0, _MAX_DISTANCE_KM)
    count_1h = rng.poisson(0.3, m).astype(np.int32)
    count_24h = (count_1h + rng.poisson(3.0, m)).astype(np.int32)
    minutes = np.round(rng.exponential(720.0, m) / (1.0 + 4.0 * count_1h), 3)
    card_age = np.minimum(rng.exponential(900.0, m), 10_000).astype(np.int32)
    hour = rng.choice(24, size=m, p=_HOUR_P).astype(np.int32)
    failed = rng.poisson(0.08, m).astype(np.int32)
    trust = rng.beta(6.0, 2.0, m)
    trust[rng.random(m) < _NULL_DEVICE_RATE] = np.nan
    channel = rng.choice(len(CHANNELS), size=m, p=_CHANNEL_P).astype(np.int8)
    noise = rng.normal(0.0, 0.6, m)
    acct = (_N_ACCOUNTS * rng.random(m) ** 2).astype(np.int64)

    # The hidden rule: piecewise-linear terms a small ReLU network can learn.
    risk = (
        1.5 * (amount > 4.0 * avg_amount)
        + 3.0 * merchant_risk
        + 0.8 * (distance > 100.0)
        + 0.5 * np.minimum(count_1h, 4)
        + 0.9 * np.minimum(failed, 3)
        + 0.8 * intl
        + np.where(np.isnan(trust), 1.0, 1.5 * (1.0 - np.nan_to_num(trust)))
        + 0.9 * (hour < 6)
        + _CHANNEL_RISK[channel]
        + 0.8 * (card_age < 30)
        + noise
    )
    return {
        "account": acct,
        "amount": amount,
        "merchant_risk": merchant_risk,
        "distance_from_home_km": np.round(distance, 3),
        "minutes_since_last_txn": minutes,
        "txn_count_1h": count_1h,
        "txn_count_24h": count_24h,
        "avg_amount_7d": avg_amount,
        "card_age_days": card_age,
        "hour_of_day": hour,
        "failed_logins_24h": failed,
        "is_international": intl,
        "device_trust_score": trust,
        "channel_code": channel,
        LABEL: (risk > _FRAUD_THRESHOLD).astype(np.int8),
    }


def generate_columns(
    n: int,
    seed: int = 0,
    start_ms: int | None = None,
    shift: float = 0.0,
    *,
    offset: int = 0,
    rate_per_s: float = 1000.0,
) -> dict[str, npt.NDArray[Any]]:
    """Events ``offset .. offset+n-1`` of stream ``seed`` as columns, plus ``LABEL``.

    Columns are named after the Transaction fields; ``device_trust_score`` holds NaN
    where the record has null, ``channel`` holds symbol strings, ``event_time`` is int64 ms
    (``start_ms`` + index / ``rate_per_s``; ``None`` means :data:`DEFAULT_START_MS`).

    >>> c = generate_columns(4, seed=3)
    >>> c["channel"].dtype.kind, c["event_time"].dtype.name, c["amount"].shape
    ('U', 'int64', (4,))
    """
    if n < 0 or offset < 0:
        raise ValueError("n and offset must be >= 0")
    if rate_per_s <= 0:
        raise ValueError("rate_per_s must be > 0")
    first, last = offset // _BLOCK, (offset + n - 1) // _BLOCK if n else offset // _BLOCK
    blocks = [_block(seed, b, shift) for b in range(first, last + 1)]
    lo = offset - first * _BLOCK
    cols = {k: np.concatenate([b[k] for b in blocks])[lo : lo + n] for k in blocks[0]}
    index = np.arange(offset, offset + n, dtype=np.int64)
    start = DEFAULT_START_MS if start_ms is None else int(start_ms)
    account = cols.pop("account")
    channel = cols.pop("channel_code")
    out: dict[str, npt.NDArray[Any]] = {
        "event_id": np.array([f"ev-{seed}-{i:010d}" for i in index.tolist()], dtype=str),
        "account_id": np.array([f"acct-{a:06d}" for a in account.tolist()], dtype=str),
        "event_time": start + np.floor(index * (1000.0 / rate_per_s)).astype(np.int64),
    }
    out.update(cols)
    out["channel"] = np.asarray(CHANNELS)[channel]
    return {k: out[k] for k in (*FIELDS, LABEL)}


def to_records(columns: dict[str, npt.NDArray[Any]]) -> list[dict[str, Any]]:
    """Avro-ready dicts (Python scalars; NaN trust score -> None) from ``generate_columns``.

    >>> to_records(generate_columns(1, seed=0))[0]["is_international"] in (True, False)
    True
    """
    lists: list[list[Any]] = []
    for name in FIELDS:
        values = columns[name].tolist()
        if name == "device_trust_score":
            values = [None if math.isnan(v) else v for v in values]
        lists.append(values)
    return [dict(zip(FIELDS, row, strict=True)) for row in zip(*lists, strict=True)]


def generate(
    n: int,
    seed: int = 0,
    start_ms: int | None = None,
    shift: float = 0.0,
    *,
    offset: int = 0,
    rate_per_s: float = 1000.0,
) -> tuple[list[dict[str, Any]], npt.NDArray[np.int8]]:
    """``n`` Avro-ready Transaction dicts and their int8 fraud labels (1 = fraud).

    >>> records, labels = generate(2, seed=1, start_ms=0, rate_per_s=10)
    >>> [r["event_time"] for r in records], labels.shape
    ([0, 100], (2,))
    """
    cols = generate_columns(n, seed, start_ms, shift, offset=offset, rate_per_s=rate_per_s)
    return to_records(cols), cols[LABEL]


def feature_matrix(
    columns: dict[str, npt.NDArray[Any]], spec: ModelSpec
) -> npt.NDArray[np.float32]:
    """The model input matrix ``(n, spec.n_features)`` for synthetic columns.

    A reference implementation of the spec's input mapping for clean synthetic data
    (training, calibration, benchmarks): nulls are imputed or left NaN as the spec says;
    a null in a ``reject`` feature raises; min/max constraints are not checked.

    >>> spec = ModelSpec.model_validate({"name": "m", "version": "1.0.0", "inputs": [
    ...     {"field": "is_international"},
    ...     {"field": "channel", "encoding": "onehot", "symbols": ["POS", "ECOM"]}]})
    >>> cols = {"is_international": np.array([True, False]),
    ...         "channel": np.array(["ECOM", "ATM"])}
    >>> feature_matrix(cols, spec).tolist()
    [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    """
    n = len(next(iter(columns.values())))
    parts: list[npt.NDArray[np.float64]] = []
    for feat in spec.inputs:
        if feat.field not in columns:
            raise ModelError(f"feature {feat.field!r} is not a synthetic column")
        col = columns[feat.field]
        if feat.length:
            raise ModelError(f"feature {feat.field!r}: array features are not synthesized")
        if feat.encoding == "onehot":
            parts.append(np.stack([col == s for s in feat.symbols], axis=1).astype(np.float64))
            continue
        if feat.encoding == "index":
            lookup = {s: i for i, s in enumerate(feat.symbols)}
            values = np.array([lookup.get(s, np.nan) for s in col.tolist()], dtype=np.float64)
        else:
            values = col.astype(np.float64)
        nulls = np.isnan(values)
        if nulls.any():
            if feat.null == "reject":
                raise ModelError(f"feature {feat.field!r} has nulls and the spec rejects them")
            if feat.null == "impute":
                values = np.where(nulls, feat.impute, values)
        parts.append(values.reshape(n, 1))
    return np.concatenate(parts, axis=1).astype(np.float32)
