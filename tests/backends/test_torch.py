"""The torch backend: the ONNX -> torch rebuild, TorchScript / torch.export files.

Skipped with the reason where the ``torch`` extra is missing; failed under CI (tests/extras.py).
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from streamproc import synth
from streamproc.backends.onnx import DEMO_MODEL, OnnxRuntimeBackend
from streamproc.backends.torch_backend import TorchBackend, onnx_to_torch
from streamproc.errors import ModelError
from streamproc.models.spec import load_model_spec
from tests.extras import import_extra

torch = import_extra("torch", "torch")


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_cpu_matches_onnxruntime(version):
    spec = load_model_spec(DEMO_MODEL.parent / version)
    x = synth.feature_matrix(synth.generate_columns(5_000, seed=5), spec)
    ort, tb = OnnxRuntimeBackend.from_spec(spec), TorchBackend.from_spec(spec)
    try:
        diff = np.abs(tb.infer(x) - ort.infer(x)).max()
    finally:
        ort.close()
        tb.close()
    assert diff < 1e-5
    assert (tb.name, tb.device) == ("torch", "cpu")


def save_graph(path, nodes, inits, n_in, n_out, output="probabilities"):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", n_out])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def ort_run(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"features": x})[0]


def torch_run(path, x):
    with torch.no_grad():
        return onnx_to_torch(path)(torch.from_numpy(x)).numpy()


def test_rebuild_handles_matmul_add_and_gemm_attributes(tmp_path):
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.normal(size=(4, 5)),
        "b": rng.normal(size=(5,)),
        "w2t": rng.normal(size=(3, 5)),  # Gemm with transB=1: stored (out, in)
        "c2": rng.normal(size=(1, 3)),
    }
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Tanh", ["a"], ["t"]),
        helper.make_node("Gemm", ["t", "w2t", "c2"], ["g"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Identity", ["g"], ["i"]),
        helper.make_node("Sigmoid", ["i"], ["probabilities"]),
    ]
    path = save_graph(tmp_path / "m.onnx", nodes, inits, 4, 3)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    np.testing.assert_allclose(torch_run(path, x), ort_run(path, x), atol=1e-6)


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([helper.make_node("Erf", ["features"], ["probabilities"])], "op Erf"),
        (
            [
                helper.make_node("Relu", ["features"], ["r"]),
                helper.make_node("Add", ["r", "features"], ["probabilities"]),
            ],
            "chain",
        ),
        ([helper.make_node("Relu", ["features"], ["other"])], "ends in 'other'"),
    ],
)
def test_rebuild_refuses_what_it_cannot_express(tmp_path, nodes, message):
    out = nodes[-1].output[0]
    path = save_graph(tmp_path / "m.onnx", nodes, {}, 3, 3, output=out)
    with pytest.raises(ModelError, match=message):
        onnx_to_torch(path)


def test_unreadable_onnx_is_a_model_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot read"):
        onnx_to_torch(tmp_path / "bad.onnx")


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "fraud"
    shutil.copytree(DEMO_MODEL, d)
    return d


class Constant(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 2), 0.25) + torch.tensor([0.0, 0.5])


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # deprecated, still supported
def test_a_torchscript_file_beside_the_model_wins(model_dir, features):
    torch.jit.script(Constant()).save(str(model_dir / "model.torchscript.pt"))
    tb = TorchBackend.from_spec(load_model_spec(model_dir))
    out = tb.infer(features[:7])
    assert out.tolist() == [[0.25, 0.75]] * 7


def test_a_torch_export_file_as_the_model_file(model_dir, features, reference):
    module = onnx_to_torch(model_dir / "model.onnx")
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(
        module, (torch.zeros(8, 16),), dynamic_shapes={"input": {0: batch}}
    )
    torch.export.save(program, str(model_dir / "exported.pt2"))
    text = (model_dir / "model.yaml").read_text().replace("file: model.onnx", "file: exported.pt2")
    (model_dir / "model.yaml").write_text(text)
    tb = TorchBackend.from_spec(load_model_spec(model_dir))
    np.testing.assert_allclose(tb.infer(features), reference, atol=1e-5)


def test_a_broken_torch_file_is_a_model_error(model_dir):
    (model_dir / "model.pt2").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="torch cannot load"):
        TorchBackend.from_spec(load_model_spec(model_dir))
