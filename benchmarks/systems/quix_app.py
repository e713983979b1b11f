"""(e) A Quix Streams application: StreamingDataFrame, one ONNX call per event.

Quix has no batch take, so this is its idiomatic per-message shape:

* input: ``AvroDeserializer(schema_registry_client_config=...)``, Quix's serializer that
  hands the Confluent wire format to confluent-kafka's registry-aware AvroDeserializer
  (writer schema fetched from the registry by the id in each header, cached);
* ``sdf.apply(score)``: the Transaction dict -> feature row -> one ``session.run`` ->
  a Prediction dict;
* output: ``sdf.to_topic`` with ``AvroSerializer(schema=Prediction, schema_registry_client_
  config=...)`` (confluent-kafka's AvroSerializer: registers the schema, frames the value).

Quix's own at-least-once: offsets are committed by its checkpointing (every 5 s by
default) after the producer is flushed.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from quixstreams import Application
from quixstreams.models.serializers.avro import AvroDeserializer, AvroSerializer
from quixstreams.models.serializers.schema_registry import SchemaRegistryClientConfig

from systems.shared import (
    FeatureMap,
    config_from_argv,
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
    outputs, input_name = [fmap.output_tensor], fmap.input_tensor
    registry = SchemaRegistryClientConfig(url=cfg.registry_url)
    app = Application(
        broker_address=cfg.bootstrap,
        consumer_group=cfg.group_id,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        state_dir=cfg.state_dir or None,
        loglevel="WARNING",
        auto_create_topics=False,
        use_changelog_topics=False,
        # The same producer compression / linger as streamproc's clients.
        producer_extra_config={"compression.type": "lz4", "linger.ms": 2},
    )
    source = app.topic(
        cfg.input_topic,
        key_deserializer="bytes",
        value_deserializer=AvroDeserializer(schema_registry_client_config=registry),
    )
    sink = app.topic(
        cfg.output_topic,
        key_serializer="bytes",
        value_serializer=AvroSerializer(
            json.loads(schema_text("Prediction")), schema_registry_client_config=registry
        ),
    )
    counts = {"events": 0}
    started = time.monotonic()

    def score(rec: dict[str, Any]) -> dict[str, Any]:
        x = np.asarray([fmap.row(rec)], dtype=np.float32)
        probs = session.run(outputs, {input_name: x})[0][0]
        counts["events"] += 1
        return prediction_record(fmap, rec, probs, now_ms())

    sdf = app.dataframe(source)
    sdf = sdf.apply(score)
    sdf.to_topic(sink)
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    try:
        app.run()
    finally:
        write_report(cfg, {**counts, "seconds": time.monotonic() - started})


if __name__ == "__main__":
    main()
