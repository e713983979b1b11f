"""EventProducer's error paths with a fake client (no broker): what confluent-kafka 2.16 does
after a fatal error, a delivery callback given an error it cannot format, must still end in
one line naming the principal and the topic."""

from __future__ import annotations

import pytest

from streamproc.errors import DeliveryError
from streamproc.kafka.clients import EventProducer, _ClientLog
from streamproc.kafka.configuration import KafkaSettings

FATAL = ("Broker: Cluster authorization failed: Failed to acquire idempotence PID from "
         "broker sasl_ssl://127.0.0.1:9093/1: Broker: Cluster authorization failed")  # fmt: skip


class _Unreadable:
    """An error object as the client handed it once in CI: reading it raises."""

    def str(self) -> str:
        raise TypeError("Type confluent_kafka.cimpl.KafkaError doesn't define __format__")

    def code(self) -> int:
        raise TypeError("unreadable")


class _Client:
    def __init__(self, producer: EventProducer) -> None:
        self.owner = producer

    def flush(self, timeout_s: float) -> int:
        self.owner._on_delivery(_Unreadable(), None)  # type: ignore[arg-type]
        return 0


def _producer() -> EventProducer:
    p = EventProducer.__new__(EventProducer)  # the fields flush reads, no client
    p.topic = "payments"
    p._errors, p._denied = [], False
    p._settings = KafkaSettings(bootstrap="b:1", security_protocol="SASL_SSL",
                                sasl_mechanism="SCRAM-SHA-512", sasl_username="bob")  # fmt: skip
    p._log = _ClientLog()
    p.producer = _Client(p)  # type: ignore[assignment]
    return p


def test_an_unreadable_delivery_error_after_a_fatal_one_is_one_line_naming_who_and_where():
    p = _producer()
    p._log.fatal = FATAL  # what the client's FATAL log line said
    with pytest.raises(DeliveryError) as caught:
        p.flush()
    text = str(caught.value)
    assert text.startswith("User:bob may not write to payments: Broker: Cluster authorization")
    assert "\n" not in text and "grant it Write" in text


def test_an_unreadable_delivery_error_alone_is_a_delivery_failure_not_a_crash():
    p = _producer()
    with pytest.raises(DeliveryError, match=r"1 failed: \['payments: delivery failed'\]"):
        p.flush()
