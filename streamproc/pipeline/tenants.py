"""Events per tenant: the processor counts each consumed event under the value of the
pipeline's ``tenant_field`` (``streamproc_tenant_events_total{tenant=...}``).

The batch decoder reads the model's numeric features only, so the tenant is read apart from
it: each payload's Avro body is read against a reader schema that holds the tenant field
alone (the others are skipped by schema resolution). That costs a pass over every payload,
paid only by pipelines that name a tenant field.
"""

from __future__ import annotations

import io
import logging
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import fastavro
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from streamproc.errors import StreamprocError
from streamproc.types import BatchHandlerLike, Outputs, OutRecord, RawBatch

log = logging.getLogger(__name__)
UNKNOWN = "unknown"  # no tenant could be read: a malformed payload, a schema without it
OTHER = "other"  # tenants past ``max_tenants``: the label's values stay bounded


class TenantCounter:
    """Tenant of each payload (Confluent wire format: magic byte, schema id, Avro body)."""

    def __init__(
        self,
        field: str,
        writer_schema: Callable[[int], dict[str, Any] | None],
        max_tenants: int = 1000,
    ) -> None:
        self.field = field
        self._writer_schema = writer_schema
        self._readers: dict[int, tuple[Any, Any] | None] = {}
        self.max_tenants = max_tenants
        self._seen: set[str] = set()

    def _reader(self, schema_id: int) -> tuple[Any, Any] | None:
        if schema_id not in self._readers:
            writer = self._writer_schema(schema_id)
            reader = None
            if writer is not None and writer.get("type") == "record":
                fields = [f for f in writer.get("fields", []) if f.get("name") == self.field]
                if fields:
                    own = {k: v for k, v in writer.items() if k != "fields"}
                    reader = (fastavro.parse_schema(writer),
                              fastavro.parse_schema({**own, "fields": fields}))  # fmt: skip
            self._readers[schema_id] = reader
        return self._readers[schema_id]

    def tenant(self, payload: bytes | None) -> str:
        if payload is None or len(payload) < 5 or payload[0] != 0:
            return UNKNOWN
        try:
            readers = self._reader(struct.unpack_from(">I", payload, 1)[0])
            if readers is None:
                return UNKNOWN
            record = fastavro.schemaless_reader(io.BytesIO(payload[5:]), *readers)
        except StreamprocError:  # the registry: the decoder retries the batch, not this
            return UNKNOWN
        except Exception:  # a malformed body: the batch decoder dead-letters it
            return UNKNOWN
        value = record.get(self.field) if isinstance(record, dict) else None
        if value is None:
            return UNKNOWN
        name = str(value)
        if name not in self._seen:
            if len(self._seen) >= self.max_tenants:
                return OTHER
            self._seen.add(name)
        return name

    def count(self, payloads: Sequence[bytes | None]) -> Counter[str]:
        return Counter(self.tenant(p) for p in payloads)


class TenantCountingHandler(BatchHandlerLike):
    """``inner`` with each finished batch's events counted per tenant into ``inc(tenant, n)``
    (after the batch is handled: a batch retried after a registry outage counts once)."""

    def __init__(
        self, inner: BatchHandlerLike, counter: TenantCounter, inc: Callable[[str, int], None]
    ) -> None:
        self.inner = inner
        self.counter = counter
        self.inc = inc

    @property
    def overlaps(self) -> bool:
        return self.inner.overlaps

    def _counted(self, raw: RawBatch, out: Outputs) -> Outputs:
        for tenant, n in self.counter.count(raw.values).items():
            self.inc(tenant, n)
        return out

    def __call__(self, raw: RawBatch) -> Outputs:
        return self._counted(raw, self.inner(raw))

    def start(self, raw: RawBatch) -> Any:
        return raw, self.inner.start(raw)

    def finish(self, started: Any) -> Outputs:
        raw, inner = started
        return self._counted(raw, self.inner.finish(inner))

    def pending(self) -> list[OutRecord]:
        return self.inner.pending()

    def assigned(self, partitions: list[int]) -> None:
        self.inner.assigned(partitions)  # a stateful handler restores their state

    def revoked(self, partitions: list[int]) -> None:
        self.inner.revoked(partitions)

    def defer_state(self) -> None:
        self.inner.defer_state()

    def state_records(self) -> list[OutRecord]:
        return self.inner.state_records()


def prometheus_counter(registry: CollectorRegistry, pipeline: str) -> Callable[[str, int], None]:
    """``inc(tenant, n)`` on ``streamproc_tenant_events_total{pipeline, tenant}``."""
    counter = PromCounter("streamproc_tenant_events", "Events consumed, by tenant",
                          ["pipeline", "tenant"], registry=registry)  # fmt: skip

    def inc(tenant: str, n: int) -> None:
        counter.labels(pipeline, tenant).inc(n)

    return inc
