"""Sampled explanations: Kernel SHAP against the shap package on the demo model, the sample
policy and the worker's bounded queue."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

from streamproc import synth
from streamproc.backends.onnx import OnnxRuntimeBackend
from streamproc.drift.profile import ReferenceProfile
from streamproc.insight.explain import (
    ExplainRequest,
    ExplanationWorker,
    KernelShap,
    SamplePolicy,
    background_from_profile,
    coalitions,
)
from streamproc.models.spec import load_model_spec
from tests.extras import import_extra

shap = import_extra("shap", "dev")
DEMO = "deploy/models/fraud/1.1.0"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for u in np.unique(v):  # ties: average rank
            r[v == u] = r[v == u].mean()
        return r

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


@pytest.fixture(scope="module")
def demo():
    spec = load_model_spec(DEMO)
    prof = ReferenceProfile.load(f"{DEMO}/reference_profile.json")
    backend = OnnxRuntimeBackend.from_spec(spec)
    x = synth.feature_matrix(synth.generate_columns(2_000, seed=9), spec)
    s = backend.infer(x)[:, spec.outputs.score_index]
    # Ten ordinary events and the ten that score highest (the ones an operator asks about).
    events = x[np.concatenate([np.arange(10), np.argsort(-s)[:10]])]
    yield spec, prof, backend, events
    backend.close()


def test_background_follows_the_reference_and_one_hot_groups_stay_one_hot(demo):
    spec, prof, _, _ = demo
    bg = background_from_profile(prof, k=16)
    onehot = [j for j, c in enumerate(spec.columns) if c.startswith("channel=")]
    assert (bg[:, onehot].sum(axis=1) == 1.0).all()
    amount = spec.columns.index("amount")
    assert (
        abs(np.median(bg[:, amount]) - prof.column("amount").median) < prof.column("amount").scale
    )


def test_additivity_and_agreement_with_shap(demo):
    spec, prof, backend, events = demo
    bg = background_from_profile(prof, k=16)
    ks = KernelShap(backend.infer, bg, spec.outputs.score_index, samples=512)
    phi, base, fx = ks.explain(events)
    # Additivity: base + sum of attributions == the model's output.
    assert np.allclose(phi.sum(axis=1) + base, fx, atol=1e-6)
    assert np.allclose(fx, backend.infer(events)[:, 1], atol=1e-6)

    def f(a):
        return backend.infer(np.ascontiguousarray(a, dtype=np.float32))[:, 1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ke = shap.KernelExplainer(f, bg)
        ref = ke.shap_values(events, nsamples=2048, silent=True)
    assert abs(ke.expected_value - base) < 1e-6  # the same background, the same base value
    rho = [spearman(phi[i], ref[i]) for i in range(len(events))]
    # Measured: median 0.959, min 0.844. Against shap's ExactExplainer (all 65,536
    # coalitions; too slow for a unit test, run by benchmarks/insight.py): median 0.979,
    # where shap's own KernelExplainer at 2048 samples reaches 0.971 on the same events.
    assert np.median(rho) >= 0.92
    assert min(rho) >= 0.7


def test_coalitions_enumerate_small_sizes_and_pair_the_rest():
    m, w = coalitions(16, 512)
    sizes = m.sum(axis=1)
    assert (np.bincount(sizes, minlength=17)[[1, 2, 14, 15]] == [16, 120, 120, 16]).all()
    assert len(m) <= 512 and abs(w.sum() - 1.0) < 1e-9
    assert not ((sizes == 0) | (sizes == 16)).any()


def test_sample_policy_share_threshold_and_requests():
    p = SamplePolicy(share=0.01, min_score=0.9, seed=1)
    ids = [f"e{i}" for i in range(100_000)]
    scores = np.zeros(100_000)
    scores[:5] = 0.95
    p.request(["e77", "missing"])
    picked = p.pick(ids, scores)
    assert set(range(5)) <= set(picked.tolist()) and 77 in picked
    assert 800 <= len(picked) <= 1_200
    assert 77 not in SamplePolicy(seed=1).pick(ids, scores)  # off by default
    once = SamplePolicy()
    once.request(["e3"])
    assert once.pick(ids[:10], np.zeros(10)).tolist() == [3]
    assert once.pick(ids[:10], np.zeros(10)).tolist() == []  # a request is served once


class Slow:
    """An explainer that waits until released: the queue fills meanwhile."""

    method = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()

    def explain(self, x):
        self.release.wait(30)
        n = len(x)
        return np.zeros((n, x.shape[1])), 0.5, np.full(n, 0.5)


def test_worker_drops_when_full_and_never_blocks():
    slow = Slow()
    out: list[dict] = []
    w = ExplanationWorker(lambda v: slow, ["a", "b"], out.extend, queue_size=4, batch=2).start()
    reqs = [ExplainRequest(f"e{i}", "1.0.0", np.zeros(2, np.float32)) for i in range(50)]
    dropped = w.submit(reqs)  # returns at once although nothing is being explained
    assert dropped >= 50 - 4 - 2 and w.counts.dropped == dropped
    slow.release.set()
    assert w.wait_idle(30)
    w.close()
    assert len(out) == 50 - dropped == w.counts.explained
    assert out[0]["attributions"] == {"a": 0.0, "b": 0.0} and out[0]["method"] == "slow"


def test_worker_counts_failures_and_goes_on():
    def broken(version):
        raise RuntimeError("no model")

    w = ExplanationWorker(broken, ["a"], lambda r: None).start()
    w.submit([ExplainRequest("e1", "1.0.0", np.zeros(1, np.float32))])
    assert w.wait_idle(30)
    w.close()
    assert w.counts.failed == 1 and w.counts.explained == 0


def test_worker_thread_runs_at_its_nice_value():
    import os
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread nice values are Linux's")
    seen: list[int] = []

    class Probe:
        method = "probe"

        def explain(self, x):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            n = len(x)
            return np.zeros((n, x.shape[1])), 0.5, np.full(n, 0.5)

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    w = ExplanationWorker(lambda v: Probe(), ["a"], lambda r: None, nice=5).start()
    w.submit([ExplainRequest("e1", "1.0.0", np.zeros(1, np.float32))])
    assert w.wait_idle(30)
    w.close()
    assert seen and seen[0] >= 5  # set absolutely (or kept, where it was higher)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # not the process
