"""What the hand-written workers share: config, feature mapping, ONNX session, Prediction.

Deliberately free of streamproc imports: the Quix Streams worker runs against its own
confluent-kafka/pydantic (see ``benchmarks/README.md``), and the naive / Faust / Quix
workers are meant to be what a user would write without streamproc. The feature mapping
is read from the same ``model.yaml`` so every system feeds the model identical rows.
"""

from __future__ import annotations

import dataclasses
import io
import json
import signal
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "streamproc" / "avro_schemas"
_HEADER = struct.Struct(">bI")
# The core is also measured at this batch size: the default max_batch_size before
# 2026-11-26 (it was raised to 4096 then; see benchmarks/README.md "Batch size").
COMPARED_BATCH = 1024


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs; written as JSON by the harness."""

    system: str
    bootstrap: str
    registry_url: str
    input_topic: str
    output_topic: str
    group_id: str
    model_dir: str
    batch_size: int = 256
    max_wait_ms: float = 5.0
    state_dir: str = ""  # Quix state / Faust data directory
    report_path: str = ""  # where a worker writes its final counters (JSON)
    stop_after: int = 0  # profiled streamproc: stop after this many events (0: never)
    # streamproc only: pipeline config keys set over the reference workload's, by dotted
    # path ({"delivery.commit_interval_ms": 5000}); see streamproc_run.pipeline_dict
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> WorkerConfig:
        return cls(**json.loads(Path(path).read_text()))


def config_from_argv() -> WorkerConfig:
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: {sys.argv[0]} <worker-config.json>")
    return WorkerConfig.load(sys.argv[1])


def write_report(cfg: WorkerConfig, report: dict[str, Any]) -> None:
    if cfg.report_path:
        Path(cfg.report_path).write_text(json.dumps(report))


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM / SIGINT (the harness stops workers with SIGTERM)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def now_ms() -> int:
    return int(time.time() * 1000)


def to_ms(value: Any) -> int:
    """fastavro returns timestamp-millis as an aware datetime; plain ints pass through."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


# -- the model ----------------------------------------------------------------------------


class FeatureMap:
    """``model.yaml``'s input mapping as plain Python: one Transaction dict -> one row.

    No validation (no ranges, no NaN checks): this is what a hand-written consumer does.
    Nulls take the imputed value where the spec says ``impute``, else NaN.
    """

    def __init__(self, model_dir: str | Path) -> None:
        spec = yaml.safe_load((Path(model_dir) / "model.yaml").read_text())
        self.spec = spec
        self.name: str = spec["name"]
        self.version: str = spec["version"]
        outputs = spec.get("outputs", {})
        self.score_index: int = outputs.get("score_index", 1)
        self.labels: tuple[str, str] = tuple(outputs.get("labels", ("legit", "fraud")))  # type: ignore[assignment]
        self.threshold: float = outputs.get("threshold", 0.5)
        self.input_tensor: str = spec.get("input_tensor", "features")
        self.output_tensor: str = outputs.get("tensor", "probabilities")
        self.model_path = Path(model_dir) / spec.get("file", "model.onnx")
        self._steps: list[tuple[str, str, Any]] = []
        for f in spec["inputs"]:
            if f.get("encoding", "value") == "onehot":
                self._steps.append(("onehot", f["field"], tuple(f["symbols"])))
            else:
                fill = f.get("impute", 0.0) if f.get("null") == "impute" else float("nan")
                self._steps.append(("value", f["field"], float(fill)))
        self.n_features = sum(len(a) if k == "onehot" else 1 for k, _, a in self._steps)

    def row(self, rec: dict[str, Any]) -> list[float]:
        out: list[float] = []
        for kind, field, arg in self._steps:
            v = rec.get(field)
            if kind == "onehot":
                out.extend(1.0 if v == s else 0.0 for s in arg)
            else:
                out.append(arg if v is None else float(v))
        return out


def onnx_session(fmap: FeatureMap) -> Any:
    """An ONNX Runtime CPU session with streamproc's settings (one intra-op thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        str(fmap.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
    )


def schema_text(name: str) -> str:
    return (SCHEMAS / f"{name}.avsc").read_text()


def prediction_record(
    fmap: FeatureMap, rec: dict[str, Any], probs: Any, processed_ms: int
) -> dict[str, Any]:
    """The Prediction a worker emits for one input record and its model output row."""
    scores = [float(x) for x in probs]
    score = scores[fmap.score_index]
    t = to_ms(rec["event_time"])
    return {
        "event_id": rec["event_id"],
        "key": rec["account_id"],
        "model_name": fmap.name,
        "model_version": fmap.version,
        "score": score,
        "scores": scores,
        "label": fmap.labels[1] if score >= fmap.threshold else fmap.labels[0],
        "event_time": t,
        "processed_time": processed_ms,
        "latency_ms": float(processed_ms - t),
    }


# -- the registry and the Confluent wire format -------------------------------------------


class Registry:
    """Fetch writer schemas once per id; register the Prediction schema for the output."""

    def __init__(self, url: str) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.client = SchemaRegistryClient({"url": url})
        self._parsed: dict[int, Any] = {}

    def writer(self, schema_id: int) -> Any:
        parsed = self._parsed.get(schema_id)
        if parsed is None:
            text = self.client.get_schema(schema_id).schema_str
            parsed = self._parsed[schema_id] = fastavro.parse_schema(json.loads(text))
        return parsed

    def register(self, subject: str, text: str) -> int:
        from confluent_kafka.schema_registry import Schema

        return int(self.client.register_schema(subject, Schema(text, "AVRO")))


class FramedAvro:
    """Decode Confluent-framed Avro (writer schema by id) and encode framed Predictions."""

    def __init__(self, registry: Registry, prediction_id: int) -> None:
        self.registry = registry
        self.prediction = fastavro.parse_schema(json.loads(schema_text("Prediction")))
        self.prefix = _HEADER.pack(0, prediction_id)

    def decode(self, payload: bytes) -> dict[str, Any]:
        magic, sid = _HEADER.unpack_from(payload)
        if magic != 0:
            raise ValueError("not a Confluent-framed Avro payload")
        rec = fastavro.schemaless_reader(io.BytesIO(payload[5:]), self.registry.writer(sid), None)
        assert isinstance(rec, dict)
        return rec

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.prefix)
        fastavro.schemaless_writer(buf, self.prediction, record)
        return buf.getvalue()


def features_matrix(fmap: FeatureMap, records: list[dict[str, Any]]) -> Any:
    return np.asarray([fmap.row(r) for r in records], dtype=np.float32).reshape(
        len(records), fmap.n_features
    )
