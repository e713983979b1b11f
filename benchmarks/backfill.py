#!/usr/bin/env python
"""Backfill (``streamproc score``) against the in-process core rate, on the real local stack.

``python benchmarks/backfill.py [--quick]`` prints one JSON object:

- ``core_events_per_s``: BatchHandler alone on pre-fetched RawBatches, pinned to one CPU
  (``benchmarks/systems/core.py``, the figure of ``benchmarks/throughput.py``);
- ``backfill_events_per_s``: one ``score`` worker over a topic range to an output topic
  (exactly-once transactions with their progress records), measured from its first batch
  to its last (start-up, the model and the decoder kernel, not counted: it is paid once
  per job); ``backfill_events_per_cpu_s``: the same events over the CPU time the worker's
  process used meanwhile (its Python thread and librdkafka's), which is the per-core rate;
- ``ratio_per_core`` = backfill_events_per_cpu_s / core_events_per_s (the goal: >= 0.8) and
  ``ratio_wall`` = backfill_events_per_s / core_events_per_s.

The broker and the registry run on the same machine (their CPU is not the worker's).
Services come from ``STREAMPROC_KAFKA_BOOTSTRAP`` / ``STREAMPROC_SCHEMA_REGISTRY_URL`` or a
local stack started for the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
MODEL = ROOT / "deploy" / "models" / "fraud" / "1.0.0"
CORE_KEYS = ("events_per_s", "events_per_s_passes", "batch_size", "stage_us_per_event")


def log(msg: str) -> None:
    print(f"[backfill] {msg}", file=sys.stderr, flush=True)


def core_rate(n: int, work: Path) -> dict[str, Any]:
    """``systems.core`` in its own process (it pins itself to one CPU)."""
    report = work / "core.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)])}
    subprocess.run([sys.executable, "-m", "systems.core", str(n), str(report)], env=env,
                   cwd=ROOT, check=True, timeout=600, stdout=subprocess.DEVNULL)  # fmt: skip
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def backfill_rate(
    bootstrap: str, registry: str, events: int, partitions: int, sink_tuning: bool = True
) -> dict[str, Any]:
    """``score`` over a topic range, one worker. ``sink_tuning`` False: the output producer
    as the live pipeline configures it (linger.ms 2), as before SINK_TUNING."""
    from streamproc.config import PipelineConfig
    from streamproc.kafka.clients import EventProducer
    from streamproc.kafka.registry import Registry
    from streamproc.loadgen import produce_synthetic
    from streamproc.pipeline.app import apply_schemas, ensure_topics
    from streamproc.pipeline.batchscore import ScoreJob, run

    name = uuid.uuid4().hex[:8]
    cfg = PipelineConfig.model_validate({
        "name": f"bf-{name}", "model": str(MODEL), "kafka": {"bootstrap": bootstrap},
        "registry": {"url": registry},
        "topics": {"input": f"bf-in-{name}", "alerts": f"bf-alerts-{name}",
                   "metrics": f"bf-metrics-{name}", "control": f"bf-control-{name}",
                   "partitions": partitions},
    })  # fmt: skip
    ensure_topics(cfg)
    apply_schemas(Registry(registry), cfg)
    t0 = time.monotonic()
    with EventProducer(cfg.kafka, cfg.registry, cfg.topics.input) as producer:
        produce_synthetic(producer, events, seed=3)
    log(f"produced {events} events in {time.monotonic() - t0:.1f}s")
    marks: list[tuple[float, float, int, float]] = []  # wall, process CPU, events, thread CPU
    done = [0]

    def on_events(n: int) -> None:
        done[0] += n
        marks.append((time.perf_counter(), time.process_time(), done[0], time.thread_time()))

    from streamproc.kafka import backfill as kafka_backfill

    job = ScoreJob(cfg, name=f"bench-{name}", topic=cfg.topics.input,
                   out_topic=f"{cfg.topics.input}.scored", workers=1)  # fmt: skip
    tuning = dict(kafka_backfill.SINK_TUNING)
    if not sink_tuning:
        kafka_backfill.SINK_TUNING = {}
    # The worker's Python thread, part by part: thread CPU inside the handler and inside the
    # sink's write (the produce calls); the rest of it is reading (consume, RawBatch).
    from streamproc.pipeline.handler import BatchHandler

    parts = {"handler": 0.0, "produce": 0.0}
    originals = (BatchHandler.__call__, kafka_backfill.KafkaTransactionalSink.write)

    def timed(fn: Any, key: str) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                parts[key] += time.thread_time() - t

        return call

    BatchHandler.__call__ = timed(originals[0], "handler")  # type: ignore[method-assign]
    kafka_backfill.KafkaTransactionalSink.write = timed(originals[1], "produce")  # type: ignore[method-assign]
    try:
        summary = run(job, on_events=on_events)
    finally:
        kafka_backfill.SINK_TUNING = tuning
        BatchHandler.__call__, kafka_backfill.KafkaTransactionalSink.write = originals  # type: ignore[method-assign]
    c_end = time.process_time()
    if not summary.accounted or summary.read != events:
        raise RuntimeError(f"the backfill did not account for every event: {summary.as_dict()}")
    (w0, c0, e0, t0), (w1, c1, e1, t1) = marks[0], marks[-1]
    n = e1 - e0  # the first batch opens the clock and is not counted
    return {
        "events": events,
        "partitions": partitions,
        "sink_tuning": sink_tuning,
        # the worker's Python thread (read, handler, produce calls) per event; the rest of
        # the process CPU is librdkafka's threads (fetch, decompress, compress, send)
        "main_thread_us_per_event": round((t1 - t0) / n * 1e6, 3),
        # over all events (the first batch too): the handler, the produce calls
        "handler_us_per_event": round(parts["handler"] / events * 1e6, 3),
        "produce_us_per_event": round(parts["produce"] / events * 1e6, 3),
        "other_threads_us_per_event": round(((c1 - c0) - (t1 - t0)) / n * 1e6, 3),
        "batches": len(marks),
        "job_seconds": round(summary.seconds, 2),
        "events_per_s": n / (w1 - w0),
        "events_per_cpu_s": n / (c1 - c0),
        # the same, with the CPU of the last commit and the clients' close after the last batch
        "events_per_cpu_s_to_end": n / (c_end - c0),
        "cores_used": round((c1 - c0) / (w1 - w0), 2),
    }


def files_rate(
    bootstrap: str,
    registry: str,
    events: int,
    files: int,
    work: Path,
    codec: str,
    path: str = "blocks",
) -> dict[str, Any]:
    """``score --file`` over ``files`` Avro container files (``codec`` in and out) to part
    files, one worker; the same clock as :func:`backfill_rate`. ``path``: ``blocks`` (the
    block reader) or ``records`` (fastavro record by record, as before the block reader)."""
    import fastavro

    from streamproc import schemas, synth
    from streamproc.config import PipelineConfig
    from streamproc.pipeline import batchscore
    from streamproc.pipeline.batchscore import ScoreJob, run

    name = uuid.uuid4().hex[:8]
    cfg = PipelineConfig.model_validate({
        "name": f"bff-{name}", "model": str(MODEL), "kafka": {"bootstrap": bootstrap},
        "registry": {"url": registry},
        "topics": {"input": f"bff-in-{name}", "alerts": f"bff-alerts-{name}",
                   "metrics": f"bff-metrics-{name}", "control": f"bff-control-{name}"},
    })  # fmt: skip
    from streamproc.kafka.registry import Registry
    from streamproc.pipeline.app import apply_schemas

    apply_schemas(Registry(registry), cfg)
    records, _ = synth.generate(events, seed=3)
    parsed = schemas.parsed("Transaction")
    paths = []
    per = events // files
    for i in range(files):
        p = work / f"in-{name}-{i}.avro"
        with p.open("wb") as f:  # fastavro's default block size (16 kB of datums)
            fastavro.writer(f, parsed, records[i * per : (i + 1) * per], codec=codec)
        paths.append(p)
    marks: list[tuple[float, float, int]] = []
    done = [0]

    def on_events(n: int) -> None:
        done[0] += n
        marks.append((time.perf_counter(), time.process_time(), done[0]))

    job = ScoreJob(cfg, name=f"benchf-{name}", files=paths, out_dir=work / f"out-{name}",
                   out_codec=codec, key_field="account_id", workers=1)  # type: ignore[arg-type]  # fmt: skip
    walk = batchscore._walk_program
    if path == "records":
        batchscore._walk_program = lambda *a: None  # type: ignore[assignment]
    try:
        summary = run(job, on_events=on_events)
        w_end, c_end = time.perf_counter(), time.process_time()
    finally:
        batchscore._walk_program = walk  # type: ignore[assignment]
    if not summary.accounted or summary.read != per * files:
        raise RuntimeError(f"the backfill did not account for every event: {summary.as_dict()}")
    # From the first batch to the end of the job: the last part file is written after the
    # last batch, and counts.
    w0, c0, e0 = marks[0]
    n = per * files - e0
    return {
        "events": per * files,
        "files": files,
        "codec": codec,
        "path": path,
        "batches": len(marks),
        "job_seconds": round(summary.seconds, 2),
        "events_per_s": n / (w_end - w0),
        "events_per_cpu_s": n / (c_end - c0),
        "cores_used": round((c_end - c0) / (w_end - w0), 2),
    }


def measure(quick: bool, only_files: bool = False) -> dict[str, Any]:
    """Both rates on one machine, one run; see the module docstring."""
    from streamproc.local import LocalStack, from_environment

    events = 200_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="backfill-") as tmp:
        work = Path(tmp)
        core = core_rate(51_200 if quick else 102_400, work)
        log(f"core: {core['events_per_s']:.0f} events/s on one core")
        # The machine is shared: the core rate again at the end, the ratios against the
        # higher of the two (the lower ratio).
        external = from_environment()
        stack = None
        if external is None:
            stack = LocalStack(home=work / "stack")
            info = stack.up()
            bootstrap, registry = info.bootstrap, info.schema_registry
        else:
            bootstrap, registry = external.bootstrap, external.schema_registry
        try:
            fl = {}
            # Warm-up, not reported: the walk's and the writer's kernels load or compile.
            files_rate(bootstrap, registry, 8000, 1, work, "null", "blocks")
            for codec, path in (("null", "blocks"), ("snappy", "blocks"), ("deflate", "blocks"),
                                ("deflate", "records")):  # fmt: skip
                # record by record is ~5x slower: a quarter of the events
                events_r = events // 4 if path == "records" else events
                r = files_rate(bootstrap, registry, events_r, 4, work, codec, path)
                fl[f"{path}_{codec}"] = r
                log(f"files ({path}, {codec}): {r['events_per_s']:.0f} events/s, "
                    f"{r['events_per_cpu_s']:.0f} per CPU-s")  # fmt: skip
            bf = bf_before = None
            if not only_files:
                bf_before = backfill_rate(bootstrap, registry, events, 4, sink_tuning=False)
                log(f"topic (linger.ms 2): {bf_before['events_per_cpu_s']:.0f} per CPU-s")
                bf = backfill_rate(bootstrap, registry, events, partitions=4)
        finally:
            if stack is not None:
                stack.down()
        core_end = core_rate(51_200 if quick else 102_400, work)
        log(f"core (again): {core_end['events_per_s']:.0f} events/s on one core")
    core_rates = [round(core["events_per_s"]), round(core_end["events_per_s"])]
    if core_end["events_per_s"] > core["events_per_s"]:
        core = core_end
    core_rate_ = core["events_per_s"]
    files_out = {
        f"files_{k}_events_per_cpu_s": round(v["events_per_cpu_s"]) for k, v in fl.items()
    } | {f"files_{k}_ratio_per_core": round(v["events_per_cpu_s"] / core_rate_, 3)
         for k, v in fl.items()}  # fmt: skip
    if bf is None:
        return {"core_events_per_s": round(core_rate_), "core_events_per_s_both": core_rates,
                **files_out, "files": fl, "core": {k: core[k] for k in CORE_KEYS}}  # fmt: skip
    assert bf_before is not None
    log(f"backfill: {bf['events_per_s']:.0f} events/s, {bf['events_per_cpu_s']:.0f} per CPU-s")
    return {
        "backfill_events_per_s": round(bf["events_per_s"]),
        "backfill_events_per_cpu_s": round(bf["events_per_cpu_s"]),
        "core_events_per_s": round(core["events_per_s"]),
        "ratio_per_core": round(bf["events_per_cpu_s"] / core["events_per_s"], 3),
        "ratio_wall": round(bf["events_per_s"] / core["events_per_s"], 3),
        "core_events_per_s_both": core_rates,
        **files_out,
        "backfill": bf,
        "backfill_linger_2ms": bf_before,
        "files": fl,
        "core": {k: core[k] for k in CORE_KEYS},
        "cpu_count": os.cpu_count(),
        "quick": quick,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer events (about a minute)")
    ap.add_argument("--files-only", action="store_true", help="the Avro file runs, no topic")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.quick, args.files_only)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
