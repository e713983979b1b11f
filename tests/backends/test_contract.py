"""One contract, every backend this machine can run (GPU ones only where a GPU is)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.backends import Backend, load_backend
from streamproc.backends.base import is_asynchronous, submit
from streamproc.errors import ModelError
from tests.backends.conftest import Case, cases

EDGES = (1, 2, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 299, 300)


@pytest.fixture(scope="module", params=cases())
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture(scope="module")
def backend(case: Case, demo_spec, tmp_path_factory) -> Iterator[Backend]:
    options = dict(case.options)
    if case.backend == "tensorrt":
        options["cache_dir"] = tmp_path_factory.mktemp("trt")
    b = load_backend(demo_spec, prefer=[case.backend], options={case.backend: options})
    yield b
    b.close()


def test_is_the_requested_backend(backend, case):
    assert isinstance(backend, Backend)
    assert backend.name == case.backend
    on_cpu = case.backend in ("onnxruntime", "torch")
    assert backend.device.startswith("cpu" if on_cpu else "cuda")


def test_every_batch_size_from_1_to_300(backend, case, features, reference):
    for n in range(1, len(features) + 1):
        out = backend.infer(features[:n])
        assert out.shape == (n, 2), n
        assert out.dtype == np.float32, n
        np.testing.assert_allclose(out, reference[:n], atol=max(case.atol, 1e-6), rtol=0)


def test_bucket_edges_and_larger_than_the_largest_bucket(backend, case, features, reference):
    big = np.concatenate([features] * 3)  # 900 rows: split into chunks of the largest bucket
    for n in (*EDGES, 511, 512, 513, 900):
        out = backend.infer(big[:n])
        assert out.shape == (n, 2)
        np.testing.assert_allclose(
            out, np.concatenate([reference] * 3)[:n], atol=max(case.atol, 1e-6), rtol=0
        )


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_permuting_inputs_permutes_outputs(backend, case, features, data):
    n = data.draw(st.sampled_from(EDGES))
    perm = np.array(data.draw(st.permutations(range(n))))
    out = backend.infer(features[:n])
    out_perm = backend.infer(features[:n][perm])
    np.testing.assert_allclose(out_perm, out[perm], atol=max(case.atol, 1e-6), rtol=0)


def test_two_batches_in_flight_give_what_infer_gives(backend, case, features):
    # submit() returns before the work is done only on torch-cuda with CUDA graphs; the
    # pipeline decodes the next batch meanwhile (BatchHandler.start / finish).
    graphs = case.backend == "torch-cuda" and case.options.get("cuda_graphs", True)
    assert is_asynchronous(backend) == graphs
    big = np.concatenate([features] * 3)
    for n1, n2 in ((1, 300), (513, 7), (900, 64), (256, 256)):
        x1, x2 = big[:n1], big[-n2:]
        first = submit(backend, x1)
        second = submit(backend, x2)  # queued while the first is still in flight
        np.testing.assert_array_equal(first.result(), backend.infer(x1))
        np.testing.assert_array_equal(second.result(), backend.infer(x2))


def test_deterministic(backend, features):
    for n in (1, 33, 300):
        np.testing.assert_array_equal(backend.infer(features[:n]), backend.infer(features[:n]))


def test_rows_are_probabilities(backend, case, features):
    out = backend.infer(features)
    assert (out >= 0).all() and (out <= 1 + 1e-6).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=max(10 * case.atol, 1e-5))


def test_input_conversion_and_errors(backend, features, reference):
    # float64 and non-contiguous inputs are converted, not rejected
    wide = np.asfortranarray(features[:5].astype(np.float64))
    np.testing.assert_allclose(backend.infer(wide), reference[:5], atol=1e-3)
    assert backend.infer(features[:0]).shape == (0, 2)
    with pytest.raises(ModelError, match="shape"):
        backend.infer(features[:4, :5])
    with pytest.raises(ModelError, match="shape"):
        backend.infer(features[0])


def test_closed_backend_refuses_work(case, demo_spec, features, tmp_path):
    options = dict(case.options)
    if case.backend == "tensorrt":
        options["cache_dir"] = tmp_path
    b = load_backend(demo_spec, prefer=[case.backend], options={case.backend: options})
    b.close()
    with pytest.raises(ModelError, match="closed"):
        b.infer(features[:3])
