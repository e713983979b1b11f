"""GPU-only behaviour: TensorRT engine cache, int8, the two-slot stream, CUDA graphs, NVML.

Skipped only where no NVIDIA GPU is present; on a GPU machine a missing ``streamproc[gpu]``
or ``streamproc[torch]`` install fails these tests instead of hiding them.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamproc import synth
from streamproc.backends import load_backend
from streamproc.backends.nvml import gpu_stats
from streamproc.errors import ModelError
from tests.backends.conftest import needs_gpu

pytestmark = needs_gpu


def trt(spec, cache_dir, **options):
    from streamproc.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend.from_spec(spec, cache_dir=cache_dir, **options)


def test_the_demo_model_prefers_tensorrt_on_a_gpu(demo_spec, tmp_path, features, reference):
    backend = load_backend(demo_spec, options={"tensorrt": {"cache_dir": tmp_path}})
    try:
        assert (backend.name, backend.device) == ("tensorrt", "cuda:0")
        np.testing.assert_allclose(backend.infer(features), reference, atol=1e-4)
    finally:
        backend.close()


def test_engine_and_timing_cache_are_written_then_reused(demo_spec, tmp_path, features):
    first = trt(demo_spec, tmp_path)
    out1 = first.infer(features)
    first.close()
    assert first.built
    assert first.engine_path.is_file() and first.engine_path.name == f"{first.key}.engine"
    assert list(tmp_path.glob("timing-*.bin"))
    second = trt(demo_spec, tmp_path)
    try:
        assert not second.built and second.key == first.key
        np.testing.assert_array_equal(second.infer(features), out1)
    finally:
        second.close()
    other = trt(demo_spec, tmp_path, precision="fp16")
    try:
        assert other.built and other.key != first.key
    finally:
        other.close()


def test_int8_calibrated_from_reference_rows_stays_close(demo_spec, tmp_path, features, reference):
    calib = synth.feature_matrix(synth.generate_columns(4096, seed=77), demo_spec)
    backend = trt(demo_spec, tmp_path, precision="int8", calibration_data=calib)
    try:
        out = backend.infer(features)
    finally:
        backend.close()
    assert list(tmp_path.glob("*.calibration"))
    assert np.abs(out - reference).mean() < 0.02
    agree = ((out[:, 1] >= 0.5) == (reference[:, 1] >= 0.5)).mean()
    assert agree >= 0.97


def test_int8_without_calibration_data_is_refused(demo_spec, tmp_path):
    with pytest.raises(ModelError, match="calibration_data"):
        trt(demo_spec, tmp_path, precision="int8")


def test_stream_of_batches_matches_one_by_one(demo_spec, tmp_path, features):
    backend = trt(demo_spec, tmp_path)
    big = np.concatenate([features] * 3)
    sizes = [1, 300, 7, 256, 513, 64, 65]
    batches = [big[:n] for n in sizes]
    try:
        streamed = list(backend.infer_stream(batches))
        single = [backend.infer(b) for b in batches]
    finally:
        backend.close()
    assert [len(o) for o in streamed] == sizes
    for a, b in zip(streamed, single, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_torch_cuda_graphs_match_eager(demo_spec, features):
    from streamproc.backends.torch_backend import TorchBackend

    graphs = TorchBackend.from_spec(demo_spec, device="cuda")
    eager = TorchBackend.from_spec(demo_spec, device="cuda", cuda_graphs=False)
    try:
        assert set(graphs._graphs) == set(demo_spec.buckets)
        np.testing.assert_allclose(graphs.infer(features), eager.infer(features), atol=1e-5)
    finally:
        graphs.close()
        eager.close()


def test_torch_cuda_refuses_a_result_whose_buffers_a_third_submit_reused(demo_spec, features):
    from streamproc.backends.torch_backend import TorchBackend

    backend = TorchBackend.from_spec(demo_spec, device="cuda")
    try:
        assert backend.asynchronous
        first = backend.submit(features[:10])
        second = backend.submit(features[10:20])
        third = backend.submit(features[20:30])  # reuses the first one's pinned slot
        with pytest.raises(ModelError, match="reused"):
            first.result()
        np.testing.assert_array_equal(second.result(), backend.infer(features[10:20]))
        np.testing.assert_array_equal(third.result(), backend.infer(features[20:30]))
    finally:
        backend.close()


def test_nvml_sees_the_gpu():
    stats = gpu_stats()
    assert stats
    gpu = stats[0]
    assert gpu["index"] == 0 and gpu["name"]
    assert 0 < gpu["memory_used_bytes"] <= gpu["memory_total_bytes"]
