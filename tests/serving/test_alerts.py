"""``streamproc serve``'s alerts: to its alert sink as stamped alerts (a failing sink never
fails a request; a rollback decided between requests goes out without one), and on the real
stack to the pipeline's alerts topic as the processor's ``Alert`` records."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from streamproc import synth
from streamproc.backends.select import load_backend
from streamproc.batching import WindowPolicy
from streamproc.kafka.registry import Registry
from streamproc.models.spec import load_model_spec
from streamproc.pipeline.alerting import AlertRouter, AlertRules
from streamproc.pipeline.app import register_output_schemas
from streamproc.pipeline.handler import Monitor
from streamproc.pipeline.scoring import Scored, Scorer, SingleScorer
from streamproc.serving.service import InferenceService, build_service
from streamproc.telemetry.prometheus import PrometheusSensor
from streamproc.types import Alert, AlertState, AlertType, DecodedBatch, Severity

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "deploy" / "models" / "fraud"
SPEC = load_model_spec(MODELS / "1.0.0")
LIMIT_S = 60  # bounds a wait on a condition (a loaded 2-core machine), never a sleep
URL = "/v2/models/fraud/infer"


def wait_for(cond, limit_s: float = LIMIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def features(n: int, seed: int = 0, shift: float = 0.0, offset: int = 0) -> np.ndarray:
    cols = synth.generate_columns(n, seed=seed, shift=shift, offset=offset)
    return synth.feature_matrix(cols, SPEC)


def v2_body(x: np.ndarray) -> dict:
    inp = {"name": "features", "datatype": "FP32", "shape": list(x.shape),
           "data": x.ravel().tolist()}  # fmt: skip
    return {"inputs": [inp]}


def drift_alert(feature: str = "amount", first: int = 0, last: int = 0) -> Alert:
    return Alert(AlertType.INPUT_DRIFT, AlertState.FIRING, Severity.WARNING, feature,
                 "cusum_mean_up", 31.2, 31.0, 90, first, last, "mean shifted up")  # fmt: skip


def rollback_alert() -> Alert:
    return Alert(AlertType.ROLLBACK, AlertState.FIRING, Severity.CRITICAL, None, "error_rate",
                 0.2, 0.05, 500, None, None, "fraud 1.1.0 rolled back to 1.0.0")  # fmt: skip


class EveryBatchAlerts(Monitor):
    """A drift monitor that raises one input-drift alert per batch."""

    def observe(
        self,
        decoded: DecodedBatch,
        ok_rows: np.ndarray,
        scores: np.ndarray,
        offsets: np.ndarray,
        rejects: dict[str, int],
        versions: Sequence[str] | None = None,
    ) -> list[Alert]:
        return [drift_alert(first=int(offsets[0]), last=int(offsets[-1]))]


class Guarded(SingleScorer):
    """The model, plus alerts a test hands in as a rollout guard decides them (in its own
    thread, at any time): ``drain_alerts`` takes them."""

    def __init__(self) -> None:
        super().__init__(SPEC, load_backend(SPEC, prefer=["onnxruntime"]))
        self._alerts: list[Alert] = []
        self._lock = threading.Lock()
        self.batches = 0

    def decide(self, alert: Alert) -> None:
        with self._lock:
            self._alerts.append(alert)

    def score(self, features: np.ndarray, keys: Sequence[bytes | None]) -> Scored:
        self.batches += 1
        return super().score(features, keys)

    def drain_alerts(self) -> list[Alert]:
        with self._lock:
            out, self._alerts = self._alerts, []
        return out


def make_service(sink, *, monitor: Monitor | None = None, scorer: Scorer | None = None,
                 **kwargs) -> InferenceService:  # fmt: skip
    prom = PrometheusSensor(pipeline="p")
    return InferenceService(
        spec=SPEC, scorer=scorer or SingleScorer(SPEC, load_backend(SPEC, prefer=["onnxruntime"])),
        policy=WindowPolicy(256, 5), max_queue_rows=4096, sensor=prom, monitor=monitor,
        router=AlertRouter(AlertRules()), pipeline="p", registry=prom.registry,
        alert_sink=sink, **kwargs,
    )  # fmt: skip


def onnx_scores(version: str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(MODELS / version / "model.onnx"),
                                providers=["CPUExecutionProvider"])  # fmt: skip
    return sess.run(None, {"features": x})[0]


def test_a_failing_alert_sink_never_fails_the_request(serve_factory):
    calls: list[Alert] = []

    def broken(alert: Alert) -> None:
        calls.append(alert)
        raise RuntimeError("broker unreachable")

    service = make_service(broken, monitor=EveryBatchAlerts())
    served = serve_factory(service)
    x = features(8, seed=3)
    with httpx.Client(base_url=f"http://{served.url}", timeout=LIMIT_S) as c:
        for i in range(2):
            r = c.post(URL, json=v2_body(x[i * 4 : i * 4 + 4]))
            assert r.status_code == 200, r.text
            got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(4, 2)
            np.testing.assert_array_equal(got, onnx_scores("1.0.0", x[i * 4 : i * 4 + 4]))
    # Each batch's alert reached the sink, failed there, was logged and counted; it still
    # went to the router and the alert counters as before.
    assert len(calls) == 2 and service.alerts_undelivered == 2
    reg = service.registry
    lost = {"pipeline": "p", "type": "input_drift"}
    assert reg.get_sample_value("streamproc_alerts_undelivered_total", lost) == 2
    raised = {"pipeline": "p", "type": "input_drift", "severity": "WARNING", "state": "firing"}
    assert reg.get_sample_value("streamproc_alerts_total", raised) == 2


def test_the_sink_gets_the_stamped_alert(serve_factory):
    got: list[Alert] = []
    service = make_service(got.append, monitor=EveryBatchAlerts())
    served = serve_factory(service)
    before_ms = int(time.time() * 1000)
    r = httpx.post(f"http://{served.url}{URL}", json=v2_body(features(3, seed=4)),
                   timeout=LIMIT_S)  # fmt: skip
    assert r.status_code == 200
    assert len(got) == 1
    a = got[0]
    assert (a.type, a.state, a.feature) == (AlertType.INPUT_DRIFT, AlertState.FIRING, "amount")
    assert (a.model_name, a.model_version) == ("fraud", "1.0.0")
    assert a.alert_id and a.time_ms is not None and a.time_ms >= before_ms
    assert (a.first_offset, a.last_offset) == (0, 2)  # the service's row sequence
    assert a.to_record()["model_name"] == "fraud"  # complete: an Alert record as it is


def test_a_rollback_decided_between_requests_goes_out_without_one(serve_factory):
    sent = threading.Event()
    got: list[Alert] = []

    def sink(alert: Alert) -> None:
        got.append(alert)
        sent.set()

    scorer = Guarded()
    service = make_service(sink, scorer=scorer, drain_every_s=0.05)
    serve_factory(service)
    scorer.decide(rollback_alert())  # the guard's thread, while no request comes
    assert sent.wait(LIMIT_S), "the rollback alert was not sent"
    assert scorer.batches == 0 and service.batcher.batches == 0
    assert [(a.type, a.model_name, a.model_version) for a in got] == [
        (AlertType.ROLLBACK, "fraud", "1.0.0")
    ]


def test_an_alert_decided_as_the_server_stops_still_goes_out(serve_factory):
    got: list[Alert] = []
    scorer = Guarded()
    service = make_service(got.append, scorer=scorer, drain_every_s=LIMIT_S)  # no idle drain
    served = serve_factory(service)
    scorer.decide(rollback_alert())
    served.stop()
    assert [a.type for a in got] == [AlertType.ROLLBACK]


# -- the real stack -------------------------------------------------------------------------


@pytest.fixture
def kafka_service(pipeline_config_factory):
    def make(**kwargs):
        s = {"batching": {"max_batch_size": 256, "max_wait_ms": 10}}
        cfg = pipeline_config_factory(partitions=1, serving=s)
        return build_service(cfg, instance="test-serve-alerts", **kwargs), cfg

    return make


def alert_schema_id(schema_registry: str, cfg) -> int:
    """The id the stream processor writes its ``Alert`` records with."""
    return register_output_schemas(Registry(schema_registry), cfg).alert


def raw_alerts(consumer_factory, topic: str, n: int) -> list:
    """The first ``n`` messages of ``topic``, as they are (waits up to LIMIT_S for them)."""
    c = consumer_factory()
    c.subscribe([topic])
    out: list = []
    deadline = time.monotonic() + LIMIT_S
    while len(out) < n and time.monotonic() < deadline:
        out += [m for m in c.consume(n - len(out), timeout=1.0) if m.error() is None]
    return out


@pytest.mark.kafka
def test_drift_on_http_rows_reaches_the_alerts_topic_as_the_streams_alert_records(
    kafka_service, serve_factory, read_topic, consumer_factory, schema_registry,
):  # fmt: skip
    service, cfg = kafka_service()
    served = serve_factory(service)
    calm = features(3000, seed=31)
    shifted = features(3000, seed=31, shift=1.5, offset=3000)
    with httpx.Client(base_url=f"http://{served.url}", timeout=LIMIT_S) as c:
        for x in (calm, shifted):
            for i in range(0, len(x), 500):
                r = c.post(URL, json=v2_body(x[i : i + 500]))
                assert r.status_code == 200, r.text
    served.stop()  # the producer is flushed and closed with the service
    reg = service.registry
    n = int(sum(s.value for m in reg.collect() if m.name == "streamproc_alerts"
                for s in m.samples if s.name == "streamproc_alerts_total"))  # fmt: skip
    assert n >= 1, "the shifted rows raised no alert"
    assert service.alerts_undelivered == 0

    records = read_topic(cfg.topics.alerts, n, idle_s=LIMIT_S)
    assert len(records) == n
    firing = [r for r in records if r.value["type"] == "input_drift"]
    assert {"amount", "distance_from_home_km"} & {r.value["feature"] for r in firing}
    for r in records:
        a = r.value
        assert (a["model_name"], a["model_version"], a["state"]) == ("fraud", "1.0.0", "FIRING")
        assert a["last_offset"] >= 3000  # raised by the shifted rows, not before
        assert r.key == f"fraud/{a['type']}/{a['feature'] or ''}".encode()  # the stream's key
    # The same Avro form as the processor's: its schema id on the alerts topic's subject.
    sid = alert_schema_id(schema_registry, cfg)
    raw = raw_alerts(consumer_factory, cfg.topics.alerts, n)
    assert [m.value()[:5] for m in raw] == [b"\x00" + sid.to_bytes(4, "big")] * n


@pytest.mark.kafka
def test_a_rollback_between_requests_reaches_the_alerts_topic(kafka_service, serve_factory,
                                                              read_topic):  # fmt: skip
    scorer = Guarded()
    service, cfg = kafka_service(scorer=scorer)
    serve_factory(service)
    scorer.decide(rollback_alert())
    records = read_topic(cfg.topics.alerts, 1, idle_s=LIMIT_S)  # no request, no stop
    assert [(r.value["type"], r.value["severity"], r.value["model_name"]) for r in records] == [
        ("rollback", "CRITICAL", "fraud")
    ]
    assert records[0].key == b"fraud/rollback/"
    assert service.batcher.batches == 0
