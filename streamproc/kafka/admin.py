"""Topic administration and broker health on confluent-kafka's AdminClient."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError as CkKafkaError
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported, not in __all__
    AdminClient,
    ClusterMetadata,
    NewTopic,
    OffsetSpec,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from streamproc.errors import KafkaError
from streamproc.kafka.configuration import (
    Connection,
    client_config,
    kafka_settings,
    oauth_failure,
)

# Errors after which a client only retries the same thing forever: a wrong password, a
# certificate the client does not trust. The admin client reports them at once.
_FATAL = {CkKafkaError._AUTHENTICATION: "authentication", CkKafkaError._SSL: "TLS"}
_FIX = {
    "authentication": "check sasl.username and sasl.password (--kafka-config)",
    "TLS": "check ssl.ca.location and the broker's address (--kafka-config)",
}


def metadata_ok(conn: Connection, timeout_s: float = 1.0) -> bool:
    """True when the cluster at ``conn`` answers a metadata request."""
    client = AdminClient({**client_config(conn), "log_level": 0})
    try:
        md = client.list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return bool(md.brokers)


def check_connection(conn: Connection, timeout_s: float = 10.0) -> None:
    """Raise :class:`KafkaError` naming the principal and the fix when the cluster refuses
    ``conn``'s credentials or certificate, within seconds; return once it answers."""
    Admin(conn).list_topics(timeout_s=timeout_s)


def check_secured(conn: Connection, timeout_s: float = 10.0) -> None:
    """:func:`check_connection` for a SASL or TLS profile; nothing for PLAINTEXT.

    The data clients (consumers, producers) retry a refused login without end and report
    it nowhere their callers look: they call this first."""
    if kafka_settings(conn).security_protocol != "PLAINTEXT":
        check_connection(conn, timeout_s)


