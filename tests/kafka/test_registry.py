"""The registry adapter: against the real registry, and one that never answers."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from streamproc import schemas
from streamproc.config import RegistrySettings
from streamproc.errors import RegistryUnavailableError
from streamproc.kafka.configuration import registry_config
from streamproc.kafka.registry import Registry


def test_a_registry_that_never_answers_is_an_outage_not_a_hang():
    # The kernel completes the TCP handshake from the listen backlog; nothing ever reads
    # the request. Without a request timeout the client would wait forever.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        registry = Registry(registry_config(RegistrySettings(url=url, request_timeout_s=0.2)))
        start = time.monotonic()
        with pytest.raises(RegistryUnavailableError, match="id 1"):
            registry.schema(1)
        assert time.monotonic() - start < 30  # the client's own retries, then the error


def test_latest_id_follows_the_subject_on_the_real_registry(schema_registry):
    registry = Registry(schema_registry)
    subject = f"latest-{uuid.uuid4().hex[:8]}-value"
    assert registry.latest_id(subject) is None  # no such subject yet
    first = registry.register(subject, schemas.schema_text("Transaction"))
    assert registry.latest_id(subject) == first
    evolved = schemas.schema_dict("Transaction")
    evolved["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    second = registry.register(subject, json.dumps(evolved))
    assert second != first
    assert registry.latest_id(subject) == second


class SilentRegistry:
    """A registry on 127.0.0.1 that accepts connections and, while ``silent``, never
    answers (it holds them); otherwise it answers every ``GET /schemas/ids/N`` with
    ``schema``. ``requests`` counts the requests it read or held."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.silent = True
        self.requests = 0
        self._held: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests += 1
                if self.silent:
                    self._held.append(conn)  # never answered, never closed
                    return
                body = json.dumps({"schema": json.dumps(self.schema)}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip

    def close(self) -> None:
        self._listener.close()
        for c in self._held:
            c.close()


@pytest.fixture
def silent_registry() -> Iterator[SilentRegistry]:
    server = SilentRegistry(schemas.schema_dict("Transaction"))
    yield server
    server.close()


def test_a_lookup_from_a_silent_registry_takes_one_timeout_then_none_while_it_stays_silent(
    silent_registry: SilentRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    # The client alone would send 1 + max.retries requests, each waiting the whole timeout,
    # with jittered waits between them (4 s and more here): the project asks once.
    registry = Registry(registry_config(RegistrySettings(url=silent_registry.url,
                                                         request_timeout_s=1.0)))  # fmt: skip
    caplog.set_level(logging.WARNING, logger="streamproc.kafka.registry")
    start = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match="schema id 5") as err:
        registry.schema(5)
    took = time.monotonic() - start
    # One request: one timeout (1 s) and some; the client's own retries would take 1 s per
    # request plus jittered waits, 6 s and more. The margin is for a loaded machine.
    assert 0.9 <= took < 4.0, took
    assert err.value.schema_ids == (5,)
    assert "did not answer for schema id 5" in caplog.text
    # While the registry is failing, a lookup (the same id, another one) does not wait.
    for sid in (5, 6, 5):
        start = time.monotonic()
        with pytest.raises(RegistryUnavailableError):
            registry.schema(sid)
        assert time.monotonic() - start < 0.9  # no request: less than one timeout
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_a_lookup_after_the_registry_answers_again_gets_the_schema(
    silent_registry: SilentRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(registry_config(RegistrySettings(url=silent_registry.url,
                                                         request_timeout_s=0.5)))  # fmt: skip
    caplog.set_level(logging.INFO, logger="streamproc.kafka.registry")
    with pytest.raises(RegistryUnavailableError):
        registry.schema(5)
    silent_registry.silent = False
    # The caller retries after its backoff; the lookup that answers runs in the background.
    deadline = time.monotonic() + 20
    got = None
    while got is None and time.monotonic() < deadline:
        try:
            got = registry.schema(5)
        except RegistryUnavailableError:
            time.sleep(0.05)  # the caller's backoff
    assert got == schemas.schema_dict("Transaction")
    assert "answers again" in caplog.text
