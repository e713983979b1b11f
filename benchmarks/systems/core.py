"""streamproc's core without Kafka: framed payload batches in memory -> BatchHandler -> bytes.

Built like ``build_processor`` builds it (BatchDecoder with the model's reader schema,
SingleScorer on ``load_backend``, the Prediction encoder and the default drift monitor
inside BatchHandler: input, score and data-quality drift on every batch), but the writer
schema comes from a :class:`~streamproc.codecs.source.DictSchemaSource`. The process pins
itself to one CPU; batches of the pipeline's default ``max_batch_size`` (and, for
comparison, of ``COMPARED_BATCH``); the first pass warms up and is not timed.

``python -m systems.core <n_events> <report.json>``
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from streamproc import schemas, synth
from streamproc.backends.onnx import DEMO_MODEL
from streamproc.backends.select import load_backend
from streamproc.codecs.decoder import BatchDecoder
from streamproc.codecs.kernel_cache import Specialiser
from streamproc.codecs.source import DictSchemaSource
from streamproc.codecs.wire import frame
from streamproc.config import BatchSettings
from streamproc.models.spec import load_model_spec
from streamproc.pipeline.app import reader_schema
from streamproc.pipeline.handler import BatchHandler, OutputTopics, SchemaIds
from streamproc.pipeline.monitoring import build_monitor
from streamproc.pipeline.scoring import SingleScorer
from streamproc.types import RawBatch
from systems.shared import COMPARED_BATCH

WRITER_ID = 1


def raw_batches(n: int, batch_size: int, seed: int = 11) -> list[RawBatch]:
    records, _ = synth.generate(n, seed=seed)
    parsed = schemas.parsed("Transaction")
    payloads, keys = [], []
    for r in records:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, r)
        payloads.append(frame(WRITER_ID, buf.getvalue()))
        keys.append(r["account_id"].encode())
    out = []
    for i in range(0, n, batch_size):
        vals = payloads[i : i + batch_size]
        m = len(vals)
        out.append(
            RawBatch(
                topic="bench.in",
                values=list(vals),
                keys=keys[i : i + m],
                partitions=np.full(m, i // batch_size % 4, dtype=np.int32),
                offsets=np.arange(i, i + m, dtype=np.int64),
                headers=[None] * m,
                batch_id=f"b{i // batch_size}",
            )
        )
    return out


def measure(n: int, batch_size: int | None = None, repeats: int = 5) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    batch_size = batch_size or BatchSettings().max_batch_size
    spec = load_model_spec(DEMO_MODEL)
    backend = load_backend(spec, prefer=["onnxruntime"])
    decoder = BatchDecoder(
        spec,
        reader_schema(spec),
        DictSchemaSource({WRITER_ID: schemas.schema_text("Transaction")}),
        specialiser=Specialiser(),  # as `streamproc run` decodes (DecodingSettings)
    )
    if not decoder.prepare(WRITER_ID):
        raise RuntimeError("the Transaction schema's kernel did not compile")
    monitor = build_monitor(spec, {})  # the pipeline's default drift config
    if monitor is None:
        raise RuntimeError("drift is off by default: the core figure must include it")
    handler = BatchHandler(
        decoder=decoder,
        scorer=SingleScorer(spec, backend),
        topics=OutputTopics("bench.p", "bench.dlq", "bench.alerts", "bench.metrics", "bench.s"),
        schema_ids=SchemaIds(prediction=2, dead_letter=3, alert=4, metrics=5),
        processor_id="core",
        pipeline="core",
        monitor=monitor,
        snapshot_interval_s=3600.0,
    )
    batches = raw_batches(n, batch_size)
    for b in batches:  # warm-up pass
        handler(b)
    stages: dict[str, float] = {}
    events = produced = 0
    rates = []  # events/s of each pass over the batches
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        n0, t_pass = events, time.perf_counter()
        for batch in batches:
            out = handler(batch)
            produced += sum(len(b) for b in out.blocks if b.topic == "bench.p")
            events += len(batch)
            for k, v in out.stats.stage_s.items():  # type: ignore[union-attr]
                stages[k] = stages.get(k, 0.0) + v
        rates.append((events - n0) / (time.perf_counter() - t_pass))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "events": events,
        "predictions": produced,
        "batch_size": batch_size,
        "cpu": cpus[-1],
        "drift": type(handler.monitor).__name__,
        "wall_s": wall,
        # the median pass: one slow pass (another process on the core) does not decide it
        "events_per_s": float(np.median(rates)),
        "events_per_s_passes": [round(r) for r in rates],
        "cpu_s_per_million": cpu / events * 1e6,
        "stage_us_per_event": {k: v / events * 1e6 for k, v in stages.items()},
        "other_us_per_event": (wall - sum(stages.values())) / events * 1e6,
    }


if __name__ == "__main__":
    result = measure(int(sys.argv[1]))
    result[f"batch_{COMPARED_BATCH}"] = measure(int(sys.argv[1]), batch_size=COMPARED_BATCH)
    Path(sys.argv[2]).write_text(json.dumps(result))