class Admin:
    """Thin wrapper over AdminClient that raises :class:`KafkaError`; a refused login or
    an untrusted certificate fails its calls at once, naming the principal."""

    def __init__(
        self, conn: Connection, extra: Mapping[str, str | int | float] | None = None
    ) -> None:
        self._settings = kafka_settings(conn)
        self._fatal: str | None = None
        conf: dict[str, Any] = {**client_config(conn), **(extra or {})}
        conf["error_cb"] = self._on_error
        try:
            self._client = AdminClient(conf)
        except KafkaException as exc:  # an OAUTHBEARER token callback that gave no valid token
            self._fatal = f"authentication: {exc.args[0].str()}"
            self._raise_fatal(poll=False)
            raise

    @property
    def client(self) -> AdminClient:
        """The underlying client, for the calls this wrapper does not name (ACLs)."""
        return self._client

    def _on_error(self, err: CkKafkaError) -> None:
        if err.code() in _FATAL and self._fatal is None:
            self._fatal = f"{_FATAL[err.code()]}: {err.str()}"

    def _raise_fatal(self, poll: bool = True) -> None:
        if poll:
            self._client.poll(0)  # serves error_cb
        if self._fatal is None:
            return
        what, _, reason = self._fatal.partition(": ")
        k = self._settings
        if k.sasl_mechanism == "OAUTHBEARER" and what != "TLS":
            raise KafkaError(oauth_failure(k, reason))
        who = f"User:{k.sasl_username}" if k.sasl_username else "the client"
        how = f" (SASL {k.sasl_mechanism})" if k.sasl_mechanism else ""
        fix = _FIX[what]
        raise KafkaError(f"Kafka {what} failed for {who}{how} at {k.bootstrap}: {reason}; "
                         f"{fix}")  # fmt: skip

    def list_topics(self, topic: str | None = None, timeout_s: float = 10.0) -> ClusterMetadata:
        """The cluster's metadata; asked in short slices, so that a refused login is
        reported after the first attempt instead of at the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._raise_fatal()
            left = deadline - time.monotonic()
            try:
                return self._client.list_topics(topic, timeout=max(0.05, min(0.5, left)))
            except KafkaException as exc:
                self._raise_fatal()
                if time.monotonic() >= deadline:
                    raise KafkaError(f"no answer from Kafka at {self._settings.bootstrap} "
                                     f"within {timeout_s:g}s: {exc}") from exc  # fmt: skip

    def ensure_topics(
        self,
        names: Iterable[str],
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        replication_factor: int = -1,
    ) -> None:
        """Create each topic that does not exist yet; existing ones are left as they are.
        ``replication_factor`` -1: the broker's ``default.replication.factor``.

        Returns once the broker's metadata lists every created topic with a leader for each
        partition: a topic made again just after its deletion was once reported unknown by
        the metadata request that followed its successful creation (a CI run of
        ``tests/kafka/test_admin.py``).
        """
        existing = set(self.list_topics(timeout_s=timeout_s).topics)
        new = [
            NewTopic(n, num_partitions=partitions, replication_factor=replication_factor,
                     config=dict(config or {}))
            for n in dict.fromkeys(names) if n not in existing
        ]  # fmt: skip
        if not new:
            return
        for name, fut in self._client.create_topics(new, operation_timeout=timeout_s).items():
            try:
                fut.result(timeout=timeout_s)
            except KafkaException as exc:
                if exc.args[0].code() == CkKafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                if exc.args[0].code() == CkKafkaError.INVALID_REPLICATION_FACTOR:
                    raise KafkaError(f"could not create topic {name}: {exc.args[0].str()}; "
                                     "lower its replication factor (topics.policy in the "
                                     "pipeline config) to at most the number of brokers",
                                     topic=name) from exc  # fmt: skip
                raise KafkaError(f"could not create topic: {exc}", topic=name) from exc

        def unready(md: ClusterMetadata) -> set[str]:
            return {
                t.topic for t in new
                if (m := md.topics.get(t.topic)) is None or m.error is not None
                or not m.partitions or any(p.leader < 0 for p in m.partitions.values())
            }  # fmt: skip

        self._await_metadata(unready, "not listed with leaders", timeout_s)

    def _await_metadata(
        self, left: Callable[[ClusterMetadata], set[str]], what: str, timeout_s: float
    ) -> None:
        """Ask for the cluster's metadata until ``left(metadata)`` names no topic."""
        deadline = time.monotonic() + timeout_s
        while waiting := left(self.list_topics(timeout_s=timeout_s)):
            if time.monotonic() > deadline:
                raise KafkaError(f"topics {what} {timeout_s:g}s later: {sorted(waiting)}")
            time.sleep(0.05)  # a bounded wait for the metadata, checked each time

    def partitions(self, topic: str, timeout_s: float = 10.0) -> int:
        md = self.list_topics(topic, timeout_s)
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            raise KafkaError("topic does not exist", topic=topic)
        return len(t.partitions)

    def latest_offsets(self, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
        """End offset of each partition of ``topic`` (``list_offsets`` with LATEST)."""
        req = {
            TopicPartition(topic, p): OffsetSpec.latest()
            for p in range(self.partitions(topic, timeout_s))
        }
        try:
            res = self._client.list_offsets(req, request_timeout=timeout_s)
            return {tp.partition: fut.result().offset for tp, fut in res.items()}
        except KafkaException as exc:
            raise KafkaError(f"list_offsets failed: {exc}", topic=topic) from exc

    def upsert_scram_user(
        self, user: str, password: str, mechanism: str = "SCRAM-SHA-512", timeout_s: float = 30.0
    ) -> None:
        """Create or replace ``user``'s SCRAM credential (KIP-554)."""
        mech = ScramMechanism[mechanism.replace("-", "_")]
        upsert = UserScramCredentialUpsertion(user, ScramCredentialInfo(mech, 8192),
                                              password.encode())  # fmt: skip
        futures = self._client.alter_user_scram_credentials([upsert], request_timeout=timeout_s)
        for fut in futures.values():
            try:
                fut.result(timeout=timeout_s)
            except KafkaException as exc:
                raise KafkaError(f"could not set the SCRAM credential of {user}: {exc}") from exc

    def delete_topics(self, names: Iterable[str], timeout_s: float = 30.0) -> None:
        """Delete the topics and return once the broker's metadata no longer lists them.

        The deletion completes asynchronously in the broker: a topic still listed right
        after the request (1 in 10 tries on the local broker) would be taken as existing by
        :meth:`ensure_topics` and then vanish, and every later write to it fails.
        """
        names = list(names)
        if not names:
            return
        for _name, fut in self._client.delete_topics(names, operation_timeout=timeout_s).items():
            with contextlib.suppress(KafkaException):  # already gone
                fut.result(timeout=timeout_s)
        self._await_metadata(lambda md: set(names) & set(md.topics), "still listed", timeout_s)
