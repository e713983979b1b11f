"""/healthz and /readyz of a real processor on the local stack, in each state a probe meets."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import pytest

from streamproc.pipeline.app import Processor, build_processor

from .proxy import TcpProxy

pytestmark = pytest.mark.kafka


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(port: int, status: int, deadline_s: float = 60) -> dict[str, Any]:
    """Poll /readyz until it answers ``status``; its body then."""
    end = time.monotonic() + deadline_s
    while True:
        code, body = get(port, "/readyz")
        if code == status:
            return body
        assert time.monotonic() < end, f"/readyz stayed {code}: {body}"
        time.sleep(0.2)


def run_in_thread(proc: Processor) -> Callable[[], None]:
    t = threading.Thread(target=proc.run, daemon=True)
    t.start()

    def stop() -> None:
        proc.stop()
        t.join(60)
        assert not t.is_alive(), "processor did not stop"

    return stop


def test_ready_only_when_loaded_assigned_and_registry_reachable(
    schema_registry, pipeline_config_factory
):
    url = urlparse(schema_registry)
    proxy = TcpProxy(url.hostname, url.port)
    stops: list[Callable[[], None]] = []
    try:
        # One partition, two replicas: the second one's share is empty, and it is ready too.
        cfg = pipeline_config_factory(partitions=1, metrics={"port": 0})
        via_proxy = cfg.registry.model_copy(update={
            "url": f"http://127.0.0.1:{proxy.port}{url.path}", "request_timeout_s": 2})  # fmt: skip
        a = build_processor(cfg.with_overrides(registry=via_proxy, instance_id="a"))
        assert a.metrics_port
        port = a.metrics_port
        # Built, not running: the model is loaded, the group has not assigned anything yet.
        assert get(port, "/healthz") == (200, {"alive": True})
        code, body = get(port, "/readyz")
        assert code == 503
        assert body["checks"]["model"] == "ok" and body["checks"]["registry"] == "ok"
        assert body["checks"]["partitions"].startswith("not assigned")

        stops.append(run_in_thread(a))
        body = wait_for(port, 200)
        assert body == {"ready": True, "checks": dict.fromkeys(body["checks"], "ok")}
        assert a.runner.assigned_partitions == [0]

        # The registry goes away: not ready (the check is cached a few seconds), still alive.
        proxy.cut()
        body = wait_for(port, 503, deadline_s=30)
        assert body["checks"]["registry"].startswith("schema registry unreachable")
        assert body["checks"]["partitions"] == "ok"
        assert get(port, "/healthz")[0] == 200
        proxy.restore()
        wait_for(port, 200, deadline_s=30)

        # A replica the group gives no partition waits for one, ready.
        b = build_processor(cfg.with_overrides(instance_id="b"))
        assert b.metrics_port
        stops.append(run_in_thread(b))
        wait_for(b.metrics_port, 200)
        wait_for(port, 200)
        shares = sorted([a.runner.assigned_partitions, b.runner.assigned_partitions])
        assert shares == [[], [0]]
        assert get(b.metrics_port, "/healthz")[0] == 200
        # /metrics is served from the same port.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            assert b"streamproc_process_rss_bytes" in r.read()
    finally:
        for stop in reversed(stops):
            stop()
        proxy.close()
