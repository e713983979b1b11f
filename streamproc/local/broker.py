"""An Apache Kafka broker in KRaft combined mode (broker + controller, one node)."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shlex
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from streamproc.errors import JavaNotFoundError, ServiceStartError
from streamproc.local import artifacts, process
from streamproc.local.java import find_java, java_major
from streamproc.local.tls import BrokerTls, ensure_broker_tls

# Sized for a 2-core, 24 GB machine running the broker, the registry and the tests.
HEAP = ["-Xms256m", "-Xmx1g"]


def gc_options(java_major: int) -> list[str]:
    """The broker's collector: generational ZGC where the JVM has it (Java 21+), else G1.

    Under G1 (Kafka's own default, pause goal 20 ms) the benchmark's broker paused often
    enough under load to make most of the end-to-end p99; under ZGC that share went away
    (benchmarks/README.md, "The broker's garbage collector").

    >>> gc_options(17)
    ['-XX:+UseG1GC', '-XX:MaxGCPauseMillis=20']
    >>> gc_options(21), gc_options(25)
    (['-XX:+UseZGC', '-XX:+ZGenerational'], ['-XX:+UseZGC'])
    """
    if java_major >= 24:
        return ["-XX:+UseZGC"]  # generational is ZGC's only mode since Java 24
    if java_major >= 21:
        return ["-XX:+UseZGC", "-XX:+ZGenerational"]
    return ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]


def jvm_options(env: Mapping[str, str], java_major: int) -> list[str]:
    """The broker's heap and GC flags: Kafka's own ``KAFKA_HEAP_OPTS`` and
    ``KAFKA_JVM_PERFORMANCE_OPTS`` replace the defaults, as ``kafka-run-class.sh`` reads them.

    >>> jvm_options({}, 17)
    ['-Xms256m', '-Xmx1g', '-XX:+UseG1GC', '-XX:MaxGCPauseMillis=20']
    >>> jvm_options({"KAFKA_JVM_PERFORMANCE_OPTS": "-XX:+UseParallelGC"}, 25)
    ['-Xms256m', '-Xmx1g', '-XX:+UseParallelGC']
    """
    heap = shlex.split(env.get("KAFKA_HEAP_OPTS", "")) or HEAP
    gc = shlex.split(env.get("KAFKA_JVM_PERFORMANCE_OPTS", "")) or gc_options(java_major)
    return [*heap, *gc]


def broker_java(env: Mapping[str, str]) -> str:
    """``$STREAMPROC_JAVA_HOME``'s java if set (17 or newer); else a Java 21+ if there is
    one (the registry needs one anyway), for its collector; else any Java 17+."""
    purpose = "the Kafka broker"
    if not env.get("STREAMPROC_JAVA_HOME"):
        with contextlib.suppress(JavaNotFoundError):
            return find_java(21, purpose=purpose)
    return find_java(17, purpose=purpose)


_LOG4J = """\
status = warn
appender.file.type = Console
appender.file.name = FILE
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = warn
"""


def thread_settings(cores: int) -> dict[str, int]:
    """The broker's I/O, network and background thread counts: Kafka's defaults (8, 3, 10),
    each capped at the cores this process may run on.

    The local broker shares its machine with the processors, the load generator and the
    tests. On a 2-core machine Kafka's defaults let the broker's request threads take both
    cores in a burst, which showed in streamproc's p99 (benchmarks/README.md, "The broker's
    threads").

    >>> thread_settings(2)
    {'num.io.threads': 2, 'num.network.threads': 2, 'background.threads': 2}
    >>> thread_settings(16)
    {'num.io.threads': 8, 'num.network.threads': 3, 'background.threads': 10}
    """
    n = max(1, cores)
    return {"num.io.threads": min(8, n), "num.network.threads": min(3, n),
            "background.threads": min(10, n)}  # fmt: skip


def available_cores() -> int:
    """The cores this process may run on (its affinity mask), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# The group coordinator's bounds on failure detection, lowered from Kafka's defaults (6 s
# minimum session under the classic protocol; 45 s sessions and 5 s heartbeats under the
# consumer protocol, KIP-848) so that a replica killed with kill -9 gives its partitions up
# within the processors' session timeout (KafkaSettings.session_timeout_ms). The consumer
# protocol's session and heartbeat are the broker's to set.
_GROUP_COORDINATOR = """\
group.min.session.timeout.ms=1000
group.consumer.min.session.timeout.ms=1000
group.consumer.session.timeout.ms=2000
group.consumer.min.heartbeat.interval.ms=250
group.consumer.heartbeat.interval.ms=500
"""


ADMIN_USER = "admin"


@dataclass(frozen=True)
class OAuthValidation:
    """OAUTHBEARER on the SASL_SSL listener: tokens (JWTs) checked by Kafka's own
    validator against the issuer's JWKS; the principal is ``User:<sub>``."""

    jwks_url: str
    audience: str | None = None
    issuer: str | None = None


def _oauth_properties(p: str, oauth: OAuthValidation) -> str:
    """Kafka's OAUTHBEARER validator on listener prefix ``p``: signature (the JWKS), expiry
    (30 s of clock skew), audience and issuer when given; ``sub`` names the principal.

    The login module and the callback handler take the mechanism's prefix; the
    ``sasl.oauthbearer.*`` settings are read from the listener's own (with the mechanism's
    prefix Kafka 4.1 did not see them, and so checked no signature: the wrong-key test).
    """
    m = f"{p}oauthbearer."
    pkg = "org.apache.kafka.common.security.oauthbearer."
    lines = [
        f"{m}sasl.jaas.config={pkg}OAuthBearerLoginModule required;",
        f"{m}sasl.server.callback.handler.class={pkg}OAuthBearerValidatorCallbackHandler",
        # Named, not left to the default: Kafka 4.1's DefaultJwtValidator, as the callback
        # handler makes it (without a key resolver), checks expiry and claims but no
        # signature, so that any well-formed token with a sub passed.
        f"{p}sasl.oauthbearer.jwt.validator.class={pkg}BrokerJwtValidator",
        f"{p}sasl.oauthbearer.jwks.endpoint.url={oauth.jwks_url}",
        f"{p}sasl.oauthbearer.sub.claim.name=sub",
    ]
    if oauth.audience:
        lines.append(f"{p}sasl.oauthbearer.expected.audience={oauth.audience}")
    if oauth.issuer:
        lines.append(f"{p}sasl.oauthbearer.expected.issuer={oauth.issuer}")
    return "".join(line + "\n" for line in lines)


def oauth_jvm_options(oauth: OAuthValidation | None) -> list[str]:
    """Kafka 4 reads no OAuth URL that this system property does not list.

    >>> oauth_jvm_options(OAuthValidation("http://127.0.0.1:1/jwks"))
    ['-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls=http://127.0.0.1:1/jwks']
    """
    return [] if oauth is None else [
        f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={oauth.jwks_url}"]  # fmt: skip


def _secure_properties(tls: BrokerTls, oauth: OAuthValidation | None = None) -> str:
    """The SASL_SSL listener (SCRAM-SHA-512 over TLS; OAUTHBEARER too with ``oauth``) and
    KRaft's standard authorizer.

    ``User:ANONYMOUS`` is the principal of the PLAINTEXT and CONTROLLER listeners: the
    broker itself (its controller and inter-broker traffic) and the schema registry's
    storage. It is a super user so that those keep working under the authorizer; the
    PLAINTEXT listener stays bound to 127.0.0.1. Everyone else needs an ACL.

    Client quotas are measured over 2 one-second windows instead of Kafka's 11: a client
    over its quota is throttled after a burst of about one second's quota instead of ten,
    so that the local broker shows a quota's effect within seconds.
    """
    p = "listener.name.sasl_ssl."
    mechanisms = "SCRAM-SHA-512,OAUTHBEARER" if oauth else "SCRAM-SHA-512"
    oauth_lines = _oauth_properties(p, oauth) if oauth else ""
    return f"""\
{p}sasl.enabled.mechanisms={mechanisms}
{p}scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
{p}ssl.keystore.type=PKCS12
{p}ssl.keystore.location={tls.keystore}
{p}ssl.keystore.password={tls.keystore_password}
{p}ssl.key.password={tls.keystore_password}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:{ADMIN_USER}
allow.everyone.if.no.acl.found=false
quota.window.num=2
{oauth_lines}"""


def _server_properties(
    data: Path,
    port: int,
    controller_port: int,
    cores: int,
    secure_port: int | None = None,
    tls: BrokerTls | None = None,
    oauth: OAuthValidation | None = None,
) -> str:
    threads = "".join(f"{k}={v}\n" for k, v in thread_settings(cores).items())
    listeners = f"PLAINTEXT://127.0.0.1:{port}"
    protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    secure = ""
    if secure_port is not None and tls is not None:
        listeners += f",SASL_SSL://127.0.0.1:{secure_port}"
        protocols += ",SASL_SSL:SASL_SSL"
        secure = _secure_properties(tls, oauth)
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners={listeners},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners={listeners}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map={protocols}
{secure}log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
{_GROUP_COORDINATOR}log.flush.interval.messages=9223372036854775807
{threads}"""


def _cluster_id() -> str:
    """A random KRaft cluster id; one that starts with '-' would read as a CLI flag."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


@dataclass
class KafkaBroker:
    """Files and ports of one local broker; ``start`` returns its pid."""

    home: Path
    port: int
    controller_port: int
    # With a port: a SASL_SSL listener there too, ACLs enforced (``_secure_properties``).
    secure_port: int | None = None
    # With it: that listener takes OAUTHBEARER tokens too, checked against an issuer's JWKS.
    oauth: OAuthValidation | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_bootstrap(self) -> str | None:
        return None if self.secure_port is None else f"127.0.0.1:{self.secure_port}"

    @property
    def client_properties(self) -> Path:
        """The admin user's client properties for the SASL_SSL listener (kcat -F, the
        streamproc commands' --kafka-config)."""
        return self.home / "client.properties"

    @property
    def log(self) -> Path:
        return self.home / "kafka.log"

    @property
    def gc_log(self) -> Path:
        return self.home / "gc.log"

    def start(self, timeout_s: float = 60.0) -> int:
        process.check_port_free(self.port, "Kafka broker")
        process.check_port_free(self.controller_port, "Kafka controller")
        java = broker_java(os.environ)
        lib = artifacts.kafka_libs()
        data = self.home / "data"
        self.home.mkdir(parents=True, exist_ok=True)
        props = self.home / "server.properties"
        tls = None
        if self.secure_port is not None:
            process.check_port_free(self.secure_port, "Kafka SASL_SSL listener")
            tls = ensure_broker_tls(self.home / "tls")
        fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds secrets
        with os.fdopen(fd, "w") as f:
            f.write(_server_properties(data, self.port, self.controller_port,
                                       available_cores(), self.secure_port, tls,
                                       self.oauth if tls else None))  # fmt: skip
        log4j = self.home / "log4j2.properties"
        log4j.write_text(_LOG4J.format(level="INFO"))  # stdout, into self.log
        opts = [*jvm_options(os.environ, java_major(java) or 17), *oauth_jvm_options(self.oauth),
                f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{lib}/*"]  # fmt: skip
        base = [java, *opts]
        if not (data / "meta.properties").exists():
            cluster_id = _cluster_id()
            fmt = subprocess.run(
                [*base, "kafka.tools.StorageTool", "format", "--standalone",
                 "-t", cluster_id, "-c", str(props)],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if fmt.returncode != 0:
                raise ServiceStartError(
                    f"formatting Kafka storage in {data} failed:\n{fmt.stdout}{fmt.stderr}"
                )
        # Every collection (G1: each pause), with wall-clock time, in gc.log (two files of
        # 10 MB at most): the first place to look when the broker's latency has a tail.
        gc_log = f"-Xlog:gc:file={self.gc_log}:time,uptime:filecount=2,filesize=10m"
        pid = process.spawn([java, gc_log, *opts, "kafka.Kafka", str(props)], self.log, self.home)
        process.wait_ready("Kafka broker", pid, self.log, self.ready, timeout_s)
        if tls is not None:
            self._admin_credential(tls)
        return pid

    def _admin_credential(self, tls: BrokerTls) -> None:
        """The admin user's SCRAM credential (set over the PLAINTEXT listener, whose
        principal is a super user) and the client properties file that uses it. The
        password is made once and kept in that file (mode 0600)."""
        from streamproc.kafka.admin import Admin
        from streamproc.kafka.configuration import read_properties

        path = self.client_properties
        old = read_properties(path) if path.exists() else {}
        password = old.get("sasl_password") or secrets.token_urlsafe(24)
        Admin(self.bootstrap).upsert_scram_user(ADMIN_USER, password)
        text = (
            "# The secure local broker's admin user (a super user): kcat -F FILE, or\n"
            "# streamproc ... --kafka-config FILE\n"
            f"bootstrap.servers={self.secure_bootstrap}\n"
            "security.protocol=SASL_SSL\n"
            "sasl.mechanisms=SCRAM-SHA-512\n"
            f"sasl.username={ADMIN_USER}\n"
            f"sasl.password={password}\n"
            f"ssl.ca.location={tls.ca_pem}\n"
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def ready(self) -> bool:
        """True once the broker answers a metadata request."""
        from streamproc.kafka.admin import metadata_ok

        return metadata_ok(self.bootstrap, timeout_s=1.0)
