"""A tiny real ONNX model (logistic regression) in a model directory, built with onnx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from streamproc.models.spec import ModelSpec


def write_model(
    directory: Path,
    *,
    version: str = "1.0.0",
    weights: Any = None,
    spec: dict[str, Any] | None = None,
) -> Path:
    """``directory`` with model.onnx (features (N,F) -> probabilities (N,2)) and model.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = spec or {
        "name": "fraud",
        "version": version,
        "inputs": [
            {"field": "amount", "min": 0, "max": 10_000},
            {"field": "merchant_risk", "min": 0, "max": 1},
            {"field": "hour_of_day", "min": 0, "max": 23},
        ],
        "backends": ["onnxruntime"],
        "buckets": [1, 8, 32],
        "changelog": f"version {version}",
    }
    n = ModelSpec.model_validate(spec).n_features
    w = np.asarray(weights if weights is not None else np.linspace(-1, 1, n), np.float32)
    coef = np.stack([-w, w], axis=1).astype(np.float32)  # (F, 2): softmax of (-z, z)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "logreg",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(coef, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, directory / "model.onnx")
    (directory / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return directory


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model(tmp_path / "src-1.0.0")
