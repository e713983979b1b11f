"""The BentoML side of benchmarks/serving.py: the same ONNX model behind BentoML's adaptive
batching, as a BentoML user writes it. Runs in BentoML's own virtualenv (benchmarks/out),
never imported by streamproc; the model path comes from $BENCH_ONNX_MODEL."""

import os

import bentoml
import numpy as np
import onnxruntime as ort

MODEL = os.environ.get("BENCH_ONNX_MODEL", "deploy/models/fraud/1.1.0/model.onnx")
MAX_BATCH = int(os.environ.get("BENCH_MAX_BATCH", "256"))
# BentoML's bound on the time a request may spend in its batching queue (its default: 60 s).
MAX_LATENCY_MS = int(os.environ.get("BENCH_MAX_LATENCY_MS", "60000"))


# No access log: streamproc writes none either, and a line per request costs BentoML CPU.
@bentoml.service(workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
class Fraud:
    def __init__(self) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # as streamproc's backend: one thread per model
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])

    @bentoml.api(
        batchable=True, batch_dim=0, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS
    )
    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"features": features.astype(np.float32)})[0]
