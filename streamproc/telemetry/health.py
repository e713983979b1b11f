"""The processor's HTTP endpoint: ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (ready).

One small WSGI app on a daemon thread. ``/healthz`` answers 200 while the process serves
HTTP at all: a liveness probe restarts a pod whose process hangs or died, not one that waits
for a broker. ``/readyz`` answers 200 when every readiness check passes and 503 otherwise,
with a JSON body naming each check and why it fails (what ``kubectl describe`` users read).

>>> from prometheus_client import CollectorRegistry
>>> app = health_app(CollectorRegistry(), lambda: {"model": None, "registry": "unreachable"})
>>> status, body = call(app, "/readyz")
>>> status, body["ready"], body["checks"]["registry"]
('503 Service Unavailable', False, 'unreachable')
>>> call(app, "/healthz")[0]
'200 OK'
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

log = logging.getLogger(__name__)

# Check name -> None when it passes, else why it does not (one line, for people).
Readiness = Callable[[], Mapping[str, str | None]]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def health_app(registry: CollectorRegistry, readiness: Readiness | None = None) -> WsgiApp:
    """``/metrics`` from ``registry``, ``/healthz``, and ``/readyz`` from ``readiness``
    (none: ready whenever alive)."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _json(start_response, "200 OK", {"alive": True})
        if path == "/readyz":
            try:
                checks = dict(readiness()) if readiness is not None else {}
            except Exception as exc:  # a check that raises is a failing check, not a 500
                log.warning("readiness check failed: %s", exc)
                checks = {"readiness": f"{type(exc).__name__}: {exc}"}
            ready = all(v is None for v in checks.values())
            status = "200 OK" if ready else "503 Service Unavailable"
            body = {"ready": ready, "checks": {k: v or "ok" for k, v in checks.items()}}
            return _json(start_response, status, body)
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    return app


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])  # fmt: skip
    return [data]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a probe in flight never holds the process open


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds
        pass


class HealthServer:
    """:func:`health_app` served on ``host:port`` (0: a free port) from a daemon thread."""

    def __init__(self, app: WsgiApp, port: int, host: str = "127.0.0.1") -> None:
        self._server = make_server(host, port, app, _Server, _QuietHandler)
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"metrics-{self.port}")  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class ProcessorReadiness:
    """A processor's readiness (a :data:`Readiness`): its model loaded (:meth:`model_loaded`),
    its consumer given its share of the input's partitions by the group, possibly none
    (``partitions``: None until then), and the schema registry answering ``ping`` (any
    exception: unreachable).

    A replica that got no partition is ready: it waits for one (more replicas than
    partitions), and a rolling update must not stall on it. The registry is asked at most once
    per ``cache_s`` however many probes and scrapes come, by one caller at a time.

    >>> r = ProcessorReadiness(ping=lambda: None)
    >>> r()["model"], r()["partitions"]
    ('not loaded yet', 'not assigned yet (joining the consumer group)')
    >>> r.model_loaded("fraud", "1.0.0"); r.partitions = lambda: []
    >>> r()
    {'model': None, 'partitions': None, 'registry': None}
    """

    def __init__(self, ping: Callable[[], object], cache_s: float = 5.0) -> None:
        self._ping = ping
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._pinged: tuple[float, str | None] | None = None  # (monotonic time, outcome)
        self.model: str | None = None
        self.partitions: Callable[[], list[int] | None] | None = None

    def model_loaded(self, name: str, version: str) -> None:
        self.model = f"{name} {version}"

    def registry(self) -> str | None:
        with self._lock:
            now = time.monotonic()
            if self._pinged is None or now - self._pinged[0] >= self._cache_s:
                try:
                    self._ping()
                    outcome = None
                except Exception as exc:
                    outcome = f"schema registry unreachable: {exc}"
                self._pinged = (time.monotonic(), outcome)
            return self._pinged[1]

    def __call__(self) -> dict[str, str | None]:
        parts = self.partitions() if self.partitions is not None else None
        joining = "not assigned yet (joining the consumer group)"
        return {
            "model": None if self.model else "not loaded yet",
            "partitions": None if parts is not None else joining,
            "registry": self.registry(),
        }


def call(app: WsgiApp, path: str) -> tuple[str, Any]:
    """Call ``app`` for ``GET path`` in-process: (status, decoded JSON body). For doctests."""
    seen: list[str] = []
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": ""}
    body = b"".join(app(environ, lambda status, headers: seen.append(status)))
    return seen[0], json.loads(body)
