"""The HTTP face of :class:`~streamproc.serving.service.InferenceService` (FastAPI on uvicorn).

Routes (the Open Inference Protocol, KServe v2 REST, as Triton's and KServe's clients call
it; plus one route for records):

- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata);
- ``GET /v2/models/{name}[/versions/{v}]`` (model metadata), ``.../ready``;
- ``POST /v2/models/{name}[/versions/{v}]/infer``: one FP32 (or FP64) input named as the
  model's input tensor, shape ``[rows, columns]``, in JSON ``data`` or in the binary tensor
  extension (``Inference-Header-Content-Length``); the output tensor answers in JSON, or in
  binary when asked (``binary_data`` on the output, or ``binary_data_output``). The rollout
  key of a request: ``parameters.key`` or the ``X-Streamproc-Key`` header;
- ``POST /v1/models/{name}:predict`` (KServe v1's form): ``{"instances": [record, ...]}``,
  each record a JSON object of the input schema, keyed by the model's ``key_field`` (or the
  ``X-Streamproc-Key`` header);
- ``GET /metrics``: Prometheus.

Errors are ``{"error": "..."}`` (what the v2 clients read); a 400 for invalid rows adds
``"rejected": [{"index", "reason", "reason_code", "detail"}]`` with the pipeline's reason
codes. 401 without a known key, 429 when the tenant's rate is spent and 503 when the queue
is full or the server is stopping, both with ``Retry-After``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

import streamproc

from .auth import Tenant, Unauthorized
from .batcher import QueueFull, ShuttingDown
from .batcher import Request as Rows
from .service import InferenceService

KEY_HEADER = "x-streamproc-key"
BINARY_HEADER = "inference-header-content-length"
_DTYPES = {"FP32": np.float32, "FP64": np.float64}


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.extra = extra


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")).encode(), status, headers,
                    media_type="application/json")  # fmt: skip


class _CacheCollector(Collector):
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def collect(self):  # type: ignore[no-untyped-def]
        cache, p = self.service.cache, [self.service.pipeline]
        if cache is None:
            return
        for name, doc, value in (("hits", "Prediction cache hits", cache.hits),
                                 ("misses", "Prediction cache misses", cache.misses)):  # fmt: skip
            c = CounterMetricFamily(f"streamproc_prediction_cache_{name}", doc, labels=["pipeline"])
            c.add_metric(p, value)
            yield c
        sizes = (("entries", "Entries in the prediction cache", len(cache)),
                 ("bytes", "Bytes the prediction cache holds", cache.bytes))  # fmt: skip
        for name, doc, value in sizes:
            g = GaugeMetricFamily(f"streamproc_prediction_cache_{name}", doc, labels=["pipeline"])
            g.add_metric(p, value)
            yield g


class HttpMetrics:
    def __init__(self, service: InferenceService, registry: CollectorRegistry) -> None:
        p = ["pipeline"]
        self.pipeline = service.pipeline
        self.requests = Counter("streamproc_http_requests", "HTTP inference requests answered",
                                [*p, "route", "tenant", "code"], registry=registry)  # fmt: skip
        self.duration = Histogram("streamproc_http_request_seconds", "Request to answer",
                                  [*p, "route"], registry=registry,
                                  buckets=(5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
                                           0.25, 0.5, 1, 2.5))  # fmt: skip
        self.batch_rows = Histogram("streamproc_http_batch_rows", "Rows per scored HTTP batch", p,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048,
                                             4096), registry=registry)  # fmt: skip
        queued = Gauge("streamproc_http_queued_rows", "Rows accepted and not yet answered", p,
                       registry=registry)  # fmt: skip
        queued.labels(self.pipeline).set_function(lambda: service.batcher.queued_rows)
        registry.register(_CacheCollector(service))
        self._children: dict[tuple[str, str, int], Any] = {}

    def answered(self, route: str, tenant: str, code: int, seconds: float) -> None:
        key = (route, tenant, code)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(self.pipeline, route, tenant, code)
        child.inc()
        self.duration.labels(self.pipeline, route).observe(seconds)


def build_app(service: InferenceService) -> FastAPI:
    """The ASGI app; its lifespan starts the batcher and, at shutdown, answers every
    accepted request before stopping it."""

    registry = service.registry if service.registry is not None else CollectorRegistry()
    metrics = HttpMetrics(service, registry)
    batcher = service.batcher
    score_inner = batcher.score

    def scored_batch(batch):  # type: ignore[no-untyped-def]
        metrics.batch_rows.labels(service.pipeline).observe(len(batch))
        return score_inner(batch)

    batcher.score = scored_batch

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(title="streamproc", version=streamproc.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)  # fmt: skip

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.state.service = service
    app.state.metrics = metrics

    def model_or_404(name: str, version: str | None = None) -> None:
        if name != service.name:
            raise HttpError(404, f"unknown model {name!r}; this server serves {service.name!r}")
        if version is not None and version not in service.versions():
            raise HttpError(404, f"{name} {version} is not loaded; loaded: {service.versions()}")

    def tenant_of(request: Request) -> Tenant:
        try:
            tenant = service.auth.authenticate(request.headers.get("authorization"),
                                               request.headers.get("x-api-key"))  # fmt: skip
        except Unauthorized as exc:
            raise HttpError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None
        wait = tenant.admit()
        if wait > 0:
            retry = {"Retry-After": str(max(1, math.ceil(wait)))}
            raise HttpError(429, f"rate limit of tenant {tenant.name!r} exceeded", retry,
                            tenant=tenant.name)  # fmt: skip
        return tenant

    async def read_body(request: Request) -> bytes:
        """The body, refused (413) past ``max_body_bytes`` before it is all read."""
        limit = service.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"the body is {declared} bytes; at most {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"the body is over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def run(rows: Rows) -> Rows:
        try:
            return await batcher.submit(rows)
        except QueueFull as exc:
            raise HttpError(503, f"queue full: {exc}",
                            {"Retry-After": str(service.retry_after_s)}) from None  # fmt: skip
        except ShuttingDown as exc:
            raise HttpError(503, str(exc), {"Retry-After": str(service.retry_after_s)}) from None
        except Exception as exc:
            raise HttpError(500, f"inference failed: {type(exc).__name__}: {exc}") from None

    async def answer(route: str, request: Request, handler: Any, *args: Any) -> Response:
        t0 = time.perf_counter()
        tenant = "-"
        try:
            tenant_obj = tenant_of(request)
            tenant = tenant_obj.name
            response: Response = await handler(request, *args)
        except HttpError as exc:
            tenant = exc.extra.pop("tenant", tenant)
            response = _json({"error": str(exc), **exc.extra}, exc.status, exc.headers)
        metrics.answered(route, tenant, response.status_code, time.perf_counter() - t0)
        return response

    # -- health and metadata (no key needed: probes and discovery) -----------------------

    @app.get("/v2/health/live")
    async def live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return _json({"ready": service.ready}, 200 if service.ready else 503)

    @app.get("/v2")
    async def server_metadata() -> Response:
        return _json({"name": "streamproc", "version": streamproc.__version__,
                      "extensions": ["binary_tensor_data"]})  # fmt: skip

    def metadata(name: str, version: str | None) -> Response:
        try:
            model_or_404(name, version)
        except HttpError as exc:
            return _json({"error": str(exc)}, exc.status)
        spec = service.spec
        return _json({
            "name": spec.name,
            "versions": [version] if version else service.versions(),
            "platform": service.base_scorer.backend_name,
            "inputs": [{"name": spec.input_tensor, "datatype": "FP32",
                        "shape": [-1, spec.n_features]}],
            "outputs": [{"name": spec.outputs.tensor, "datatype": "FP32",
                         "shape": [-1, service.n_outputs]}],
            "parameters": {"columns": spec.columns, "labels": list(spec.outputs.labels),
                           "score_index": spec.outputs.score_index,
                           "threshold": spec.outputs.threshold,
                           "stable": service.base_scorer.primary.version},
        })  # fmt: skip

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> Response:
        return metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}")
    async def version_metadata(name: str, version: str) -> Response:
        return metadata(name, version)

    def model_ready(name: str, version: str | None) -> Response:
        try:
            model_or_404(name, version)
        except HttpError as exc:
            return _json({"error": str(exc)}, exc.status)
        return _json({"name": name, "ready": service.ready}, 200 if service.ready else 503)

    @app.get("/v2/models/{name}/ready")
    async def ready_model(name: str) -> Response:
        return model_ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def ready_version(name: str, version: str) -> Response:
        return model_ready(name, version)

    # -- inference ------------------------------------------------------------------------

    async def infer_v2(request: Request, name: str, version: str | None) -> Response:
        model_or_404(name, version)
        body = await read_body(request)
        head, binary = _split_binary(body, request.headers.get(BINARY_HEADER))
        try:
            req = json.loads(head)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(req, dict):
            raise HttpError(400, "the body must be a JSON object")
        x = _tensor(req, binary, service)
        if len(x) > service.max_request_rows:
            raise HttpError(400, f"{len(x)} rows; at most {service.max_request_rows} a request")
        _check(service, x)
        params = _params(req)
        key_text = request.headers.get(KEY_HEADER) or params.get("key")
        key = str(key_text).encode() if key_text is not None else None
        rows = await run(Rows(x, [key] * len(x), version))
        return _v2_response(req, params, rows, service)

    # The inference routes are Starlette's own (FastAPI's router holds them as they are):
    # they read the body themselves, so FastAPI's per-request dependency solving and
    # validation would be work for nothing on the hot path.
    async def infer(request: Request) -> Response:
        p = request.path_params
        return await answer("v2_infer", request, infer_v2, p["name"], p.get("version"))

    app.router.add_route("/v2/models/{name}/infer", infer, methods=["POST"])
    app.router.add_route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"])

    async def predict_records(request: Request, name: str) -> Response:
        model_or_404(name)
        if service.records is None:
            raise HttpError(404, "this server has no reader schema for records")
        try:
            req = json.loads(await read_body(request))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not JSON: {exc}") from None
        instances = req.get("instances") if isinstance(req, dict) else None
        if not isinstance(instances, list) or not instances:
            raise HttpError(400, 'the body must be {"instances": [record, ...]}')
        if len(instances) > service.max_request_rows:
            raise HttpError(400, f"{len(instances)} records; at most "
                            f"{service.max_request_rows} a request")  # fmt: skip
        x, bad = service.records.read(instances)
        if bad:
            service.rejected(bad)
            raise HttpError(400, f"{len(bad)} of {len(instances)} records are invalid",
                            rejected=[r.as_dict() for r in bad])  # fmt: skip
        spec = service.spec
        header = request.headers.get(KEY_HEADER)
        keys: list[bytes | None] = []
        for rec in instances:
            k = header if header is not None else rec.get(spec.key_field)
            keys.append(None if k is None else str(k).encode())
        rows = await run(Rows(x, keys))
        assert rows.scores is not None
        o = spec.outputs
        col = min(o.score_index, rows.scores.shape[1] - 1)
        preds = []
        for rec, s, v in zip(instances, rows.scores.tolist(), rows.versions, strict=True):
            score = s[col]
            preds.append({"event_id": rec.get(spec.id_field), "score": score,
                          "label": o.labels[1] if score >= o.threshold else o.labels[0],
                          "scores": s, "model_version": v})  # fmt: skip
        return _json({"model_name": spec.name, "predictions": preds})

    async def predict(request: Request) -> Response:
        return await answer("v1_predict", request, predict_records, request.path_params["name"])

    app.router.add_route("/v1/models/{name}:predict", predict, methods=["POST"])

    return app


def _check(service: InferenceService, x: npt.NDArray[np.float32]) -> None:
    from .service import check_matrix

    bad = check_matrix(service.rules, x)
    if bad:
        service.rejected(bad)
        raise HttpError(400, f"{len(bad)} of {len(x)} rows break the model's input rules",
                        rejected=[r.as_dict() for r in bad])  # fmt: skip


def _params(d: dict[str, Any]) -> dict[str, Any]:
    p = d.get("parameters")
    return p if isinstance(p, dict) else {}


def _split_binary(body: bytes, header_len: str | None) -> tuple[bytes, bytes]:
    if header_len is None:
        return body, b""
    try:
        n = int(header_len)
    except ValueError:
        raise HttpError(400, f"{BINARY_HEADER} is not a number: {header_len!r}") from None
    if not 0 <= n <= len(body):
        raise HttpError(400, f"{BINARY_HEADER} {n} is outside the body ({len(body)} bytes)")
    return body[:n], body[n:]


def _tensor(
    req: dict[str, Any], binary: bytes, service: InferenceService
) -> npt.NDArray[np.float32]:
    """The request's one input as a (rows, columns) float32 matrix."""
    spec = service.spec
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise HttpError(400, f"expected one input, {spec.input_tensor!r}")
    t = inputs[0]
    if t.get("name") != spec.input_tensor:
        raise HttpError(400, f"unknown input {t.get('name')!r}; the model takes "
                        f"{spec.input_tensor!r}")  # fmt: skip
    dtype = _DTYPES.get(str(t.get("datatype")))
    if dtype is None:
        raise HttpError(400, f"datatype {t.get('datatype')!r}: expected FP32 (or FP64)")
    shape = t.get("shape")
    f = service.n_features
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or shape[-1] != f):  # fmt: skip
        raise HttpError(400, f"shape {shape!r}: expected [rows, {f}]")
    rows = shape[0] if len(shape) == 2 else 1
    size = _params(t).get("binary_data_size")
    try:
        if size is not None:
            if not isinstance(size, int) or size != len(binary):
                raise HttpError(400, f"binary_data_size {size!r}: the body holds {len(binary)} "
                                "bytes after the JSON header")  # fmt: skip
            arr = np.frombuffer(binary, dtype=dtype)
        else:
            data = t.get("data")
            if data is None:
                raise HttpError(400, "the input has no data")
            arr = np.asarray(data, dtype=dtype)
        if arr.size != rows * f:
            raise HttpError(400, f"{arr.size} values for shape {shape}")
        return np.ascontiguousarray(arr.reshape(rows, f), dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise HttpError(
            400, f"the input's data are not {t.get('datatype')} numbers: {exc}"
        ) from None


def _v2_response(req: dict[str, Any], params: dict[str, Any], rows: Rows,
                 service: InferenceService) -> Response:  # fmt: skip
    spec = service.spec
    assert rows.scores is not None or len(rows) == 0
    scores = (
        rows.scores if rows.scores is not None else np.zeros((0, service.n_outputs), np.float32)
    )
    name = spec.outputs.tensor
    binary = bool(params.get("binary_data_output"))
    wanted = req.get("outputs")
    if isinstance(wanted, list) and wanted:
        names = [o.get("name") for o in wanted if isinstance(o, dict)]
        if names != [name]:
            raise HttpError(400, f"unknown outputs {names}; the model gives {name!r}")
        p = wanted[0].get("parameters")
        binary = bool(p.get("binary_data")) if isinstance(p, dict) else False
    versions = sorted(set(rows.versions))
    out: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(scores.shape)}
    body: dict[str, Any] = {"model_name": spec.name,
                            "model_version": versions[0] if len(versions) == 1 else ""}  # fmt: skip
    if "id" in req:
        body["id"] = req["id"]
    if len(versions) > 1:
        body["parameters"] = {"model_versions": rows.versions}
    if binary:
        raw = np.ascontiguousarray(scores, dtype="<f4").tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        body["outputs"] = [out]
        head = json.dumps(body, separators=(",", ":")).encode()
        return Response(head + raw, 200, {"Inference-Header-Content-Length": str(len(head))},
                        media_type="application/octet-stream")  # fmt: skip
    out["data"] = scores.ravel().tolist()
    body["outputs"] = [out]
    return _json(body)


def run_server(service: InferenceService, host: str, port: int, *,
               log_level: str = "info", on_bound: Any = None) -> None:  # fmt: skip
    """Serve until SIGTERM / SIGINT; then answer every accepted request and return.
    ``on_bound(host, port)`` is called once the socket is bound (port 0: a free one)."""
    import signal
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # from here a client's connection waits for the server, never refused
    if on_bound is not None:
        on_bound(host, sock.getsockname()[1])
    config = uvicorn.Config(build_app(service), log_level=log_level.lower(), access_log=False,
                            lifespan="on", timeout_graceful_shutdown=None)  # fmt: skip
    # uvicorn re-raises the signal that stopped it once it has shut down, which would end
    # the process by that signal; with these handlers a stop by SIGTERM exits normally.
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run(sockets=[sock])
