"""The one explicit map from streamproc's settings to librdkafka property names.

>>> from streamproc.config import KafkaSettings
>>> conf = consumer_config(KafkaSettings(bootstrap="b:9092"), group_id="g", eos=True)
>>> conf["bootstrap.servers"], conf["isolation.level"], conf["enable.auto.commit"]
('b:9092', 'read_committed', False)

A replica's instance id names it as a static member of the group; under the consumer
protocol (KIP-848) the broker, not the client, sets the session and heartbeat:

>>> conf = consumer_config(KafkaSettings(), "g", False, instance_id="r1")
>>> conf["group.instance.id"], conf["session.timeout.ms"], conf["heartbeat.interval.ms"]
('r1', 2000, 500)
>>> conf = consumer_config(KafkaSettings(group_protocol="consumer"), "g", False, "r1")
>>> conf["group.protocol"], "session.timeout.ms" in conf, "partition.assignment.strategy" in conf
('consumer', False, False)
>>> "group.instance.id" in consumer_config(KafkaSettings(static_membership=False), "g", False, "r1")
False
"""

from __future__ import annotations

from typing import Any

from streamproc.config import KafkaSettings, RegistrySettings


def common_config(k: KafkaSettings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": k.bootstrap,
        "client.id": k.client_id,
        "security.protocol": k.security_protocol,
    }
    if k.sasl_mechanism:
        conf["sasl.mechanism"] = k.sasl_mechanism
    if k.sasl_username:
        conf["sasl.username"] = k.sasl_username
    if k.sasl_password is not None:
        conf["sasl.password"] = k.sasl_password.get_secret_value()
    return conf


def consumer_config(
    k: KafkaSettings, group_id: str, eos: bool, instance_id: str | None = None
) -> dict[str, Any]:
    conf = {
        **common_config(k),
        "group.id": group_id,
        "enable.auto.commit": False,  # offsets are committed by the commit protocol only
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # exactly-once reads only committed transactions of upstream producers
        "isolation.level": "read_committed" if eos else "read_uncommitted",
        "fetch.wait.max.ms": 5,  # the batcher's own deadline governs latency
        "queued.min.messages": 20_000,
        # Once the local queue holds queued.min.messages, librdkafka postpones the next
        # fetch by this much (default 1000 ms): at the default a drained backlog stalls for
        # up to a second between fetches (figures: benchmarks/README.md).
        "fetch.queue.backoff.ms": 10,
    }
    if k.group_protocol == "classic":
        conf["partition.assignment.strategy"] = "range"
        # A replica killed without leaving is noticed after the session timeout.
        conf["session.timeout.ms"] = k.session_timeout_ms
        conf["heartbeat.interval.ms"] = k.heartbeat_interval_ms
    else:  # KIP-848: the broker assigns and sets the session; the client rejects these
        conf["group.protocol"] = "consumer"
    if instance_id and k.static_membership:
        conf["group.instance.id"] = instance_id
    conf.update(k.extra)
    return conf


def producer_config(k: KafkaSettings, transactional_id: str | None = None) -> dict[str, Any]:
    conf = {
        **common_config(k),
        "enable.idempotence": True,  # no duplicates from producer retries
        "acks": "all",
        "linger.ms": 2,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
    }
    if transactional_id:
        conf["transactional.id"] = transactional_id
        conf["transaction.timeout.ms"] = 60_000
    conf.update(k.extra)
    return conf


def registry_config(r: RegistrySettings) -> dict[str, Any]:
    """The schema registry client's configuration. ``timeout`` bounds one HTTP request; a
    lookup of a writer schema is one request (Registry sets ``max.retries`` 0 for it), and
    the runner retries with backoff between ``retry_initial_ms`` and ``retry_max_ms``."""
    conf: dict[str, Any] = {"url": r.url, "timeout": r.request_timeout_s}
    if r.username and r.password is not None:
        conf["basic.auth.user.info"] = f"{r.username}:{r.password.get_secret_value()}"
    return conf
