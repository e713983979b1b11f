"""Windowed features (issue #27): streamproc's core with and without its window store, Quix
Streams' sliding windows on the same events, the restore of a million keys, bytes per key.

```
python benchmarks/windows.py --quick     # about 5 minutes on 2 cores, broker start included
python benchmarks/windows.py             # more events and rounds; --no-quix skips the broker
```

Workload: synthetic ``Transaction`` events (``streamproc.synth``) whose ``account_id`` is
drawn from 100,000 accounts with Zipf-like weights (rank ** -ZIPF_S) and whose event times
advance EVENTS_PER_DAY a day, a few seconds out of order. Six features per event, the usual
fraud set (FEATURES below): txn_count_1h, txn_count_24h, sum_amount_24h, avg_amount_7d,
max_amount_24h, minutes_since_last_txn. Before the timed events the store holds the state
of HISTORY_DAYS of history over every account.

* ``streamproc_stateless``: the core of ``systems/core.py`` (Avro decode, ONNX score of the
  demo model, Prediction encode, drift) on pre-built raw batches of 4096 events, one CPU.
* ``streamproc_windows``: the same plus, per batch, ``store.process`` on the decoded keys,
  event times and amounts, and ``store.changes`` (the changelog entries the pipeline
  writes, framed as it frames them) as at-least-once (the default) makes them: at each
  commit, once a commit interval (1 s), each changed key once.
* ``streamproc_windows_exactly_once``: the same with ``store.changes`` after every batch,
  as exactly-once makes them (each batch's transaction holds its state).
* ``quix_windows``: a Quix Streams app (``systems/quix_windows.py``) on the real local
  broker computing the same features with ``sliding_window`` aggregations and RocksDB
  state, changelog topics on, at-least-once.
* ``restore_s_per_million_keys``: ``CompiledStore.restore`` of a million keys' changelog.
* ``bytes_per_key``: the store's own estimate (``stats().bytes``) over its keys after the run,
  and ``changelog_bytes_per_key``, what one key's changelog value weighs on average.
* ``rocksdict_state``: the least a RocksDB-backed store adds per batch (a read and a write
  of each touched key's state in a ``rocksdict.Rdict``), to decide the default store.

The last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from systems.core import WRITER_ID  # noqa: E402

from streamproc import schemas, synth  # noqa: E402
from streamproc.backends.onnx import DEMO_MODEL  # noqa: E402
from streamproc.backends.select import load_backend  # noqa: E402
from streamproc.codecs.decoder import BatchDecoder  # noqa: E402
from streamproc.codecs.kernel_cache import Specialiser  # noqa: E402
from streamproc.codecs.source import DictSchemaSource  # noqa: E402
from streamproc.codecs.wire import frame  # noqa: E402
from streamproc.features.factory import open_store  # noqa: E402
from streamproc.features.spec import FeaturesSpec  # noqa: E402
from streamproc.features.store import CompiledStore  # noqa: E402
from streamproc.models.spec import load_model_spec  # noqa: E402
from streamproc.pipeline.app import reader_schema  # noqa: E402
from streamproc.pipeline.handler import BatchHandler, OutputTopics, SchemaIds  # noqa: E402
from streamproc.pipeline.monitoring import build_monitor  # noqa: E402
from streamproc.pipeline.scoring import SingleScorer  # noqa: E402
from streamproc.types import RawBatch  # noqa: E402

KEYS = 100_000
ZIPF_S = 1.0
EVENTS_PER_DAY = 400_000
HISTORY_DAYS = 2
BATCH = 4096
DAY_MS = 86_400_000
COMMIT_S = 1.0  # the pipeline's default commit interval (delivery.commit_interval_ms)
FEATURES = FeaturesSpec.model_validate({
    "allowed_lateness": "10s",
    "definitions": [
        {"name": "txn_count_1h", "agg": "count", "window": {"size": "1h"}},
        {"name": "txn_count_24h", "agg": "count", "window": {"size": "24h"}},
        {"name": "sum_amount_24h", "agg": "sum", "value": "amount", "window": {"size": "24h"}},
        {"name": "avg_amount_7d", "agg": "mean", "value": "amount", "window": {"size": "7d"}},
        {"name": "max_amount_24h", "agg": "max", "value": "amount", "window": {"size": "24h"}},
        {"name": "minutes_since_last_txn", "agg": "since_last", "unit": "min",
         "window": {"size": "30d"}},
    ],
})  # fmt: skip


def log(msg: str) -> None:
    print(f"[windows] {msg}", file=sys.stderr, flush=True)


def zipf_keys(n: int, rng: np.random.Generator) -> np.ndarray:
    """n account indices from 0..KEYS-1, rank r drawn with weight r ** -ZIPF_S (the ranks
    shuffled over the accounts, so hot accounts are not the first ids)."""
    w = np.arange(1, KEYS + 1, dtype=np.float64) ** -ZIPF_S
    ranks = rng.choice(KEYS, size=n, p=w / w.sum())
    return rng.permutation(KEYS)[ranks]


def event_times(n: int, start_ms: int, rng: np.random.Generator) -> np.ndarray:
    """Times advancing EVENTS_PER_DAY a day, a few seconds out of order."""
    gap = DAY_MS / EVENTS_PER_DAY
    t = start_ms + np.cumsum(rng.exponential(gap, n)) + rng.uniform(-3_000, 0, n)
    return t.astype(np.int64)


def key_bytes(idx: np.ndarray) -> list[bytes]:
    return [b"acct-%06d" % i for i in idx.tolist()]


def build_events(n: int, start_ms: int, seed: int) -> dict[str, Any]:
    """``n`` Transaction records with Zipf accounts and advancing times, as raw batches."""
    rng = np.random.default_rng(seed)
    records, _ = synth.generate(n, seed=seed)
    accounts = zipf_keys(n, rng)
    times = event_times(n, start_ms, rng)
    keys = key_bytes(accounts)
    parsed = schemas.parsed("Transaction")
    payloads = []
    for r, k, t in zip(records, keys, times.tolist(), strict=True):
        r["account_id"] = k.decode()
        r["event_time"] = t
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, r)
        payloads.append(frame(WRITER_ID, buf.getvalue()))
    batches = []
    for i in range(0, n, BATCH):
        m = len(payloads[i : i + BATCH])
        batches.append(RawBatch(
            topic="bench.in", values=payloads[i : i + m], keys=keys[i : i + m],
            partitions=np.zeros(m, dtype=np.int32), offsets=np.arange(i, i + m, dtype=np.int64),
            headers=[None] * m, batch_id=f"b{i // BATCH}",
        ))  # fmt: skip
    return {"batches": batches, "payloads": payloads, "keys": keys, "times": times,
            "amounts": np.array([r["amount"] for r in records])}  # fmt: skip


def build_handler() -> BatchHandler:
    spec = load_model_spec(DEMO_MODEL)
    decoder = BatchDecoder(
        spec,
        reader_schema(spec),
        DictSchemaSource({WRITER_ID: schemas.schema_text("Transaction")}),
        specialiser=Specialiser(),
    )
    if not decoder.prepare(WRITER_ID):
        raise RuntimeError("the Transaction schema's kernel did not compile")
    return BatchHandler(
        decoder=decoder,
        scorer=SingleScorer(spec, load_backend(spec, prefer=["onnxruntime"])),
        topics=OutputTopics("bench.p", "bench.dlq", "bench.alerts", "bench.metrics", "bench.s"),
        schema_ids=SchemaIds(prediction=2, dead_letter=3, alert=4, metrics=5),
        processor_id="core",
        pipeline="core",
        monitor=build_monitor(spec, {}),
        snapshot_interval_s=3600.0,
    )


def history(store: CompiledStore, start_ms: int, end_ms: int, seed: int) -> None:
    """State for every account before the timed events: each account once, then Zipf."""
    rng = np.random.default_rng(seed)
    n = int((end_ms - start_ms) / DAY_MS * EVENTS_PER_DAY)
    idx = np.concatenate([rng.permutation(KEYS), zipf_keys(max(0, n - KEYS), rng)])
    times = np.sort(rng.uniform(start_ms, end_ms, len(idx)).astype(np.int64))
    keys = key_bytes(idx)
    amounts = rng.lognormal(3.5, 1.0, len(idx))
    for i in range(0, len(keys), 65_536):
        sl = slice(i, i + 65_536)
        store.process(0, keys[sl], times[sl], {"amount": amounts[sl]})
    store.changes(0)


def windowed_pass(handler: BatchHandler, store: CompiledStore | None, batches: list[RawBatch],
                  commit_s: float | None = None) -> tuple[float, int]:  # fmt: skip
    """Seconds to run ``batches`` through the core (and the store); changelog entries made.

    The changelog as the pipeline makes it (framed with the input offset reached):
    ``commit_s`` None after every batch, as exactly-once does (each batch's transaction holds
    its state); otherwise as at-least-once does, at each commit: before the first batch once
    ``commit_s`` has passed since the last, and at the end (the stop's commit)."""
    entries = 0
    frame = (0).to_bytes(8, "big")
    t0 = last = time.perf_counter()
    for raw in batches:
        if store is None:
            handler(raw)
            continue
        if commit_s is not None and time.perf_counter() - last >= commit_s:
            entries += len(store.changes(0, frame))
            last = time.perf_counter()
        started = handler.start(raw)
        dec = started.dec
        res = store.process(0, raw.keys, dec.event_time_ms,
                            {"amount": dec.features[:, 0].astype(np.float64)})  # fmt: skip
        assert res.values.shape == (len(raw), 6)
        if commit_s is None:
            entries += len(store.changes(0, frame))
        handler.finish(started)
    if store is not None and commit_s is not None:
        entries += len(store.changes(0, frame))
    return time.perf_counter() - t0, entries


def measure_core(n: int, rounds: int) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    handler = build_handler()
    start = HISTORY_DAYS * DAY_MS
    warm = build_events(2 * BATCH, start, seed=1)
    ev = build_events(n, start + DAY_MS // 100, seed=2)
    log(f"built {n} events; history of {HISTORY_DAYS} days over {KEYS} accounts")
    store = open_store(FEATURES)
    assert isinstance(store, CompiledStore)
    history(store, 0, start, seed=3)
    windowed_pass(handler, store, warm["batches"])  # compiles, warms ONNX Runtime
    snapshot = store.changes(0)  # nothing: history() flushed; the state is in `store`
    del snapshot
    base_entries = _all_entries(store)
    stateless, windows, eos = [], [], []
    keys_after = bytes_after = entries = eos_entries = 0
    for r in range(rounds):
        s, _ = windowed_pass(handler, None, ev["batches"])
        stateless.append(n / s)
        fresh = CompiledStore(FEATURES)
        fresh.restore(0, base_entries)
        s, entries = windowed_pass(handler, fresh, ev["batches"], COMMIT_S)
        windows.append(n / s)
        st = fresh.stats(0)
        keys_after, bytes_after = st.keys, st.bytes
        fresh = CompiledStore(FEATURES)
        fresh.restore(0, base_entries)
        s, eos_entries = windowed_pass(handler, fresh, ev["batches"])
        eos.append(n / s)
        log(f"round {r}: stateless {stateless[-1]:,.0f} ev/s, windows {windows[-1]:,.0f} ev/s "
            f"(exactly-once {eos[-1]:,.0f})")  # fmt: skip
    changelog = [v for _, v in _all_entries(fresh) if v is not None]
    return {
        "streamproc_stateless": {"events_per_s": float(np.median(stateless)),
                                 "passes": [round(x) for x in stateless]},
        "streamproc_windows": {"events_per_s": float(np.median(windows)),
                               "passes": [round(x) for x in windows],
                               "changelog": f"at-least-once: at each commit ({COMMIT_S} s)",
                               "changelog_entries_per_pass": entries},
        "streamproc_windows_exactly_once": {
            "events_per_s": float(np.median(eos)), "passes": [round(x) for x in eos],
            "changelog": "after every batch",
            "changelog_entries_per_batch": eos_entries / len(ev["batches"])},
        "keys": keys_after,
        "bytes_per_key": bytes_after / keys_after,
        "changelog_bytes_per_key": sum(map(len, changelog)) / len(changelog),
        "dropped_events": fresh.stats(0).dropped_events,
        "cpu": cpus[-1],
    }  # fmt: skip


def _all_entries(store: CompiledStore) -> list[tuple[bytes, bytes | None]]:
    """Every key's changelog value now (what a compacted changelog topic holds)."""
    part = store._parts[0]
    part.dirty[: len(part.keys)] = [k is not None for k in part.keys]  # evicted slots: none
    return store.changes(0)


def measure_restore(keys: int) -> dict[str, Any]:
    """A changelog of ``keys`` keys (about 4 events each) restored into a fresh store."""
    rng = np.random.default_rng(5)
    store = CompiledStore(FEATURES)
    idx = np.concatenate([np.arange(keys)] * 4)
    times = np.sort(rng.uniform(0, DAY_MS, len(idx)).astype(np.int64))
    names = [b"acct-%07d" % i for i in range(keys)]
    all_keys = [names[i] for i in idx.tolist()]
    amounts = rng.lognormal(3.5, 1.0, len(idx))
    for i in range(0, len(idx), 262_144):
        sl = slice(i, i + 262_144)
        store.process(0, all_keys[sl], times[sl], {"amount": amounts[sl]})
    entries = store.changes(0)
    del store
    fresh = CompiledStore(FEATURES)
    fresh.restore(0, entries[:10])  # compiles the restore kernels
    t0 = time.perf_counter()
    fresh = CompiledStore(FEATURES)
    n = fresh.restore(0, entries)
    s = time.perf_counter() - t0
    assert fresh.stats(0).keys == keys, fresh.stats(0)
    return {"restore_s_per_million_keys": s / keys * 1e6, "restore_keys": keys,
            "restore_entries": n, "restore_s": s}  # fmt: skip


def measure_rocksdict(n: int) -> dict[str, Any]:
    """The floor of a RocksDB-backed store: per batch, read and write back each touched
    key's changelog-format state in a ``rocksdict.Rdict`` (no aggregation at all)."""
    try:
        from rocksdict import Rdict
    except ImportError:
        return {"status": "not run: pip install rocksdict"}
    rng = np.random.default_rng(7)
    store = CompiledStore(FEATURES)
    history(store, 0, HISTORY_DAYS * DAY_MS, seed=3)
    entries = dict(_all_entries(store))
    path = tempfile.mkdtemp(prefix="windows-rocksdict-")
    try:
        db = Rdict(path)
        for k, v in entries.items():
            if v is not None:
                db[k] = v
        idx = zipf_keys(n, rng)
        keys = key_bytes(idx)
        t0 = time.perf_counter()
        for i in range(0, n, BATCH):
            for k in set(keys[i : i + BATCH]):
                v = db.get(k)
                db[k] = v if v is not None else b"\0" * 8
        s = time.perf_counter() - t0
        db.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return {"events_per_s": n / s, "note": "read + write of touched keys only"}


def measure_quix(n: int, budget_s: float) -> dict[str, Any]:
    """Quix Streams (``systems/quix_windows.py``, from the isolated site of ``make bench``)
    on the real local broker and registry: the same events, produced to a fresh topic."""
    site = Path(os.environ.get("STREAMPROC_BENCH_QUIX_SITE", HERE / "out" / "quix-site"))
    if not (site / "quixstreams").is_dir():
        return {"events_per_s": None, "status": f"not run: pip install --target {site} "
                "quixstreams"}  # fmt: skip
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    from throughput.harness import services

    from streamproc.kafka.registry import Registry

    ev = build_events(n, HISTORY_DAYS * DAY_MS, seed=2)
    home = Path(tempfile.mkdtemp(prefix="windows-bench-"))
    try:
        with services(home) as svc:
            topic = f"windows.in.{time.time_ns()}"
            admin = AdminClient({"bootstrap.servers": svc.bootstrap})
            admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
            sid = Registry(svc.registry_url).register(
                schemas.subject_for(topic), schemas.schema_text("Transaction")
            )
            head = b"\x00" + sid.to_bytes(4, "big")
            producer = Producer({"bootstrap.servers": svc.bootstrap, "linger.ms": 20,
                                 "compression.type": "lz4"})  # fmt: skip
            for payload, key in zip(ev["payloads"], ev["keys"], strict=True):
                while True:
                    try:
                        producer.produce(topic, head + payload[5:], key)
                        break
                    except BufferError:
                        producer.poll(0.05)
            if producer.flush(60):
                raise RuntimeError("the events were not acknowledged")
            del producer
            cmd = [sys.executable, str(HERE / "systems" / "quix_windows.py"), svc.bootstrap,
                   svc.registry_url, topic, str(n), str(budget_s)]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(HERE)])}
            try:
                out = subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=budget_s + 240,
                                     capture_output=True, text=True)  # fmt: skip
            except subprocess.CalledProcessError as exc:
                return {"events_per_s": None, "status": f"failed: {exc.stderr[-1500:]}"}
            except subprocess.TimeoutExpired:
                return {"events_per_s": None, "status": "timed out"}
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer events and rounds")
    ap.add_argument("--no-quix", action="store_true", help="skip Quix Streams (no broker)")
    args = ap.parse_args()
    n = 60 * BATCH if args.quick else 240 * BATCH
    rounds = 2 if args.quick else 3
    out: dict[str, Any] = {"machine": "2-core shared x86_64 VM", "events": n, "keys": KEYS,
                           "zipf_s": ZIPF_S, "features": FEATURES.names}  # fmt: skip
    out.update(measure_core(n, rounds))
    out.update(measure_restore(1_000_000))
    out["rocksdict_state"] = measure_rocksdict(n)
    out["quix_windows"] = (
        {"events_per_s": None, "status": "not run: --no-quix"} if args.no_quix
        else measure_quix(20_000 if args.quick else 60_000, 90 if args.quick else 300)
    )  # fmt: skip
    sw = out["streamproc_windows"]["events_per_s"]
    ss = out["streamproc_stateless"]["events_per_s"]
    q = out["quix_windows"].get("events_per_s")
    se = out["streamproc_windows_exactly_once"]["events_per_s"]
    out["targets"] = {
        "windows_vs_stateless": {"value": sw / ss, "min": 0.5, "met": sw / ss >= 0.5},
        "windows_exactly_once_vs_stateless": {"value": se / ss, "min": 0.5, "met": se / ss >= 0.5},
        "x_quix": {"value": sw / q if q else None, "min": 20, "met": sw / q >= 20 if q else None},
        "restore_s_per_million_keys": {"value": out["restore_s_per_million_keys"], "max": 10,
                                       "met": out["restore_s_per_million_keys"] <= 10},
    }  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
