"""(d) A Faust (faust-streaming) agent: ``stream.take(256, within=0.005)``, one ONNX call per batch.

Per batch: fastavro-decode each raw value (writer schema fetched once per id), build the
feature matrix, one ``session.run``, fastavro-encode each Prediction and ``await
topic.send`` it. Faust's own at-least-once: a batch's events are acked after the agent
has handled it, offsets committed by Faust's periodic committer (aiokafka underneath).
"""

from __future__ import annotations

import logging
import sys
import time

import faust

from systems.shared import (
    FeatureMap,
    FramedAvro,
    Registry,
    config_from_argv,
    features_matrix,
    now_ms,
    onnx_session,
    prediction_record,
    schema_text,
    write_report,
)


def main() -> None:
    cfg = config_from_argv()
    fmap = FeatureMap(cfg.model_dir)
    session = onnx_session(fmap)
    registry = Registry(cfg.registry_url)
    avro = FramedAvro(registry, registry.register(f"{cfg.output_topic}-value",
                                                  schema_text("Prediction")))  # fmt: skip
    app = faust.App(
        cfg.group_id,
        broker=f"kafka://{cfg.bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        topic_partitions=4,
        consumer_auto_offset_reset="earliest",
        datadir=cfg.state_dir or None,
        # streamproc's producer lingers 2 ms; Faust's default (0) sends a request per record.
        producer_linger=0.002,
    )
    source = app.topic(cfg.input_topic, key_type=bytes, value_type=bytes)
    sink = app.topic(cfg.output_topic, key_type=bytes, value_type=bytes)
    counts = {"events": 0, "batches": 0}
    started = time.monotonic()
    outputs, input_name = [fmap.output_tensor], fmap.input_tensor
    within = cfg.max_wait_ms / 1000.0

    @app.agent(source)
    async def score(stream: faust.StreamT[bytes]) -> None:
        # The worker's logging setup leaves aiokafka at DEBUG: a LogRecord per request.
        for name in ("aiokafka", "faust", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)
        async for values in stream.take(cfg.batch_size, within=within):
            records = [avro.decode(v) for v in values]
            probs = session.run(outputs, {input_name: features_matrix(fmap, records)})[0]
            t = now_ms()
            for rec, p in zip(records, probs, strict=True):
                value = avro.encode(prediction_record(fmap, rec, p, t))
                await sink.send(key=rec["account_id"].encode(), value=value)
            counts["events"] += len(values)
            counts["batches"] += 1

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    try:
        app.main()  # runs the worker until SIGTERM, then exits
    finally:
        write_report(cfg, {**counts, "seconds": time.monotonic() - started})


if __name__ == "__main__":
    main()
