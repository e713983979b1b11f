"""Apicurio Registry 3.x serving the Confluent-compatible REST API, its schemas kept in Kafka.

The registry's storage is KafkaSQL: every change is a record of a journal topic in the local
broker, replayed into an in-memory database at start, as a Confluent registry keeps its
schemas in ``_schemas``. So the schemas (and their ids) live as long as the broker's data:
a restarted registry, or a registry beside a restarted broker, serves what was registered
before, and only wiping the broker's data (``local up --fresh``) forgets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from streamproc.local import artifacts, process
from streamproc.local.java import find_java

HEAP = ["-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
CCOMPAT_PATH = "/apis/ccompat/v7"
JOURNAL_TOPIC = "kafkasql-journal"  # Apicurio's default name, kept: its docs and tools use it


@dataclass
class ApicurioRegistry:
    home: Path
    port: int
    bootstrap: str  # the broker whose journal topic holds the schemas
    management_port: int = 0  # the health/metrics interface; 0: a free port at start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    @property
    def log(self) -> Path:
        return self.home / "registry.log"

    def start(self, timeout_s: float = 90.0) -> int:
        process.check_port_free(self.port, "schema registry")
        if not self.management_port:
            self.management_port = process.free_port()
        process.check_port_free(self.management_port, "schema registry's health interface")
        # Apicurio 3.3 is compiled for Java 21.
        java = find_java(21, purpose="Apicurio Registry", env_var="STREAMPROC_REGISTRY_JAVA_HOME")
        app = artifacts.apicurio_app()
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [
            java, *HEAP,
            f"-Dquarkus.http.port={self.port}",
            "-Dquarkus.http.host=127.0.0.1",
            "-Dquarkus.log.console.color=false",
            # The health/metrics interface defaults to 0.0.0.0:9000 (one registry per
            # machine); it is fixed on at build time, so give it a loopback port.
            f"-Dquarkus.management.port={self.management_port}",
            "-Dquarkus.management.host=127.0.0.1",
            # Ids in the ccompat API are content ids, as a Confluent registry's are; the
            # journal replays them in order, so they are the same after a restart.
            "-Dapicurio.ccompat.use-canonical-hash=true",
            "-Dapicurio.storage.kind=kafkasql",
            f"-Dapicurio.kafkasql.bootstrap.servers={self.bootstrap}",
            f"-Dapicurio.kafkasql.topic={JOURNAL_TOPIC}",
            # At start the registry reads the journal and snapshot topics to their end, and
            # each read waits out a whole poll once nothing is left: Apicurio's 5 s default
            # made most of its start time.
            "-Dapicurio.kafkasql.consumer.poll.timeout=200",
            "-jar", str(app / "quarkus-run.jar"),
        ]  # fmt: skip
        pid = process.spawn(cmd, self.log, self.home)
        process.wait_ready("schema registry", pid, self.log, self.ready, timeout_s)
        return pid

    def ready(self) -> bool:
        """True once the journal is replayed (health says so) and the API answers."""
        try:
            health = f"http://127.0.0.1:{self.management_port}/health/ready"
            return (
                httpx.get(health, timeout=1.0).status_code == 200
                and httpx.get(f"{self.url}/subjects", timeout=1.0).status_code == 200
            )
        except httpx.HTTPError:
            return False
