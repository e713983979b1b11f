"""Probing detection: a probing client is alerted quickly; normal traffic never is."""

from __future__ import annotations

import numpy as np
import pytest

from streamproc import synth
from streamproc.backends.onnx import OnnxRuntimeBackend
from streamproc.drift.profile import ReferenceProfile
from streamproc.insight.probing import ProbingDetector, requests_to_alert
from streamproc.models.spec import load_model_spec
from streamproc.personal import Redactor
from streamproc.types import AlertState, AlertType

DEMO = "deploy/models/fraud/1.1.0"
BATCH = 4096


@pytest.fixture(scope="module")
def demo():
    spec = load_model_spec(DEMO)
    prof = ReferenceProfile.load(f"{DEMO}/reference_profile.json")
    backend = OnnxRuntimeBackend.from_spec(spec)
    yield spec, prof, backend
    backend.close()


def detector(spec, prof, **kw):
    return ProbingDetector(
        [c.median for c in prof.columns], [c.scale for c in prof.columns],
        threshold=spec.outputs.threshold, **kw,
    )  # fmt: skip


def zipf_keys(n, n_accounts, seed):
    """Account keys with a heavy-tailed (Zipf) share of the traffic each."""
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.3, size=n)
    ranks = np.where(ranks > n_accounts, rng.integers(1, n_accounts + 1, n), ranks)
    return [b"acct-%d" % r for r in ranks.tolist()]


def probe_inputs(spec, backend, n, seed=0):
    """A client walking one input across the boundary: start from an event that scores
    near the threshold and nudge its amount by small steps (a bisection-like search)."""
    x = synth.feature_matrix(synth.generate_columns(50_000, seed=seed), spec)
    s = backend.infer(x)[:, spec.outputs.score_index]
    base = x[np.argmin(np.abs(s - spec.outputs.threshold))]
    rng = np.random.default_rng(seed)
    amount = spec.columns.index("amount")
    rows = np.repeat(base[None, :], n, axis=0)
    rows[:, amount] *= 1.0 + np.cumsum(rng.normal(0.0, 0.003, n))
    return rows


def test_probing_client_is_alerted_within_a_bounded_number_of_requests(demo):
    spec, prof, backend = demo
    det = detector(spec, prof)
    bound = requests_to_alert(det.min_suspicious, 1.0 / (1.0 - det.decay))
    # Normal traffic with the prober's requests interleaved, one per 50 events.
    normal = synth.feature_matrix(synth.generate_columns(60 * 200, seed=3), spec)
    keys = zipf_keys(len(normal), 50_000, seed=3)
    probe = probe_inputs(spec, backend, 200)
    alerts, sent = [], 0
    for i in range(200):
        x = np.concatenate([normal[i * 60 : (i + 1) * 60], probe[i : i + 1]])
        k = [*keys[i * 60 : (i + 1) * 60], b"mallory"]
        found = det.update(k, x, backend.infer(x)[:, spec.outputs.score_index])
        sent += 1
        alerts += found
        if found:
            break
    assert [(a.type, a.state, a.feature) for a in alerts] == [
        (AlertType.PROBING, AlertState.FIRING, "key=mallory")
    ]
    assert sent <= bound + 3, sent  # measured: 12, the bound itself
    assert bound == 12


def test_personal_keys_are_redacted_in_the_alert(demo):
    spec, prof, backend = demo
    from streamproc.config import PersonalDataSettings

    red = Redactor.from_settings(
        PersonalDataSettings(key=True), env={"STREAMPROC_PERSONAL_DATA_KEY": "k"}
    )
    assert red is not None
    det = detector(spec, prof, show_key=lambda k: (red.key(k) or b"").decode())
    probe = probe_inputs(spec, backend, 30)
    alerts = []
    for row in probe:
        alerts += det.update([b"alice"], row[None], backend.infer(row[None])[:, 1])
    assert len(alerts) == 1
    assert "alice" not in alerts[0].message and "alice" not in (alerts[0].feature or "")
    assert alerts[0].feature == "key=" + red.hash(b"alice").decode()


def test_no_probing_alert_on_a_million_normal_events(demo):
    spec, prof, backend = demo
    det = detector(spec, prof)
    n = 1_000_000
    x = synth.feature_matrix(synth.generate_columns(n, seed=21), spec)
    s = backend.infer(x)[:, spec.outputs.score_index]
    keys = zipf_keys(n, 50_000, seed=21)  # the same key distribution as the probing test
    alerts = []
    for i in range(0, n, BATCH):
        alerts += det.update(keys[i : i + BATCH], x[i : i + BATCH], s[i : i + BATCH])
    assert alerts == []
    assert det.keys_tracked <= det.max_keys


def test_memory_is_bounded_by_max_keys():
    det = ProbingDetector(np.zeros(3), np.ones(3), threshold=0.5, max_keys=1_000)
    rng = np.random.default_rng(0)
    for i in range(20):
        keys = [b"k%d" % (i * 500 + j) for j in range(500)]
        # Scores within the band: only keys seen there are tracked at all.
        det.update(keys, rng.normal(size=(500, 3)), rng.uniform(0.45, 0.55, 500))
    assert det.keys_tracked <= 1_000 and det.evicted >= 9_000
    assert det.memory_bytes == 1_000 * (3 * 4 + 8 + 8 + 1 + 1)


def test_vectorised_counts_match_a_per_event_loop():
    rng = np.random.default_rng(4)
    kw = dict(threshold=0.5, band=0.2, radius=1.0, horizon=5.0, min_suspicious=2.0)
    det = ProbingDetector(np.zeros(2), np.ones(2), **kw)
    one = ProbingDetector(np.zeros(2), np.ones(2), **kw)
    keys = [b"k%d" % k for k in rng.integers(0, 5, 3_000).tolist()]
    x = rng.normal(0, 0.5, size=(3_000, 2))
    s = rng.uniform(0.2, 0.8, 3_000)
    a = [
        al.feature
        for i in range(0, 3_000, 500)
        for al in det.update(keys[i : i + 500], x[i : i + 500], s[i : i + 500])
    ]
    b = [
        al.feature
        for i in range(3_000)
        for al in one.update(keys[i : i + 1], x[i : i + 1], s[i : i + 1])
    ]
    assert a == b and len(a) > 4
    assert np.allclose(det._count, one._count)


def test_rows_out_of_the_band_touch_no_key_state():
    det = ProbingDetector(np.zeros(2), np.ones(2), threshold=0.5, band=0.1)
    keys = [b"k%d" % i for i in range(1_000)]
    s = np.full(1_000, 0.05)
    s[[10, 500]] = 0.52
    det.update(keys, np.zeros((1_000, 2)), s)
    assert det.keys_tracked == 2


def test_out_of_band_requests_do_not_hide_a_probe():
    """A prober that interleaves far-off requests is alerted as fast as one that does not."""
    det = ProbingDetector(np.zeros(2), np.ones(2), threshold=0.5, min_suspicious=5)
    alerts, sent = [], 0
    for i in range(40):
        near = i % 2 == 0
        x = np.zeros((1, 2)) if near else np.full((1, 2), 9.0)
        alerts += det.update([b"m"], x, np.array([0.49 if near else 0.01]))
        sent += near
        if alerts:
            break
    assert len(alerts) == 1 and sent == requests_to_alert(5, 100)
