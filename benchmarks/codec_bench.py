"""Codec micro-benchmark: us/event for decoding Transactions and encoding Predictions.

Deterministic synthetic Transaction payloads (written by fastavro), decoded in batches of
``--batch`` by the fastavro reference path, the interpreted and the specialised compiled
paths of ``BatchDecoder`` (with the specialised kernel's compile and cache-load time);
Predictions encoded by ``PredictionEncoder.encode_reference`` (fastavro) and ``encode``.
Prints one JSON line.

    .venv/bin/python benchmarks/codec_bench.py --events 200000 --batch 256
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from streamproc.codecs import compiled as native
from streamproc.codecs.decoder import BatchDecoder
from streamproc.codecs.encoder import PredictionEncoder
from streamproc.codecs.kernel_cache import Specialiser
from streamproc.codecs.source import DictSchemaSource
from streamproc.codecs.wire import frame
from streamproc.models.spec import ModelSpec
from streamproc.schemas import schema_dict

CHANNELS = ["POS", "ECOM", "ATM", "MOTO"]
NUMERIC = [
    "amount", "merchant_risk", "distance_from_home_km", "minutes_since_last_txn",
    "txn_count_1h", "txn_count_24h", "avg_amount_7d", "card_age_days", "hour_of_day",
    "failed_logins_24h",
]  # fmt: skip


def spec() -> ModelSpec:
    inputs: list[dict[str, Any]] = [{"field": f} for f in NUMERIC]
    inputs[0]["min"] = 0
    inputs.append({"field": "is_international"})
    inputs.append({"field": "device_trust_score", "null": "impute", "impute": 0.5})
    inputs.append({"field": "channel", "encoding": "onehot", "symbols": CHANNELS})
    return ModelSpec.model_validate({"name": "fraud", "version": "1.0.0", "inputs": inputs})


def payloads(n: int, seed: int = 0) -> list[bytes]:
    schema = fastavro.parse_schema(schema_dict("Transaction"))
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.5, 1.0, n)
    out = []
    buf = io.BytesIO()
    for i in range(n):
        rec = {
            "event_id": f"ev-{seed}-{i:010d}",
            "account_id": f"acct-{int(rng.integers(0, 50_000)):06d}",
            "event_time": 1_700_000_000_000 + i,
            "amount": float(amount[i]),
            "merchant_risk": float(rng.random()),
            "distance_from_home_km": float(rng.exponential(20.0)),
            "minutes_since_last_txn": float(rng.exponential(300.0)),
            "txn_count_1h": int(rng.integers(0, 10)),
            "txn_count_24h": int(rng.integers(0, 60)),
            "avg_amount_7d": float(rng.lognormal(3.5, 0.8)),
            "card_age_days": int(rng.integers(0, 4000)),
            "hour_of_day": int(rng.integers(0, 24)),
            "failed_logins_24h": int(rng.integers(0, 4)),
            "is_international": bool(rng.random() < 0.1),
            "device_trust_score": None if rng.random() < 0.2 else float(rng.random()),
            "channel": CHANNELS[int(rng.integers(0, 4))],
        }
        buf.seek(0)
        buf.truncate()
        fastavro.schemaless_writer(buf, schema, rec)
        out.append(frame(1, buf.getvalue()))
    return out


def per_event_us(fn: Any, batches: list[Any], n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, bs = args.events, args.batch

    t0 = time.perf_counter()
    data = payloads(n)
    gen_s = time.perf_counter() - t0
    batches = [data[i : i + bs] for i in range(0, n, bs)]
    src = DictSchemaSource({1: schema_dict("Transaction")})
    reader = schema_dict("Transaction")
    ref = BatchDecoder(spec(), reader, src, compiled=False)
    fast = BatchDecoder(spec(), reader, src, compiled=True)
    kernel_load_s = native.warm_up()  # already done by the constructors: cached time
    with tempfile.TemporaryDirectory() as cache:
        # the Transaction kernel compiled from nothing (an empty disk cache), then loaded
        # by a second specialiser from that cache, as a restarted processor would
        cold, warm = Specialiser(Path(cache)), Specialiser(Path(cache))
        special = BatchDecoder(spec(), reader, src, specialiser=cold)
        assert special.prepare(1)
        again = BatchDecoder(spec(), reader, src, specialiser=warm)
        assert again.prepare(1)
        compile_s = next(iter(cold.compile_seconds.values()))
        cache_load_s = next(iter(warm.compile_seconds.values()))
    ref.decode(batches[0])
    fast.decode(batches[0])
    a = fast.decode(data[:4096])
    b = ref.decode(data[:4096])
    c = special.decode(data[:4096])
    assert (a.errors == 0).all() and np.array_equal(a.features, b.features)
    assert np.array_equal(a.features, c.features)

    # fastavro alone (no framing checks, no feature matrix), for the 6-8 us anchor
    parsed = fastavro.parse_schema(schema_dict("Transaction"))

    def raw_fastavro(batch: list[bytes]) -> None:
        for p in batch:
            bio = io.BytesIO(p)
            bio.seek(5)
            fastavro.schemaless_reader(bio, parsed, None)

    quarter = batches[: max(1, len(batches) // 4)]
    raw_us = per_event_us(raw_fastavro, quarter, sum(len(b) for b in quarter), 1)
    ref_us = per_event_us(ref.decode, batches, n, 1)
    fast_us = per_event_us(fast.decode, batches, n, args.repeat)
    special_us = per_event_us(special.decode, batches, n, args.repeat)

    # Prediction encoding, one batch's arguments per batch
    enc = PredictionEncoder(2)
    rng = np.random.default_rng(1)
    enc_batches = []
    for i in range(0, n, bs):
        m = min(bs, n - i)
        p1 = rng.random(m).astype(np.float32)
        scores = np.stack([1 - p1, p1], axis=1)
        enc_batches.append((
            [f"ev-0-{j:010d}" for j in range(i, i + m)],
            [f"acct-{j % 50_000:06d}" for j in range(i, i + m)],
            "fraud", "1.0.0", scores, 1,
            ["fraud" if s >= 0.5 else "legit" for s in p1.tolist()],
            np.arange(i, i + m, dtype=np.int64) + 1_700_000_000_000,
            1_700_000_100_000,
        ))  # fmt: skip
    assert enc.encode(*enc_batches[0]) == enc.encode_reference(*enc_batches[0])
    enc_ref_us = per_event_us(lambda a: enc.encode_reference(*a), enc_batches, n, 1)
    enc_fast_us = per_event_us(lambda a: enc.encode(*a), enc_batches, n, args.repeat)
    enc_numpy_us = per_event_us(lambda a: enc.encode_python(*a), enc_batches, n, args.repeat)

    # Planning a new writer schema id for the compiled path (no compilation involved)
    t0 = time.perf_counter()
    fresh = BatchDecoder(spec(), reader, DictSchemaSource({9: schema_dict("Transaction")}))
    t1 = time.perf_counter()
    fresh.writer(9)
    plan_ms = (time.perf_counter() - t1) * 1e3
    ctor_ms = (t1 - t0) * 1e3

    print(
        json.dumps(
            {
                "bench": "codec",
                "machine": f"{platform.machine()} {platform.system()}",
                "events": n,
                "batch": bs,
                "fastavro_raw_us": round(raw_us, 3),
                "decode_reference_us": round(ref_us, 3),
                "decode_compiled_us": round(fast_us, 3),
                "decode_speedup": round(ref_us / fast_us, 1),
                "decode_compiled_events_per_s": round(1e6 / fast_us),
                "decode_specialised_us": round(special_us, 3),
                "specialise_compile_s": round(compile_s, 2),
                "specialise_cache_load_s": round(cache_load_s, 3),
                "encode_reference_us": round(enc_ref_us, 3),
                "encode_fast_us": round(enc_fast_us, 3),
                "encode_numpy_us": round(enc_numpy_us, 3),
                "encode_speedup": round(enc_ref_us / enc_fast_us, 1),
                "kernel_load_s": round(kernel_load_s, 3),
                "new_schema_plan_ms": round(plan_ms, 2),
                "decoder_ctor_ms": round(ctor_ms, 2),
                "payload_gen_s": round(gen_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
