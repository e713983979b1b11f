"""Servers of ``streamproc serve`` in this test process: uvicorn in a thread, on a free port."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.extras import import_extra

uvicorn = import_extra("uvicorn", "serve")
import_extra("fastapi", "serve")

from streamproc.serving.http import build_app  # noqa: E402
from streamproc.serving.service import InferenceService  # noqa: E402
from tests.pipeline.conftest import pipeline_config_factory, read_topic  # noqa: E402, F401

START_LIMIT_S = 60


@dataclass
class Served:
    service: InferenceService
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self, timeout: float = 60) -> None:
        """What SIGTERM does: stop accepting, answer what was accepted, then return."""
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "server did not stop"


@pytest.fixture
def serve_factory() -> Iterator[Callable[[InferenceService], Served]]:
    made: list[Served] = []

    def start(service: InferenceService) -> Served:
        config = uvicorn.Config(build_app(service), host="127.0.0.1", port=0,
                                log_level="warning", access_log=False, lifespan="on")  # fmt: skip
        server = uvicorn.Server(config)
        t = threading.Thread(target=server.run, daemon=True, name="uvicorn")
        t.start()
        deadline = time.monotonic() + START_LIMIT_S
        while not server.started:
            assert t.is_alive(), "server died at start"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        s = Served(service, server, t, f"127.0.0.1:{port}")
        made.append(s)
        return s

    yield start
    for s in made:
        if s.thread.is_alive():
            s.stop()
