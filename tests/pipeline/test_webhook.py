"""The alerts webhook through the pipeline, against a receiver on loopback that fails some
requests: the stream never waits on it, each failure is counted, every alert is tried."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from streamproc.loadgen import produce_synthetic

pytestmark = pytest.mark.kafka
TIMEOUT_S = 0.5  # the webhook client's timeout; the slow answer takes 8x that


class Receiver:
    """Answers 503 to the first POST, too late to the second, 204 to the rest."""

    def __init__(self) -> None:
        self.tried: list[dict] = []  # every alert posted, answered or not
        self.accepted: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self):
                alert = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.tried.append(alert)
                    nth = len(receiver.tried)
                if nth == 1:
                    self.send_response(503)
                elif nth == 2:
                    time.sleep(TIMEOUT_S * 8)  # the slow receiver under test
                    self.send_response(204)
                else:
                    with receiver.lock:
                        receiver.accepted.append(alert)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _wait(condition, what: str, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # polling a condition, with a deadline


def test_webhook_failures_are_counted_and_the_stream_goes_on(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    receiver = Receiver()
    try:
        cfg = pipeline_config_factory(
            partitions=1, alerts={"webhook": receiver.url, "webhook_timeout_s": TIMEOUT_S}
        )
        producer = event_producer_factory(cfg.topics.input)
        calm = produce_synthetic(producer, 3000, seed=61)
        shifted = produce_synthetic(producer, 3000, seed=61, offset=3000, shift=1.5)
        running = processor_factory(cfg)
        preds = read_topic(cfg.topics.predictions, calm.good + shifted.good)
        alerts = read_topic(cfg.topics.alerts, 1000, idle_s=5)
        router = running.processor.handler.router
        ids = sorted(a.value["alert_id"] for a in alerts)
        assert len(ids) >= 3, alerts  # a 503, a timeout, and at least one delivered
        # Every alert on the topic was posted once; failures do not hold the stream up.
        _wait(lambda: len(receiver.tried) == len(ids), "not every alert was posted")
        _wait(lambda: router.webhook_failures == 2, f"failures: {router.webhook_failures}")
        running.stop()
    finally:
        receiver.server.shutdown()
    assert len(preds) == calm.good + shifted.good
    assert sorted(a["alert_id"] for a in receiver.tried) == ids
    assert router.webhook_failures == 2  # the 503 and the timeout, nothing else
    assert [a["alert_id"] for a in receiver.accepted] == [a["alert_id"] for a in receiver.tried[2:]]
    posted = {a["alert_id"]: a for a in receiver.tried}
    for a in alerts:  # the JSON body is the alert record
        body = posted[a.value["alert_id"]]
        assert (body["type"], body["state"], body["feature"]) == (
            a.value["type"], a.value["state"], a.value["feature"],
        )  # fmt: skip
