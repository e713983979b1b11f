"""The registry adapter: against the real registry, and one that never answers."""

from __future__ import annotations

import json
import socket
import time
import uuid

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
