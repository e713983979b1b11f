"""TensorRT logic that needs no GPU: cache keys, profiles, calibration batches, imports."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.backends import tensorrt_backend as trt_backend
from streamproc.backends.tensorrt_backend import (
    cache_key,
    calibration_batches,
    normalize_gpu_name,
    profile_shapes,
    sha256_file,
    timing_cache_key,
)
from streamproc.errors import DependencyMissingError

SHA = hashlib.sha256(b"model").hexdigest()
PROFILE = ((1, 16), (64, 16), (256, 16))
BASE = {
    "model_sha256": SHA,
    "trt_version": "10.3.0",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "precision": "fp16",
}


def key(**changes):
    args = {**BASE, **changes}
    profile = args.pop("profile", PROFILE)
    extra = args.pop("extra", "")
    return cache_key(**args, profile=profile, extra=extra)


def test_cache_key_is_a_stable_pure_function():
    # Pinned: a change here silently orphans every engine cached in the field.
    assert key() == "a83e87427ce76e3c06cceb815632568000d38c79823bc03303dc85e34c48504f"
    assert key() == key()
    assert key(gpu_name="nvidia  h100 80gb hbm3") == key()  # GPU name case/spacing
    assert key(model_sha256=SHA.upper()) == key()


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": hashlib.sha256(b"other").hexdigest()},
        {"trt_version": "10.4.0"},
        {"gpu_name": "NVIDIA L4"},
        {"precision": "fp32"},
        {"precision": "int8"},
        {"profile": ((1, 16), (32, 16), (256, 16))},
        {"extra": "calib:abc"},
    ],
)
def test_every_input_changes_the_key(change):
    assert key(**change) != key()


@given(a=st.text(max_size=20), b=st.text(max_size=20))
def test_distinct_gpu_names_give_distinct_keys(a, b):
    if normalize_gpu_name(a) != normalize_gpu_name(b):
        assert key(gpu_name=a) != key(gpu_name=b)


def test_cache_key_rejects_bad_inputs():
    with pytest.raises(ValueError, match="precision"):
        key(precision="fp8")
    with pytest.raises(ValueError, match="sha256"):
        key(model_sha256="abc")


def test_timing_cache_key_ignores_the_model():
    assert timing_cache_key("10.3.0", "NVIDIA  H100") == "timing-10.3.0-nvidia-h100"


def test_sha256_file_matches_hashlib(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"x" * 3_000_000)
    assert sha256_file(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_profile_shapes():
    assert profile_shapes((1, 8, 32, 64, 128, 256), 16) == PROFILE
    assert profile_shapes((4,), 3) == ((1, 3), (4, 3), (4, 3))
    assert profile_shapes((1, 8, 32), 2, opt=8) == ((1, 2), (8, 2), (32, 2))
    with pytest.raises(ValueError):
        profile_shapes((1, 8), 2, opt=9)
    with pytest.raises(ValueError):
        profile_shapes((), 2)


@given(rows=st.integers(1, 500), batch=st.integers(1, 128))
def test_calibration_batches_are_full_and_drawn_from_the_data(rows, batch):
    data = np.arange(rows * 2, dtype=np.float64).reshape(rows, 2)
    batches = calibration_batches(data, batch)
    assert batches and all(b.shape == (batch, 2) and b.dtype == np.float32 for b in batches)
    assert len(batches) == max(1, rows // batch)
    stacked = np.concatenate(batches)
    if rows >= batch:
        np.testing.assert_array_equal(stacked, data[: len(stacked)].astype(np.float32))
    else:
        assert set(stacked[:, 0]) <= set(data[:, 0].astype(np.float32))


def test_calibration_batches_reject_empty_data():
    with pytest.raises(ValueError):
        calibration_batches(np.zeros((0, 3)), 4)


def test_default_cache_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMPROC_TRT_CACHE", str(tmp_path))
    assert trt_backend.default_cache_dir() == tmp_path
    monkeypatch.delenv("STREAMPROC_TRT_CACHE")
    assert trt_backend.default_cache_dir().name == "tensorrt"


@pytest.mark.parametrize("module", ["tensorrt", "pycuda.driver"])
def test_missing_runtime_names_the_gpu_extra(module, monkeypatch, demo_spec):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(DependencyMissingError, match=r"pip install 'streamproc\[gpu\]'"):
        trt_backend.TensorRTBackend.from_spec(demo_spec)
