"""Backends under test: every backend this machine can run, and the data they score.

GPU backends join the parametrization only where an NVIDIA driver is present. The torch
cases are always collected: where the ``torch`` extra is missing they are skipped with the
reason, and under CI they fail (see tests/extras.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from streamproc import synth
from streamproc.backends.onnx import DEMO_MODEL
from streamproc.backends.select import nvidia_driver
from streamproc.models.spec import ModelSpec, load_model_spec
from tests.extras import requires_extra

GPU = nvidia_driver() is not None
needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(not GPU, reason="no NVIDIA GPU")]


@dataclass(frozen=True)
class Case:
    """One backend configuration and how close it must stay to the ONNX Runtime reference."""

    id: str
    backend: str
    atol: float
    options: dict[str, Any] = field(default_factory=dict)


def cases() -> list[Any]:
    out: list[Any] = [pytest.param(Case("onnxruntime", "onnxruntime", 0.0), id="onnxruntime")]
    torch_cpu = Case("torch-cpu", "torch", 1e-5)
    out.append(pytest.param(torch_cpu, id="torch-cpu", marks=requires_extra("torch", "torch")))
    if GPU:
        gpu_cases = [
            Case("torch-cuda", "torch-cuda", 1e-4),
            Case("torch-cuda-fp16", "torch-cuda", 5e-3, {"fp16": True}),
            Case("torch-cuda-eager", "torch-cuda", 1e-4, {"cuda_graphs": False}),
            Case("tensorrt-fp32", "tensorrt", 1e-4, {"precision": "fp32"}),
            Case("tensorrt-fp16", "tensorrt", 5e-3, {"precision": "fp16"}),
        ]
        out += [pytest.param(c, id=c.id, marks=pytest.mark.gpu) for c in gpu_cases]
    return out


@pytest.fixture(scope="session")
def demo_spec() -> ModelSpec:
    return load_model_spec(DEMO_MODEL)


@pytest.fixture(scope="session")
def features(demo_spec: ModelSpec) -> np.ndarray:
    """300 synthetic rows in the demo model's input layout (a few shifted far out)."""
    base = synth.feature_matrix(synth.generate_columns(280, seed=123), demo_spec)
    far = synth.feature_matrix(synth.generate_columns(20, seed=7, shift=3.0), demo_spec)
    return np.concatenate([base, far])


@pytest.fixture(scope="session")
def reference(demo_spec: ModelSpec, features: np.ndarray) -> np.ndarray:
    """ONNX Runtime's output for ``features``, row by row (batch size 1)."""
    from streamproc.backends.onnx import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend.from_spec(demo_spec)
    try:
        return np.concatenate([backend.infer(features[i : i + 1]) for i in range(len(features))])
    finally:
        backend.close()
