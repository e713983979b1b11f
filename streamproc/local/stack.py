"""The local stack: one Kafka broker and one schema registry, started in the background.

State (pids, ports) lives in ``<home>/state.json`` so that ``up`` is idempotent and
``down`` from another process stops exactly what ``up`` started. The ports outlive the
processes: a later ``up`` (after a crash, a reboot or ``down``) starts what is not running
on the addresses it had, so clients that were configured with them reconnect by
themselves; only ``--fresh`` or explicit ports move them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import platformdirs

from streamproc.errors import LocalStackError
from streamproc.local import process
from streamproc.local.broker import KafkaBroker, OAuthValidation
from streamproc.local.proxy import RegistryProxy
from streamproc.local.registry import ApicurioRegistry
from streamproc.local.tls import ensure_broker_tls

PROXY = "registry-proxy"  # the registry's TLS endpoint's directory under the stack's home


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
    kafka_port: int | None = None
    controller_port: int | None = None
    registry_port: int | None = None
    management_port: int | None = None
    # The secure stack (``up(secure=True)``): its SASL_SSL listener and the admin user's
    # client properties file for it.
    secure_port: int | None = None
    secure_bootstrap: str | None = None
    client_properties: str | None = None
    # The secure stack's registry endpoint: nginx (TLS, basic auth) in front of the registry.
    proxy_pid: int | None = None
    proxy_port: int | None = None
    secure_schema_registry: str | None = None
    # The JWKS that the SASL_SSL listener checks OAUTHBEARER tokens against, if it takes them.
    oauth_jwks_url: str | None = None

    def public(self) -> dict[str, str]:
        out = {"bootstrap": self.bootstrap, "schema_registry": self.schema_registry}
        if self.secure_bootstrap and self.client_properties:
            out |= {"secure_bootstrap": self.secure_bootstrap,
                    "client_properties": self.client_properties}  # fmt: skip
        if self.secure_schema_registry:
            out["secure_schema_registry"] = self.secure_schema_registry
        if self.oauth_jwks_url:
            out["oauth_jwks_url"] = self.oauth_jwks_url
        return out


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
        """The running stack, or None when not all of it is running."""
        info = self._load()
        if info is None or not info.kafka_pid or not info.registry_pid:
            return None
        if self._running(info.kafka_pid, "kafka") and self._running(info.registry_pid, "registry"):
            return info
        return None

    def up(
        self,
        kafka_port: int | None = None,
        registry_port: int | None = None,
        fresh: bool = False,
        secure: bool = False,
        oauth: OAuthValidation | None = None,
    ) -> StackInfo:
        """Start what is not running (or reuse what is) and return where the stack listens.

        Each service keeps the ports it had (remembered in the state file, also after
        ``down``) unless ``fresh`` (which also wipes the broker's data, the registry's
        schemas with it) or an explicit port says otherwise. A service that fails to start
        leaves the other as it was: a running broker is not stopped because the registry
        could not start, nor the other way round.

        ``secure`` adds the broker's SASL_SSL listener with ACLs enforced (see
        :mod:`streamproc.local.kafka`); a stack once started secure stays so until ``fresh``.
        ``oauth`` (with ``secure``) has that listener take OAUTHBEARER tokens as well,
        checked against an OpenID Connect issuer's JWKS; it is not remembered: an ``up``
        without it restarts a broker that has it, and the other way round.
        """
        if fresh:
            self.down()
            shutil.rmtree(self.home / "kafka", ignore_errors=True)
        old = None if fresh else self._load()
        old = old or StackInfo(bootstrap="", schema_registry="")
        self.home.mkdir(parents=True, exist_ok=True)
        broker, registry = self._plan(old, kafka_port, registry_port)
        if secure or old.secure_port:
            ports = [broker.port, broker.controller_port, registry.port, registry.management_port]
            broker.secure_port = old.secure_port or process.free_ports(1, exclude=ports)[0]
            broker.oauth = oauth
        proxy: RegistryProxy | None = None
        if broker.secure_port:
            taken = [broker.port, broker.controller_port, broker.secure_port, registry.port,
                     registry.management_port]  # fmt: skip
            proxy_port = old.proxy_port or process.free_ports(1, exclude=taken)[0]
            proxy = RegistryProxy(self.home / PROXY, proxy_port, registry.port)
        keep_proxy = proxy is None or (
            self._running(old.proxy_pid, PROXY)
            and (old.proxy_port, old.registry_port) == (proxy.port, registry.port)
        )
        kafka_alive = self._running(old.kafka_pid, "kafka")
        registry_alive = self._running(old.registry_pid, "registry")
        keep_broker = (
            kafka_alive
            and (old.kafka_port, old.controller_port, old.secure_port)
            == (broker.port, broker.controller_port, broker.secure_port)
            and old.oauth_jwks_url == (broker.oauth.jwks_url if broker.oauth else None)
        )
        # A registry outlives its broker's restart on the same address: its Kafka clients
        # reconnect by themselves.
        keep_registry = (
            registry_alive
            and old.kafka_port == broker.port
            and (old.registry_port, old.management_port)
            == (registry.port, registry.management_port)
        )
        if keep_broker and keep_registry and keep_proxy:
            return old
        # Every port is checked before anything is stopped or started: a taken one fails
        # the call with the running services untouched.
        # Ports of a running service that is replaced are freed before its successor starts.
        moving: set[int | None] = set()
        if kafka_alive and not keep_broker:
            moving |= {old.kafka_port, old.controller_port, old.secure_port}
        if registry_alive and not keep_registry:
            moving |= {old.registry_port, old.management_port}
        hint = "pass --{} or --fresh to have another chosen, or stop what holds it"
        wanted: list[tuple[int, str, str]] = []
        if not keep_broker:
            wanted.append((broker.port, "Kafka broker", hint.format("kafka-port")))
            wanted.append((broker.controller_port, "Kafka controller", ""))
            if broker.secure_port:
                wanted.append((broker.secure_port, "Kafka SASL_SSL listener", ""))
        if not keep_registry:
            wanted.append((registry.port, "schema registry", hint.format("registry-port")))
            wanted.append((registry.management_port, "schema registry's health interface", ""))
        for port, what, why in wanted:
            if port not in moving:
                process.check_port_free(port, what, hint=why)
        info = old
        if registry_alive and not keep_registry:  # it moves, or its broker does
            process.stop(old.registry_pid or 0)
            info = replace(info, registry_pid=None)
            self._save(info)
        if kafka_alive and not keep_broker:
            process.stop(old.kafka_pid or 0)
            info = replace(info, kafka_pid=None)
            self._save(info)
        if not keep_broker:
            t0 = time.monotonic()
            pid = broker.start()
            info = replace(
                info,
                bootstrap=broker.bootstrap,
                kafka_pid=pid,
                kafka_start_s=round(time.monotonic() - t0, 2),
                kafka_port=broker.port,
                controller_port=broker.controller_port,
                secure_port=broker.secure_port,
                secure_bootstrap=broker.secure_bootstrap,
                client_properties=str(broker.client_properties) if broker.secure_port else None,
                oauth_jwks_url=broker.oauth.jwks_url if broker.oauth else None,
            )
            self._save(info)
        if not keep_registry:
            t0 = time.monotonic()
            try:
                pid = registry.start()
            except LocalStackError as exc:
                note = (
                    f"the Kafka broker is still running at {info.bootstrap} "
                    "(`streamproc local down` stops it)"
                )
                raise type(exc)(f"{exc}\n{note}") from exc
            info = replace(
                info,
                schema_registry=registry.url,
                registry_pid=pid,
                registry_start_s=round(time.monotonic() - t0, 2),
                registry_port=registry.port,
                management_port=registry.management_port,
            )
            self._save(info)
        if proxy is not None:
            info = self._secure_registry(info, broker, proxy, keep_proxy)
        return info

    def _secure_registry(
        self, info: StackInfo, broker: KafkaBroker, proxy: RegistryProxy, keep: bool
    ) -> StackInfo:
        """Start the registry's TLS endpoint unless it runs as wanted, and give the client
        properties file its registry lines (the broker's start rewrites the file)."""
        tls = ensure_broker_tls(broker.home / "tls")
        if not keep:
            if self._running(info.proxy_pid, PROXY):
                process.stop(info.proxy_pid or 0)
            pid = proxy.start(tls)
            info = replace(info, proxy_pid=pid, proxy_port=proxy.port,
                           secure_schema_registry=proxy.url)  # fmt: skip
            self._save(info)
        path = broker.client_properties
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if not line.startswith("schema.registry.")]  # fmt: skip
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(kept) + proxy.client_properties(tls))
        return info

    def down(self) -> bool:
        """Stop whatever ``up`` started; True if something was running. The ports stay
        remembered, so the next ``up`` serves the same addresses."""
        info = self._load()
        if info is None:
            return False
        stopped = False
        services = ((info.proxy_pid, PROXY), (info.registry_pid, "registry"),
                    (info.kafka_pid, "kafka"))  # fmt: skip
        for pid, service in services:
            if self._running(pid, service):
                process.stop(pid or 0)
                stopped = True
        self._save(replace(info, kafka_pid=None, registry_pid=None, proxy_pid=None))
        return stopped

    # -- internals ----------------------------------------------------------------------

    def _plan(
        self, old: StackInfo, kafka_port: int | None, registry_port: int | None
    ) -> tuple[KafkaBroker, ApicurioRegistry]:
        """The services' ports: the explicit ones, else the remembered ones, else free ones.

        The controller and the health interface are addressed by nothing outside the
        stack, so a remembered one that is now taken (or collides with an explicit port)
        is replaced by a free one rather than failing the start.
        """
        given = [p for p in (kafka_port, registry_port) if p]
        kafka = kafka_port or old.kafka_port
        reg_port = registry_port or old.registry_port
        taken = {p for p in (kafka, reg_port) if p}
        internal: list[int | None] = []
        for p in (old.controller_port, old.management_port):
            ok = p and p not in taken and (p in self._own_ports(old) or process.port_free(p))
            internal.append(p if ok else None)
            if ok:
                taken.add(p or 0)
        # Chosen together, so no two listeners get the same port.
        free = iter(process.free_ports(4, exclude=[*given, *taken]))
        broker = KafkaBroker(
            home=self.home / "kafka",
            port=kafka or next(free),
            controller_port=internal[0] or next(free),
        )
        registry = ApicurioRegistry(
            home=self.home / "registry",
            port=reg_port or next(free),
            bootstrap=broker.bootstrap,
            management_port=internal[1] or next(free),
        )
        return broker, registry

    def _own_ports(self, info: StackInfo) -> set[int]:
        """The ports that this stack's running services hold."""
        held: set[int] = set()
        if self._running(info.kafka_pid, "kafka"):
            held |= {p for p in (info.kafka_port, info.controller_port) if p}
        if self._running(info.registry_pid, "registry"):
            held |= {p for p in (info.registry_port, info.management_port) if p}
        return held

    def _running(self, pid: int | None, service: str) -> bool:
        """True if ``pid`` is alive and is this stack's ``service``: after a reboot the
        remembered pid may belong to another program, whose working directory differs."""
        if not pid or not process.pid_alive(pid):
            return False
        cwd = process.cwd_of(pid)
        return cwd is None or cwd == (self.home / service).resolve()

    def _load(self) -> StackInfo | None:
        try:
            raw = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict):
            return None
        known = {f.name for f in fields(StackInfo)}
        try:
            return StackInfo(**{k: v for k, v in raw.items() if k in known})
        except TypeError:
            return None

    def _save(self, info: StackInfo) -> None:
        """Write the state atomically: a reader never sees half a file."""
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(info)))
        os.replace(tmp, self.state_file)
