"""Alert routing: the severity floor and the webhook (a real HTTP server on loopback)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from streamproc.pipeline.alerting import AlertRouter


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
        router = AlertRouter.from_config(
            {"min_severity": "WARNING", "webhook": f"http://127.0.0.1:{server.server_port}/"}
        )
        assert not router.routes({"severity": "INFO"})
        assert router.dropped == 1
        assert router.routes({"severity": "CRITICAL"})
        router.notify({"alert_id": "a1", "severity": "CRITICAL", "type": "input_drift"})
        assert arrived.wait(10)
        assert got == [{"alert_id": "a1", "severity": "CRITICAL", "type": "input_drift"}]
        assert router.webhook_failures == 0
    finally:
        server.shutdown()
