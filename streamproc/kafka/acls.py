"""Creates and deletes the ACLs of an :mod:`streamproc.aclplan` plan with the admin API
(the principal that runs this needs Alter on the cluster: a super user)."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from streamproc.aclplan import AclEntry
from streamproc.errors import KafkaError
from streamproc.kafka.admin import Admin
from streamproc.kafka.configuration import Connection


def _binding(e: AclEntry) -> AclBinding:
    return AclBinding(ResourceType[e.resource_type], e.name, ResourcePatternType[e.pattern_type],
                      e.principal, e.host, AclOperation[e.operation],
                      AclPermissionType.ALLOW)  # fmt: skip


def _filter(e: AclEntry) -> AclBindingFilter:
    return AclBindingFilter(ResourceType[e.resource_type], e.name,
                            ResourcePatternType[e.pattern_type], e.principal, e.host,
                            AclOperation[e.operation], AclPermissionType.ALLOW)  # fmt: skip


def create_acls(conn: Connection, entries: Iterable[AclEntry], timeout_s: float = 30.0) -> int:
    """Create every entry (creating one that exists is a no-op); the number created."""
    entries = list(entries)
    if not entries:
        return 0
    client = Admin(conn).client
    futures = client.create_acls([_binding(e) for e in entries], request_timeout=timeout_s)
    for binding, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            raise KafkaError(f"could not create the ACL {binding}: {exc}") from exc
    return len(entries)


def delete_acls(conn: Connection, entries: Iterable[AclEntry], timeout_s: float = 30.0) -> int:
    """Delete exactly these entries; the number of ACLs the broker deleted."""
    entries = list(entries)
    if not entries:
        return 0
    client = Admin(conn).client
    futures = client.delete_acls([_filter(e) for e in entries], request_timeout=timeout_s)
    n = 0
    for filt, fut in futures.items():
        try:
            n += len(fut.result(timeout=timeout_s))
        except KafkaException as exc:
            raise KafkaError(f"could not delete the ACL {filt}: {exc}") from exc
    return n


__all__ = ["create_acls", "delete_acls"]
