"""Deterministic synthetic raw ``Payment`` events: per-account behaviour over event time.

Unlike :mod:`streamproc.synth` (``Transaction`` events that arrive with their aggregates
precomputed), these events carry no per-account history: fraud shows only in what the
account did before, so a model needs windowed features (``features:`` in ``model.yaml``).

Each account has a payment rate, a typical amount (log-normal), a handful of favourite
merchants and a home. Its legitimate payments are a Poisson process over the span, some of
them followed within the hour by one to three more at its favourite merchants (a shopping
trip: a burst that is not fraud). A compromised account gets an episode: a burst of
payments a few minutes apart, amounts far above the account's mean, each at a merchant it
never used. The event's own fields overlap between the two (riskier merchants, more
international, weaker device trust, failed logins), so a model that sees only them does
worse than one that also sees the account's recent counts, amounts and merchants.

Events come sorted by event time (ties: by account, then draw order); ``event_id`` numbers
them in that order. Everything is a function of the arguments.

>>> cols = generate_columns(200, days=10, seed=1)
>>> sorted(cols) == sorted((*FIELDS, LABEL))
True
>>> t = cols["event_time"]
>>> bool((t[1:] >= t[:-1]).all()), bool(t[0] >= DEFAULT_START_MS)
(True, True)
>>> bool(0.005 < cols[LABEL].mean() < 0.08)
True
>>> records, labels = generate(50, days=3, seed=2)
>>> records[0]["event_id"], records[0]["channel"] in CHANNELS, len(records) == len(labels)
('pay-2-000000000', True, True)
>>> generate_columns(50, days=3, seed=2)["amount"].tolist() == [r["amount"] for r in records]
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from streamproc.synth import CHANNELS, DEFAULT_START_MS

__all__ = [
    "CHANNELS",
    "DEFAULT_START_MS",
    "FIELDS",
    "LABEL",
    "generate",
    "generate_columns",
    "to_records",
]

# Payment fields, in schema order (schemas/Payment.avsc).
FIELDS: tuple[str, ...] = (
    "event_id",
    "account_id",
    "event_time",
    "amount",
    "merchant_id",
    "merchant_risk",
    "distance_from_home_km",
    "card_age_days",
    "failed_logins_24h",
    "is_international",
    "device_trust_score",
    "channel",
)
LABEL = "label"
DAY_MS = 86_400_000
PAYMENTS_PER_ACCOUNT_DAY = 3.9  # on average: the payment rate plus shopping trips
_N_MERCHANTS = 50_000
_EPISODES_PER_DAY = 0.015  # compromise episodes per account and day
_LEGIT_CHANNEL_P = (0.60, 0.28, 0.08, 0.04)
_FRAUD_CHANNEL_P = (0.40, 0.42, 0.10, 0.08)
_MAX_AMOUNT = 1e6


def _account_events(rng: np.random.Generator, a: int, days: float) -> list[tuple[int, int, bool]]:
    """``(ms since start, merchant_id, fraud)`` of one account, unsorted."""
    span = int(days * DAY_MS)
    rate = math.exp(math.log(2.5) + 0.6 * rng.standard_normal())  # payments per day
    favourites = rng.integers(0, _N_MERCHANTS, size=int(rng.integers(3, 9)))
    out: list[tuple[int, int, bool]] = []
    for t in np.sort(rng.integers(0, span, size=int(rng.poisson(rate * days)))).tolist():
        out.append((t, int(rng.choice(favourites)) if rng.random() < 0.8
                    else int(rng.integers(0, _N_MERCHANTS)), False))  # fmt: skip
        if rng.random() < 0.15:  # a shopping trip: more payments within the hour
            follow = t
            for _ in range(int(rng.integers(1, 4))):
                follow += int(rng.integers(5, 30)) * 60_000
                out.append((follow, int(rng.choice(favourites)), False))
    for _ in range(int(rng.poisson(_EPISODES_PER_DAY * days))):
        t = int(rng.integers(span // 5, span))  # after some history of the account
        for _ in range(3 + int(rng.poisson(4.0))):
            out.append((t, int(rng.integers(0, _N_MERCHANTS)), True))
            t += int(rng.exponential(6.0) * 60_000) + 20_000
    return [e for e in out if e[0] < span]


def generate_columns(
    n_accounts: int, days: float = 30.0, seed: int = 0, start_ms: int | None = None
) -> dict[str, npt.NDArray[Any]]:
    """Every payment of ``n_accounts`` accounts over ``days`` days, as columns plus ``LABEL``
    (int8, 1 = fraud). ``device_trust_score`` holds NaN for null; ``channel`` the symbols;
    ``event_time`` int64 ms from ``start_ms`` (None: :data:`DEFAULT_START_MS`)."""
    if n_accounts < 0 or days <= 0:
        raise ValueError("n_accounts must be >= 0 and days > 0")
    start = DEFAULT_START_MS if start_ms is None else int(start_ms)
    acct: list[int] = []
    times: list[int] = []
    merchants: list[int] = []
    fraud: list[bool] = []
    log_mean = np.empty(n_accounts)
    card_age = np.empty(n_accounts, np.int64)
    for a in range(n_accounts):
        rng = np.random.default_rng([seed, a])
        log_mean[a] = 3.7 + 0.6 * rng.standard_normal()
        card_age[a] = min(int(rng.exponential(900.0)), 10_000)
        events = _account_events(rng, a, days)
        acct += [a] * len(events)
        times += [e[0] for e in events]
        merchants += [e[1] for e in events]
        fraud += [e[2] for e in events]
    a_ = np.asarray(acct, np.int64)
    t_ = np.asarray(times, np.int64)
    order = np.lexsort((np.arange(len(t_)), a_, t_))
    a_, t_ = a_[order], t_[order]
    m_ = np.asarray(merchants, np.int64)[order]
    f_ = np.asarray(fraud, np.bool_)[order]
    n = len(t_)

    # The event's own fields: one generator for the whole stream, drawn in time order.
    rng = np.random.default_rng([seed, n_accounts, 1])
    legit_amount = log_mean[a_] + 0.5 * rng.standard_normal(n)
    fraud_amount = log_mean[a_] + 1.2 + 0.6 * rng.standard_normal(n)
    amount = np.round(np.clip(np.exp(np.where(f_, fraud_amount, legit_amount)), 0.01,
                              _MAX_AMOUNT), 2)  # fmt: skip
    merchant_risk = np.where(f_, rng.beta(2.3, 9.0, n), rng.beta(2.0, 10.0, n))
    intl = rng.random(n) < np.where(f_, 0.10, 0.05)
    distance = np.exp(1.5 + 1.3 * rng.standard_normal(n) + np.where(f_, 0.4, 0.0))
    distance = np.clip(distance * np.where(intl, 40.0, 1.0), 0.0, 20_000.0)
    failed = rng.poisson(np.where(f_, 0.2, 0.08)).astype(np.int32)
    trust = np.where(f_, rng.beta(5.0, 2.5, n), rng.beta(6.0, 2.0, n))
    trust[rng.random(n) < np.where(f_, 0.15, 0.1)] = np.nan
    u = rng.random(n)
    legit_ch = np.searchsorted(np.cumsum(_LEGIT_CHANNEL_P), u, side="right")
    fraud_ch = np.searchsorted(np.cumsum(_FRAUD_CHANNEL_P), u, side="right")
    channel = np.minimum(np.where(f_, fraud_ch, legit_ch), len(CHANNELS) - 1)
    return {
        "event_id": np.array([f"pay-{seed}-{i:09d}" for i in range(n)], dtype=str),
        "account_id": np.array([f"acct-{a:06d}" for a in a_.tolist()], dtype=str),
        "event_time": start + t_,
        "amount": amount,
        "merchant_id": m_,
        "merchant_risk": merchant_risk.astype(np.float32),
        "distance_from_home_km": np.round(distance, 3),
        "card_age_days": (card_age[a_] + t_ // DAY_MS).astype(np.int32),
        "failed_logins_24h": failed,
        "is_international": intl,
        "device_trust_score": trust,
        "channel": np.asarray(CHANNELS)[channel],
        LABEL: f_.astype(np.int8),
    }


def to_records(columns: dict[str, npt.NDArray[Any]]) -> list[dict[str, Any]]:
    """Avro-ready dicts (Python scalars; NaN trust score -> None) from ``generate_columns``."""
    lists: list[list[Any]] = []
    for name in FIELDS:
        values = columns[name].tolist()
        if name == "device_trust_score":
            values = [None if math.isnan(v) else v for v in values]
        lists.append(values)
    return [dict(zip(FIELDS, row, strict=True)) for row in zip(*lists, strict=True)]


def generate(
    n_accounts: int, days: float = 30.0, seed: int = 0, start_ms: int | None = None
) -> tuple[list[dict[str, Any]], npt.NDArray[np.int8]]:
    """Avro-ready Payment dicts in event-time order and their int8 fraud labels."""
    cols = generate_columns(n_accounts, days, seed, start_ms)
    return to_records(cols), cols[LABEL]
