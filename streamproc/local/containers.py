"""The same two services in Docker, through testcontainers (a `dev` dependency).

For machines with a Docker engine: `STREAMPROC_TEST_DOCKER=1 make test` starts them this way
instead of from Maven Central. The images match docker-compose.yml.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from streamproc.errors import DependencyMissingError, ServiceStartError
from streamproc.local.process import free_port
from streamproc.local.registry import CCOMPAT_PATH
from streamproc.local.stack import StackInfo

KAFKA_IMAGE = "apache/kafka:4.1.1"
REGISTRY_IMAGE = "apicurio/apicurio-registry:3.3.3"


def docker_available() -> bool:
    """True when a Docker engine answers (not just a client on PATH)."""
    try:
        import docker

        docker.from_env().ping()
    except Exception:  # no module, no socket, no engine: all mean "no"
        return False
    return True


def _wait(what: str, probe: object, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise ServiceStartError(f"{what} in Docker was not ready after {timeout_s:.0f} s")
        time.sleep(0.5)  # readiness poll of a container: no event to wait on


@contextmanager
def docker_stack() -> Iterator[StackInfo]:
    try:
        from testcontainers.core.container import DockerContainer
    except ImportError as exc:
        raise DependencyMissingError("testcontainers", "dev") from exc
    from streamproc.kafka.admin import metadata_ok

    port = free_port()  # the broker must advertise the port the host reaches it on
    kafka = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        )
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    registry = DockerContainer(REGISTRY_IMAGE).with_exposed_ports(8080)
    with kafka, registry:
        bootstrap = f"127.0.0.1:{port}"
        url = (
            f"http://{registry.get_container_host_ip()}:{registry.get_exposed_port(8080)}"
            f"{CCOMPAT_PATH}"
        )
        _wait("Kafka", lambda: metadata_ok(bootstrap))

        def registry_ready() -> bool:
            try:
                return httpx.get(f"{url}/subjects", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        _wait("the schema registry", registry_ready)
        yield StackInfo(bootstrap=bootstrap, schema_registry=url, external=True)
