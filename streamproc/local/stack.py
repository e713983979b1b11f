"""The local stack: one Kafka broker and one schema registry, started in the background.

State (pids, ports) lives in ``<home>/state.json`` so that ``up`` is idempotent and
``down`` from another process stops exactly what ``up`` started.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs

from streamproc.errors import LocalStackError
from streamproc.local import process
from streamproc.local.kafka import KafkaBroker
from streamproc.local.registry import ApicurioRegistry


def default_home() -> Path:
    override = os.environ.get("STREAMPROC_HOME")
    base = Path(override) if override else Path(platformdirs.user_state_dir("streamproc"))
    return base / "stack"


@dataclass
class StackInfo:
    bootstrap: str
    schema_registry: str
    kafka_pid: int | None = None
    registry_pid: int | None = None
    kafka_start_s: float | None = None
    registry_start_s: float | None = None
    external: bool = False

    def public(self) -> dict[str, str]:
        return {"bootstrap": self.bootstrap, "schema_registry": self.schema_registry}


def from_environment() -> StackInfo | None:
    """The services named by ``STREAMPROC_KAFKA_BOOTSTRAP`` and ``..._SCHEMA_REGISTRY_URL``."""
    bootstrap = os.environ.get("STREAMPROC_KAFKA_BOOTSTRAP")
    registry = os.environ.get("STREAMPROC_SCHEMA_REGISTRY_URL")
    if bootstrap and registry:
        return StackInfo(bootstrap=bootstrap, schema_registry=registry, external=True)
    if bootstrap or registry:
        raise LocalStackError(
            "set both STREAMPROC_KAFKA_BOOTSTRAP and STREAMPROC_SCHEMA_REGISTRY_URL, or neither"
        )
    return None


class LocalStack:
    """Start, inspect and stop the broker and registry under ``home``."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or default_home()
        self.state_file = self.home / "state.json"

    def status(self) -> StackInfo | None:
        """The running stack, or None when nothing of it is running."""
        try:
            info = StackInfo(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        pids = [p for p in (info.kafka_pid, info.registry_pid) if p]
        if pids and all(process.pid_alive(p) for p in pids):
            return info
        return None

    def up(
        self,
        kafka_port: int | None = None,
        registry_port: int | None = None,
        fresh: bool = False,
    ) -> StackInfo:
        """Start both services (or reuse the running ones) and return where they listen."""
        running = self.status()
        if running is not None and not fresh:
            return running
        self.down()
        if fresh:
            shutil.rmtree(self.home / "kafka", ignore_errors=True)
        self.home.mkdir(parents=True, exist_ok=True)
        # Chosen together, so no two listeners get the same port.
        given = [p for p in (kafka_port, registry_port) if p]
        free = iter(process.free_ports(4, exclude=given))
        broker = KafkaBroker(
            home=self.home / "kafka",
            port=kafka_port or next(free),
            controller_port=next(free),
        )
        registry = ApicurioRegistry(
            home=self.home / "registry",
            port=registry_port or next(free),
            management_port=next(free),
        )
        t0 = time.monotonic()
        kafka_pid = broker.start()
        t1 = time.monotonic()
        try:
            registry_pid = registry.start()
        except BaseException:
            process.stop(kafka_pid)
            raise
        t2 = time.monotonic()
        info = StackInfo(
            bootstrap=broker.bootstrap,
            schema_registry=registry.url,
            kafka_pid=kafka_pid,
            registry_pid=registry_pid,
            kafka_start_s=round(t1 - t0, 2),
            registry_start_s=round(t2 - t1, 2),
        )
        self.state_file.write_text(json.dumps(asdict(info)))
        return info

    def down(self) -> bool:
        """Stop whatever ``up`` started; True if something was running."""
        try:
            info = StackInfo(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return False
        stopped = False
        for pid in (info.registry_pid, info.kafka_pid):
            if pid and process.pid_alive(pid):
                process.stop(pid)
                stopped = True
        self.state_file.unlink(missing_ok=True)
        return stopped
