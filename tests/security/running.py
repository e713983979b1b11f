"""A processor run under a principal, fed and read by others: what the ACL and OAUTHBEARER
tests share."""

from __future__ import annotations

import threading
import time
from typing import Any

from streamproc import synth
from streamproc.config import PipelineConfig
from streamproc.kafka.clients import EventProducer, RecordConsumer
from streamproc.pipeline.app import build_processor


def predictions_under(
    proc: PipelineConfig, writer: PipelineConfig, reader: PipelineConfig, n: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run a processor with ``proc``'s connection, produce ``n`` synthetic events as
    ``writer`` and read their predictions as ``reader``: the events and the predictions,
    once every event has one. Fails on the processor's own error, or after 90 s."""
    processor = build_processor(proc)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            processor.run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True, name=f"processor-{proc.name}")
    thread.start()
    t = writer.topics
    try:
        records, _ = synth.generate(n, seed=seed)
        with EventProducer(writer.kafka, writer.registry, t.input) as events:
            for r in records:
                events.send(r, key=r["account_id"])
        preds: list[dict[str, Any]] = []
        with RecordConsumer(reader.kafka, reader.registry, t.predictions) as pc:
            deadline = time.monotonic() + 90
            while len(preds) < len(records):
                assert not errors, errors
                assert time.monotonic() < deadline, len(preds)
                preds += [r for _, r in pc.poll_batch(500, 0.5)]
        assert sorted(p["event_id"] for p in preds) == sorted(r["event_id"] for r in records)
    finally:
        processor.stop()
        thread.join(60)
    assert not thread.is_alive() and not errors, errors
    return records, preds
