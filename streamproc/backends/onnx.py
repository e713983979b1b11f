"""ONNX Runtime on the CPU: the backend that runs everywhere.

>>> from streamproc.models.spec import load_model_spec
>>> backend = OnnxRuntimeBackend.from_spec(load_model_spec(DEMO_MODEL))
>>> out = backend.infer(np.zeros((3, backend.n_features), dtype=np.float32))
>>> out.shape, out.dtype.name, bool(np.allclose(out.sum(axis=1), 1))
((3, 2), 'float32', True)
>>> backend.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.backends.base import Backend, Matrix, check_batch
from streamproc.errors import DependencyMissingError, ModelError
from streamproc.models.spec import ModelSpec

# The demo model shipped in the repository (used by examples and tests).
DEMO_MODEL = Path(__file__).resolve().parents[2] / "deploy" / "models" / "fraud" / "1.0.0"


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # a core dependency, but keep the message helpful
        raise DependencyMissingError("onnxruntime", None) from exc
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    """An ``onnxruntime.InferenceSession`` on the CPU execution provider.

    ``intra_op_threads`` defaults to 1: a streaming worker scales by partitions and
    processes, not by threads inside one small model. The session is warmed up once per
    bucket size so the first real batches do not pay for allocations.
    """

    name = "onnxruntime"
    device = "cpu"

    def __init__(
        self,
        model_path: str | Path,
        *,
        input_name: str = "features",
        output_name: str = "probabilities",
        buckets: Sequence[int] = (1, 8, 32, 64, 128, 256),
        intra_op_threads: int = 1,
    ) -> None:
        ort = _ort()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session: Any = ort.InferenceSession(
                str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped exception classes
            raise ModelError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if input_name not in inputs:
            raise ModelError(f"{model_path}: no input {input_name!r} (has {sorted(inputs)})")
        if output_name not in outputs:
            raise ModelError(f"{model_path}: no output {output_name!r} (has {sorted(outputs)})")
        shape = inputs[input_name].shape
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise ModelError(f"{model_path}: input {input_name!r} must be [N, F], is {shape}")
        self.n_features: int = shape[1]
        self._input, self._output = input_name, output_name
        self.n_outputs = 0
        for size in buckets:
            self.n_outputs = self._run(np.zeros((size, self.n_features), np.float32)).shape[1]

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, intra_op_threads: int = 1) -> OnnxRuntimeBackend:
        backend = cls(
            spec.model_path,
            input_name=spec.input_tensor,
            output_name=spec.outputs.tensor,
            buckets=spec.buckets,
            intra_op_threads=intra_op_threads,
        )
        if backend.n_features != spec.n_features:
            backend.close()
            raise ModelError(
                f"{spec.model_path} takes {backend.n_features} features, "
                f"model.yaml maps {spec.n_features}"
            )
        return backend

    def _run(self, batch: Matrix) -> Matrix:
        if self._session is None:
            raise ModelError("the ONNX Runtime backend is closed")
        try:
            out = self._session.run([self._output], {self._input: batch})[0]
        except Exception as exc:
            raise ModelError(f"ONNX Runtime inference failed: {exc}") from exc
        return np.asarray(out, dtype=np.float32)

    def infer(self, batch: Matrix) -> Matrix:
        x = check_batch(batch, self.n_features)
        if len(x) == 0:
            return np.empty((0, self.n_outputs), dtype=np.float32)
        return self._run(x)

    def close(self) -> None:
        self._session = None
