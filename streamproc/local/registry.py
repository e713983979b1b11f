"""Apicurio Registry 3.x serving the Confluent-compatible REST API (in-memory storage)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from streamproc.local import artifacts, process
from streamproc.local.java import find_java

HEAP = ["-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
CCOMPAT_PATH = "/apis/ccompat/v7"


@dataclass
class ApicurioRegistry:
    home: Path
    port: int
    management_port: int = 0  # the health/metrics interface; 0: a free port at start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    @property
    def log(self) -> Path:
        return self.home / "registry.log"

    def start(self, timeout_s: float = 90.0) -> int:
        process.check_port_free(self.port, "schema registry")
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
            # machine); it is fixed on at build time, so give it a free loopback port.
            f"-Dquarkus.management.port={self.management_port or process.free_port()}",
            "-Dquarkus.management.host=127.0.0.1",
            # Ids in the ccompat API are content ids, as a Confluent registry's are.
            "-Dapicurio.ccompat.use-canonical-hash=true",
            "-jar", str(app / "quarkus-run.jar"),
        ]  # fmt: skip
        pid = process.spawn(cmd, self.log, self.home)
        process.wait_ready("schema registry", pid, self.log, self.ready, timeout_s)
        return pid

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/subjects", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False
