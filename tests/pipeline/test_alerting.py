"""Alert routing: the severity floor and the webhook (a real HTTP server on loopback)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from streamproc.pipeline.alerting import AlertRouter, AlertRules
from streamproc.types import Alert, AlertState, AlertType, Severity


def _alert(severity: Severity, **identity) -> Alert:
    return Alert(AlertType.INPUT_DRIFT, AlertState.FIRING, severity, "amount", "cusum_mean_up",
                 31.2, 31.0, 90, 1000, 1089, "mean shifted up", **identity)  # fmt: skip


def test_webhook_receives_routed_alerts_and_the_floor_drops_quiet_ones():
    got: list[dict] = []
    arrived = threading.Event()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(json.loads(body))
            self.send_response(204)
            self.end_headers()
            arrived.set()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        router = AlertRouter(AlertRules.model_validate(
            {"min_severity": "WARNING", "webhook": f"http://127.0.0.1:{server.server_port}/"}
        ))  # fmt: skip
        assert not router.routes(_alert(Severity.INFO))
        assert router.dropped == 1
        assert router.routes(_alert(Severity.CRITICAL))
        sent = _alert(Severity.CRITICAL, model_name="fraud", model_version="1.0.0",
                      alert_id="a1", time_ms=5)  # fmt: skip
        router.notify(sent)
        assert arrived.wait(10)
        # The webhook receives the alert as its Alert record.
        assert got == [sent.to_record()]
        assert {k: got[0][k] for k in ("alert_id", "severity", "type")} == {
            "alert_id": "a1", "severity": "CRITICAL", "type": "input_drift"}  # fmt: skip
        assert router.webhook_failures == 0
    finally:
        server.shutdown()
