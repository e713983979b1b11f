"""(c) The naive loop: per event fastavro decode, one ONNX Runtime call, fastavro encode.

Writer schemas are fetched from the registry once per id; the Prediction schema is
registered once for the output subject. Same consume / flush / commit shape as (b).
"""

from __future__ import annotations

import numpy as np
from confluent_kafka import Message

from systems.loop import run_loop
from systems.shared import (
    FeatureMap,
    FramedAvro,
    Registry,
    config_from_argv,
    now_ms,
    onnx_session,
    prediction_record,
    schema_text,
)


def main() -> None:
    cfg = config_from_argv()
    fmap = FeatureMap(cfg.model_dir)
    session = onnx_session(fmap)
    registry = Registry(cfg.registry_url)
    avro = FramedAvro(registry, registry.register(f"{cfg.output_topic}-value",
                                                  schema_text("Prediction")))  # fmt: skip
    run = session.run
    outputs, input_name = [fmap.output_tensor], fmap.input_tensor

    def score_one(msg: Message) -> bytes:
        rec = avro.decode(msg.value())
        x = np.asarray([fmap.row(rec)], dtype=np.float32)
        probs = run(outputs, {input_name: x})[0][0]
        return avro.encode(prediction_record(fmap, rec, probs, now_ms()))

    run_loop(cfg, score_one)


if __name__ == "__main__":
    main()
