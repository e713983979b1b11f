"""Kafka client quotas (KIP-546: AlterClientQuotas, DescribeClientQuotas) for a pipeline's
tenants.

confluent-kafka's AdminClient has no client-quota calls (librdkafka lacks them), so the two
requests go over aiokafka's protocol layer, with the same connection profile
(:func:`~streamproc.kafka.configuration.aiokafka_config`): what ``kafka-configs
--alter --entity-type users`` sends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from streamproc.config import TenantSettings
from streamproc.errors import DependencyMissingError, KafkaError
from streamproc.kafka.configuration import (
    Connection,
    aiokafka_config,
    kafka_settings,
    principal,
)

QUOTA_KEYS = ("producer_byte_rate", "consumer_byte_rate", "request_percentage")


@dataclass(frozen=True)
class QuotaChange:
    """The quotas set on one entity (``{"user": "acme"}``, ``{"client-id": "x"}``, or
    both); ``removed`` lists the keys the tenant leaves out."""

    tenant: str
    entity: dict[str, str]
    set: dict[str, float]
    removed: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "entity": self.entity, "set": self.set,
                "removed": self.removed}  # fmt: skip


def changes(tenants: list[TenantSettings]) -> list[QuotaChange]:
    """The quota of each tenant's entity, as Kafka names them.

    >>> [c.as_dict() for c in changes([TenantSettings(name="a", principal="User:acme",
    ...                                               producer_byte_rate=1024)])]
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'tenant': 'a', 'entity': {'user': 'acme'}, 'set': {'producer_byte_rate': 1024.0},
      'removed': ['consumer_byte_rate', 'request_percentage']}]
    """
    out = []
    for t in tenants:
        entity = {}
        if t.principal:
            entity["user"] = t.principal.partition(":")[2]
        if t.client_id:
            entity["client-id"] = t.client_id
        values = {k: getattr(t, k) for k in QUOTA_KEYS}
        out.append(QuotaChange(t.name, entity,
                               {k: float(v) for k, v in values.items() if v is not None},
                               [k for k, v in values.items() if v is None]))  # fmt: skip
    return out


def _protocol() -> tuple[type[Any], type[Any]]:
    """The AlterClientQuotas (key 49) and DescribeClientQuotas (48) requests, v0."""
    try:
        from aiokafka.protocol.admin import DescribeClientQuotasRequest
        from aiokafka.protocol.api import Request, RequestStruct, Response
        from aiokafka.protocol.types import Array, Boolean, Float64, Int16, Int32, Schema, String
    except ImportError as exc:  # pragma: no cover - aiokafka is in the aio and dev extras
        raise DependencyMissingError("aiokafka", "aio") from exc

    entity = Array(("entity_type", String("utf-8")), ("entity_name", String("utf-8")))

    class AlterClientQuotasResponseV0(Response):  # type: ignore[misc]
        API_KEY = 49
        API_VERSION = 0
        SCHEMA = Schema(("throttle_time_ms", Int32),
                        ("entries", Array(("error_code", Int16),
                                          ("error_message", String("utf-8")),
                                          ("entity", entity))))  # fmt: skip

    class AlterClientQuotasRequestV0(RequestStruct):  # type: ignore[misc]
        API_KEY = 49
        API_VERSION = 0
        RESPONSE_TYPE = AlterClientQuotasResponseV0
        SCHEMA = Schema(("entries", Array(("entity", entity),
                                          ("ops", Array(("key", String("utf-8")),
                                                        ("value", Float64),
                                                        ("remove", Boolean))))),
                        ("validate_only", Boolean))  # fmt: skip

    class AlterClientQuotasRequest(Request[AlterClientQuotasRequestV0]):  # type: ignore[misc]
        API_KEY = 49

        def __init__(self, entries: list[Any]) -> None:
            self._entries = entries

        def build(self, cls: type[AlterClientQuotasRequestV0]) -> AlterClientQuotasRequestV0:
            return cls(self._entries, False)

    return AlterClientQuotasRequest, DescribeClientQuotasRequest


async def _send(conn: Connection, request: Any, timeout_s: float) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**aiokafka_config(conn),
                                request_timeout_ms=int(timeout_s * 1000))  # fmt: skip
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        return await asyncio.wait_for(admin._send_request(request), timeout_s)
    finally:
        await admin.close()


def _run(conn: Connection, request: Any, timeout_s: float) -> Any:
    k = kafka_settings(conn)
    try:
        return asyncio.run(_send(conn, request, timeout_s))
    except (TimeoutError, OSError) as exc:
        raise KafkaError(f"no answer from Kafka at {k.bootstrap} within {timeout_s:g}s "
                         f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
    except Exception as exc:  # aiokafka's errors (authentication, ...): one line, no trace
        if isinstance(exc, KafkaError):
            raise
        who = principal(k) or "the client"
        raise KafkaError(f"client quotas request as {who} at {k.bootstrap} failed: "
                         f"{type(exc).__name__}: {exc}") from exc  # fmt: skip


def apply_quotas(
    conn: Connection, tenants: list[TenantSettings], timeout_s: float = 30.0
) -> list[QuotaChange]:
    """Set each tenant's quotas (and remove the ones it leaves out) in one request; the
    principal needs AlterConfigs on the cluster (a super user)."""
    planned = changes(tenants)
    if not planned:
        return planned
    alter, _ = _protocol()
    entries = [
        ([(k, v) for k, v in c.entity.items()],
         [(k, v, False) for k, v in c.set.items()] + [(k, 0.0, True) for k in c.removed])
        for c in planned
    ]  # fmt: skip
    resp = _run(conn, alter(entries), timeout_s)
    for code, message, entity in resp.entries:
        if code:
            raise KafkaError(f"could not set the client quotas of {dict(entity)}: error "
                             f"{code} {message or ''}".rstrip())  # fmt: skip
    return planned


def describe_quotas(conn: Connection, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every client quota of the cluster: ``[{"entity": {...}, "values": {...}}]``."""
    _, describe = _protocol()
    resp = _run(conn, describe([], False), timeout_s)
    if resp.error_code:
        raise KafkaError(f"could not describe the client quotas: error {resp.error_code} "
                         f"{resp.error_message or ''}".rstrip())  # fmt: skip
    return [{"entity": dict(entity), "values": dict(values)} for entity, values in resp.entries]


__all__ = ["QuotaChange", "apply_quotas", "changes", "describe_quotas"]
