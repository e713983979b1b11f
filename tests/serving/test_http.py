"""``streamproc serve`` on the real stack: Triton's HTTP client as a real v2 client,
concurrent clients batched together, reason codes, tenants' rate limits, the rollout's
routing and the cache across a version switch, and a shutdown that answers everything."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from streamproc import synth
from streamproc.backends.base import Backend
from streamproc.kafka.control import KafkaControlStore
from streamproc.models.spec import load_model_spec
from streamproc.pipeline.scoring import Scored, Scorer, SingleScorer
from streamproc.rollout.router import assign
from streamproc.rollout.state import Deploy, Promote, Strategy, StrategyParams
from streamproc.rollout.store import execute
from streamproc.serving.service import build_service
from tests.extras import import_extra

httpclient = import_extra("tritonclient.http", "dev")
InferenceServerException = import_extra("tritonclient.utils", "dev").InferenceServerException

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "deploy" / "models" / "fraud"
SPEC = load_model_spec(MODELS / "1.0.0")
LIMIT_S = 60  # bounds a wait on a condition (a loaded 2-core machine), never a sleep


def onnx_scores(version: str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(MODELS / version / "model.onnx"),
                                providers=["CPUExecutionProvider"])  # fmt: skip
    return sess.run(None, {"features": x})[0]


def features(n: int, seed: int = 0) -> np.ndarray:
    return synth.feature_matrix(synth.generate_columns(n, seed=seed), SPEC)


def v2_body(x: np.ndarray, **extra) -> dict:
    inp = {"name": "features", "datatype": "FP32", "shape": list(x.shape),
           "data": x.ravel().tolist()}  # fmt: skip
    return {"inputs": [inp], **extra}


@pytest.fixture
def service_factory(pipeline_config_factory):
    def make(serving: dict | None = None, **kwargs):
        s = {"batching": {"max_batch_size": 256, "max_wait_ms": 10}, **(serving or {})}
        cfg = pipeline_config_factory(partitions=1, serving=s)
        return build_service(cfg, instance="test-serve", **kwargs), cfg

    return make


def test_triton_client_gets_the_onnx_models_scores(service_factory, serve_factory):
    service, _ = service_factory()
    served = serve_factory(service)
    client = httpclient.InferenceServerClient(served.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fraud") and client.is_model_ready("fraud", "1.0.0")
    assert not client.is_model_ready("fraud", "9.9.9") and not client.is_model_ready("nope")
    meta = client.get_model_metadata("fraud")
    assert meta["versions"] == ["1.0.0"]
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert client.get_server_metadata()["name"] == "streamproc"

    x = features(37, seed=1)
    want = onnx_scores("1.0.0", x)
    for binary_in in (False, True):
        for binary_out in (False, True):
            inp = httpclient.InferInput("features", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary_in)
            out = httpclient.InferRequestedOutput("probabilities", binary_data=binary_out)
            res = client.infer("fraud", [inp], outputs=[out], request_id="r-1")
            np.testing.assert_array_equal(res.as_numpy("probabilities"), want)
            assert res.get_response()["model_version"] == "1.0.0"
            assert res.get_response()["id"] == "r-1"
    # No outputs named: Triton's client asks for binary outputs of everything.
    inp = httpclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer("fraud", [inp], model_version="1.0.0")
    np.testing.assert_array_equal(res.as_numpy("probabilities"), want)
    client.close()


def test_64_concurrent_clients_are_batched_and_scored_right(service_factory, serve_factory):
    service, _ = service_factory()
    served = serve_factory(service)
    x = features(64 * 8, seed=2)
    want = onnx_scores("1.0.0", x)
    barrier = threading.Barrier(64)

    def client(i: int) -> list[np.ndarray]:
        c = httpclient.InferenceServerClient(served.url)
        out = []
        barrier.wait(LIMIT_S)
        for j in range(8):
            row = x[i * 8 + j : i * 8 + j + 1]
            inp = httpclient.InferInput("features", [1, 16], "FP32")
            inp.set_data_from_numpy(row)
            out.append(c.infer("fraud", [inp]).as_numpy("probabilities"))
        c.close()
        return out

    with ThreadPoolExecutor(64) as pool:
        got = list(pool.map(client, range(64)))
    np.testing.assert_array_equal(np.concatenate([np.concatenate(g) for g in got]), want)
    reg = service.registry
    labels = {"pipeline": service.pipeline}
    batches = reg.get_sample_value("streamproc_http_batch_rows_count", labels)
    rows = reg.get_sample_value("streamproc_http_batch_rows_sum", labels)
    singles = reg.get_sample_value("streamproc_http_batch_rows_bucket", {**labels, "le": "1.0"})
    assert rows == 512 and batches < 512 and singles < batches  # some batch held > 1 row
    assert service.batcher.max_batch_rows > 1
    # The same sensor as the stream's: events in and predictions by model version.
    assert reg.get_sample_value("streamproc_events_in_total", labels) == 512
    out = {**labels, "model": "fraud", "version": "1.0.0"}
    assert reg.get_sample_value("streamproc_events_out_total", out) == 512
    ok = {**labels, "route": "v2_infer", "tenant": "anonymous", "code": "200"}
    assert reg.get_sample_value("streamproc_http_requests_total", ok) == 512


def test_malformed_bodies_get_400_with_reasons(service_factory, serve_factory):
    service, _ = service_factory({"max_body_bytes": 100_000})
    served = serve_factory(service)
    c = httpx.Client(base_url=f"http://{served.url}", timeout=LIMIT_S)
    url = "/v2/models/fraud/infer"
    x = features(3, seed=3)

    def err(body: bytes | dict, path: str = url) -> dict:
        r = c.post(path, content=body if isinstance(body, bytes) else json.dumps(body).encode())
        assert r.status_code == 400, r.text
        return r.json()

    assert "not JSON" in err(b"{nope")["error"]
    assert "one input" in err({"inputs": []})["error"]
    assert "unknown input" in err({"inputs": [{**v2_body(x)["inputs"][0], "name": "x"}]})["error"]
    assert (
        "datatype" in err({"inputs": [{**v2_body(x)["inputs"][0], "datatype": "BYTES"}]})["error"]
    )
    assert "shape" in err({"inputs": [{**v2_body(x)["inputs"][0], "shape": [3, 15]}]})["error"]
    assert (
        "values for shape"
        in err({"inputs": [{**v2_body(x)["inputs"][0], "shape": [4, 16]}]})["error"]
    )
    bad_data = {"inputs": [{**v2_body(x)["inputs"][0], "data": ["a"] * 48}]}
    assert "not FP32 numbers" in err(bad_data)["error"]

    bad = x.copy()
    bad[0, 0] = -5.0  # amount below min 0
    bad[2, 12:16] = [1, 1, 0, 0]  # two channels at once
    body = err(v2_body(bad))
    assert [(r["index"], r["reason"], r["reason_code"]) for r in body["rejected"]] == [
        (0, "OUT_OF_RANGE", 8),
        (2, "UNKNOWN_ENUM", 9),
    ]
    assert "amount=-5.0 is below min 0.0" in body["rejected"][0]["detail"]

    # Records of the input schema: the decoders' rules and reason codes.
    records, _ = synth.generate(4, seed=4)
    records = [{k: v for k, v in r.items()} for r in records]
    records[0]["channel"] = "CARRIER_PIGEON"
    records[1]["merchant_risk"] = None
    del records[2]["hour_of_day"]
    records[3]["amount"] = "lots"
    body = err({"instances": records}, "/v1/models/fraud:predict")
    assert [r["reason"] for r in body["rejected"]] == [
        "UNKNOWN_ENUM", "MISSING_FEATURE", "MISSING_FEATURE", "CORRUPT",
    ]  # fmt: skip
    big = v2_body(features(2000, seed=3))  # about 400 kB of JSON
    r = c.post(url, content=json.dumps(big).encode())
    assert r.status_code == 413 and "at most 100000" in r.json()["error"]
    assert c.post("/v2/models/other/infer", json=v2_body(x)).status_code == 404
    assert c.post("/v2/models/fraud/versions/9.9.9/infer", json=v2_body(x)).status_code == 404
    reg = service.registry
    rejected = {"pipeline": service.pipeline, "reason": "UNKNOWN_ENUM"}
    assert reg.get_sample_value("streamproc_events_rejected_total", rejected) == 2

    # A valid request still gets its scores, records too.
    r = c.post(url, json=v2_body(x))
    assert r.status_code == 200
    np.testing.assert_array_equal(
        np.array(r.json()["outputs"][0]["data"], np.float32).reshape(3, 2), onnx_scores("1.0.0", x)
    )
    good, _ = synth.generate(5, seed=5)
    r = c.post("/v1/models/fraud:predict", json={"instances": good})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    want = onnx_scores("1.0.0", features(5, seed=5))[:, 1]
    np.testing.assert_array_equal(np.array([p["score"] for p in preds], np.float32), want)
    assert [p["event_id"] for p in preds] == [g["event_id"] for g in good]
    assert {p["model_version"] for p in preds} == {"1.0.0"}


def test_an_over_rate_tenant_gets_429_while_another_keeps_its_rate(
    service_factory, serve_factory, monkeypatch
):
    monkeypatch.setenv("TEST_SERVE_KEY_B", "key-b")
    tenants = [
        # A refill of one request per 1000 s: after its burst of 2, "slow" is over its rate
        # for the rest of the test whatever the machine's speed.
        {"name": "slow", "key": "key-a", "rate_per_s": 0.001, "burst": 2},
        {"name": "fast", "key_env": "TEST_SERVE_KEY_B", "rate_per_s": 1000, "burst": 1000},
    ]
    service, _ = service_factory({"tenants": tenants})
    served = serve_factory(service)
    c = httpx.Client(base_url=f"http://{served.url}", timeout=LIMIT_S)
    body = v2_body(features(1, seed=6))
    url = "/v2/models/fraud/infer"

    def post(key: str | None, bearer: bool = True):
        headers = {} if key is None else (
            {"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key})  # fmt: skip
        return c.post(url, json=body, headers=headers)

    assert post(None).status_code == 401
    assert post("wrong").status_code == 401
    assert [post("key-a").status_code for _ in range(2)] == [200, 200]
    codes_a, codes_b = [], []
    for _ in range(10):
        r = post("key-a", bearer=False)
        codes_a.append(r.status_code)
        assert r.status_code != 429 or int(r.headers["Retry-After"]) >= 1
        codes_b.append(post("key-b").status_code)
    assert codes_a == [429] * 10 and codes_b == [200] * 10
    assert "rate limit of tenant 'slow'" in post("key-a").json()["error"]
    assert c.get("/v2/health/ready").status_code == 200  # probes need no key
    reg = service.registry
    lab = {"pipeline": service.pipeline, "route": "v2_infer"}
    assert reg.get_sample_value("streamproc_http_requests_total",
                                {**lab, "tenant": "slow", "code": "429"}) == 11  # fmt: skip
    assert reg.get_sample_value("streamproc_http_requests_total",
                                {**lab, "tenant": "fast", "code": "200"}) == 10  # fmt: skip


def test_rollout_routes_requests_by_key_and_the_cache_never_crosses_a_switch(
    service_factory, serve_factory
):
    service, cfg = service_factory({"cache": {"enabled": True, "ttl_s": 3600}})
    served = serve_factory(service)
    c = httpx.Client(base_url=f"http://{served.url}", timeout=LIMIT_S)
    x = features(1, seed=7)
    old, new = onnx_scores("1.0.0", x), onnx_scores("1.1.0", x)
    assert not np.array_equal(old, new)

    def infer(key: str | None = None, version: str | None = None) -> tuple[str, np.ndarray]:
        path = "/v2/models/fraud" + (f"/versions/{version}" if version else "") + "/infer"
        headers = {"X-Streamproc-Key": key} if key else {}
        r = c.post(path, json=v2_body(x), headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        return body["model_version"], np.array(body["outputs"][0]["data"], np.float32)

    for _ in range(3):
        v, s = infer()
        assert v == "1.0.0" and s.tolist() == old.ravel().tolist()
    assert (service.cache.hits, service.cache.misses) >= (2, 1)

    # A canary: each key is served by the version the router gives it, as in the stream.
    store = KafkaControlStore(cfg.kafka.bootstrap, cfg.topics.control)
    state = execute(store, Deploy("fraud", "1.1.0", Strategy.CANARY, StrategyParams(percent=50),
                                  at_ms=int(time.time() * 1000)))  # fmt: skip
    wait_for(lambda: service.versions() == ["1.0.0", "1.1.0"])
    keys = [f"acct-{i}" for i in range(40)]
    variant = assign([k.encode() for k in keys], state).variant
    assert 0 < variant.sum() < 40
    for k, on_candidate in zip(keys, variant.tolist(), strict=True):
        v, s = infer(k)
        assert v == ("1.1.0" if on_candidate else "1.0.0")
        assert s.tolist() == (new if on_candidate else old).ravel().tolist()
    v, s = infer(keys[0], version="1.1.0")  # a named version is served by it, any key
    assert v == "1.1.0" and s.tolist() == new.ravel().tolist()

    # Promoted: the same input (cached under 1.0.0) is never answered with 1.0.0's score.
    execute(store, Promote("fraud", at_ms=int(time.time() * 1000)))
    wait_for(lambda: service.base_scorer.primary.version == "1.1.0")
    for k in (None, *keys[:10]):
        v, s = infer(k)
        assert v == "1.1.0" and s.tolist() == new.ravel().tolist()
    reg = service.registry
    hits = reg.get_sample_value("streamproc_prediction_cache_hits_total",
                                {"pipeline": service.pipeline})  # fmt: skip
    assert hits == service.cache.hits and hits > 0


def wait_for(cond, limit_s: float = LIMIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def refused(url: str) -> bool:
    host, port = url.split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


class Gated(Scorer):
    """The real model behind a gate: scoring waits until the test opens it."""

    def __init__(self, inner: SingleScorer) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.batches = 0

    @property
    def primary(self):
        return self.inner.primary

    @property
    def backend_name(self) -> str:
        return self.inner.backend_name

    def score(self, features, keys) -> Scored:
        assert self.gate.wait(LIMIT_S)
        self.batches += 1
        return self.inner.score(features, keys)


def gated_scorer() -> Gated:
    from streamproc.backends.select import load_backend

    backend: Backend = load_backend(SPEC, prefer=["onnxruntime"])
    return Gated(SingleScorer(SPEC, backend))


def test_no_request_is_lost_on_shutdown(service_factory, serve_factory):
    scorer = gated_scorer()
    service, _ = service_factory({"batching": {"max_batch_size": 8, "max_wait_ms": 1}},
                                 scorer=scorer)  # fmt: skip
    served = serve_factory(service)
    n = 40
    x = features(n, seed=8)
    want = onnx_scores("1.0.0", x)

    def one(i: int) -> tuple[int, np.ndarray]:
        with httpx.Client(base_url=f"http://{served.url}", timeout=LIMIT_S) as c:
            r = c.post("/v2/models/fraud/infer", json=v2_body(x[i : i + 1]))
            return r.status_code, np.array(r.json()["outputs"][0]["data"], np.float32)

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        wait_for(lambda: service.batcher.queued_rows == n)  # all accepted, none answered
        stopping = threading.Thread(target=served.stop)
        stopping.start()
        wait_for(lambda: refused(served.url))  # draining: no new connection is accepted
        assert service.batcher.queued_rows == n and scorer.batches == 0
        scorer.gate.set()
        got = [f.result(LIMIT_S) for f in futures]
        stopping.join(LIMIT_S)
    assert [code for code, _ in got] == [200] * n
    np.testing.assert_array_equal(np.stack([s for _, s in got]).reshape(n, 2), want)
    assert not served.thread.is_alive()


def test_a_full_queue_gets_503_with_retry_after(service_factory, serve_factory):
    scorer = gated_scorer()
    service, _ = service_factory({"max_queue_rows": 4, "retry_after_s": 3}, scorer=scorer)
    served = serve_factory(service)
    x = features(5, seed=9)

    def one(i: int) -> int:
        with httpx.Client(base_url=f"http://{served.url}", timeout=LIMIT_S) as c:
            return c.post("/v2/models/fraud/infer", json=v2_body(x[i : i + 1])).status_code

    with ThreadPoolExecutor(4) as pool:
        held = [pool.submit(one, i) for i in range(4)]
        wait_for(lambda: service.batcher.queued_rows == 4)
        r = httpx.post(f"http://{served.url}/v2/models/fraud/infer", json=v2_body(x[4:]),
                       timeout=LIMIT_S)  # fmt: skip
        assert r.status_code == 503 and r.headers["Retry-After"] == "3"
        assert "queue full" in r.json()["error"]
        scorer.gate.set()
        assert [f.result(LIMIT_S) for f in held] == [200] * 4


def test_a_server_on_a_fresh_control_topic_publishes_its_version(pipeline_config_factory):
    """Started before any processor (no control topic yet), it creates the topics and
    publishes the configured version as stable, as `run` does."""
    import uuid

    cfg = pipeline_config_factory(partitions=1)
    control = f"control-fresh-{uuid.uuid4().hex[:8]}"
    cfg = cfg.with_overrides(topics=cfg.topics.model_copy(update={"control": control}))
    service = build_service(cfg, instance="fresh")
    try:
        state = KafkaControlStore(cfg.kafka.bootstrap, control).latest("fraud")
        assert state is not None and state.stable == "1.0.0"
        assert service.versions() == ["1.0.0"]
    finally:
        for close in service.closers:
            close()
