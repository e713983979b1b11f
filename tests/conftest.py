"""Session-scoped real services and factories for topics, producers and consumers.

The broker and registry are started once per pytest session: from
``STREAMPROC_KAFKA_BOOTSTRAP`` / ``STREAMPROC_SCHEMA_REGISTRY_URL`` when set; in Docker
through testcontainers with ``STREAMPROC_TEST_DOCKER=1``; otherwise by
:class:`streamproc.local.LocalStack` in a temporary directory (jars cached across sessions).
"""

from __future__ import annotations

import gc
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from hypothesis import settings

from streamproc.kafka.admin import Admin
from streamproc.local import LocalStack, StackInfo, from_environment
from tests.extras import absent

# Property tests draw the same examples on every run, so CI is reproducible. A random
# search (HYPOTHESIS_PROFILE=explore) is for hunting, not for gating a merge.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=1_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    # An optional extra a test needs: a skip with the install hint, a failure in CI.
    for mark in item.iter_markers("requires_extra"):
        absent(*mark.args)


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    external = from_environment()
    if external is not None:
        yield external
        return
    if os.environ.get("STREAMPROC_TEST_DOCKER") == "1":
        from streamproc.local.containers import docker_available, docker_stack

        if not docker_available():
            raise RuntimeError("STREAMPROC_TEST_DOCKER=1 but no Docker engine answers")
        with docker_stack() as info:
            yield info
        return
    stack = LocalStack(home=Path(tmp_path_factory.mktemp("stack")))
    # A `timeout` or CI cancel sends SIGTERM: make it unwind like Ctrl-C, so this fixture's
    # teardown still stops the broker and the registry (nothing is left running).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    info = stack.up()
    try:
        yield info
    finally:
        gc.collect()  # destroy leftover clients first, so they don't log a vanished broker
        stack.down()


@pytest.fixture(scope="session")
def kafka(local_stack: StackInfo) -> str:
    """Bootstrap address of a real Kafka broker."""
    return local_stack.bootstrap


@pytest.fixture(scope="session")
def schema_registry(local_stack: StackInfo) -> str:
    """URL of a real Confluent-compatible schema registry."""
    return local_stack.schema_registry


@pytest.fixture(scope="session")
def admin(kafka: str) -> Admin:
    return Admin(kafka)


@pytest.fixture
def topic_factory(admin: Admin) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics; deleted after the test."""
    made: list[str] = []

    def make(prefix: str = "t", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin.ensure_topics([name], partitions=partitions, config=config)
        made.append(name)
        return name

    yield make
    admin.delete_topics(made)


@pytest.fixture
def producer_factory(kafka: str) -> Iterator[Callable[..., Producer]]:
    made: list[Producer] = []

    def make(**conf: Any) -> Producer:
        p = Producer({"bootstrap.servers": kafka, "linger.ms": 1, **conf})
        made.append(p)
        return p

    yield make
    for p in made:
        p.flush(10)
        p.close()  # else it may outlive the broker, reconnecting (and logging) until freed


@pytest.fixture
def consumer_factory(kafka: str) -> Iterator[Callable[..., Consumer]]:
    made: list[Consumer] = []

    def make(group: str | None = None, **conf: Any) -> Consumer:
        c = Consumer(
            {
                "bootstrap.servers": kafka,
                "group.id": group or f"g-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                **conf,
            }
        )
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
