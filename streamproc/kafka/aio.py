"""Asyncio clients on aiokafka: the same records as :mod:`streamproc.kafka.clients`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from streamproc.errors import DependencyMissingError, KafkaError
from streamproc.kafka.admin import check_secured
from streamproc.kafka.clients import FramedDecoder, RegistryConnection, make_registry
from streamproc.kafka.configuration import (
    Connection,
    aiokafka_config,
    kafka_settings,
    principal,
)


class AsyncRecordConsumer:
    """``async for msg, record in AsyncRecordConsumer(...)``: decoded records, read_committed.

    ``where`` filters records (e.g. ``lambda r: r["severity"] == "CRITICAL"``).
    """

    def __init__(
        self,
        bootstrap: Connection,
        registry_url: RegistryConnection,
        topic: str,
        group_id: str | None = None,
        from_beginning: bool = True,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        try:
            from aiokafka import AIOKafkaConsumer
        except ImportError as exc:  # pragma: no cover - aiokafka is in the dev extra
            raise DependencyMissingError("aiokafka", "aio") from exc
        self.decoder = FramedDecoder(make_registry(registry_url))
        self.where = where
        self._conn = bootstrap
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            topic,
            **aiokafka_config(bootstrap),
            group_id=group_id or f"streamproc-aio-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest" if from_beginning else "latest",
            isolation_level="read_committed",
            enable_auto_commit=group_id is not None,
        )

    async def start(self) -> None:
        try:
            await self._consumer.start()
        except Exception as exc:
            self._raise_denied(exc)
            # aiokafka says only that it could not bootstrap (the reason goes to its log):
            # ask the same profile once more with the admin client, which names the
            # principal and the fix for a refused login or an untrusted certificate.
            await asyncio.to_thread(check_secured, self._conn, 10.0)
            raise

    def _raise_denied(self, exc: Exception) -> None:
        """A missing ACL (aiokafka's *AuthorizationFailedError) as one line naming the
        principal, the topic and the fix; anything else is left to the caller."""
        if "AuthorizationFailed" not in type(exc).__name__:
            return
        who = principal(kafka_settings(self._conn)) or "this client"
        raise KafkaError(f"{who} may not read {self.topic}: {type(exc).__name__}; grant it "
                         "Read on the topic and its consumer group (`streamproc acls plan "
                         "--role consumer|alerts`)", topic=self.topic) from exc  # fmt: skip

    async def stop(self) -> None:
        await self._consumer.stop()

    async def __aenter__(self) -> AsyncRecordConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _decode(self, value: bytes) -> dict[str, Any]:
        if self.decoder.cached(value):
            return self.decoder.decode(value)[1]
        # An unseen schema id means a blocking registry call: make it off the event loop.
        _, rec = await asyncio.to_thread(self.decoder.decode, value)
        return rec

    async def __aiter__(self) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=500)
            except Exception as exc:
                self._raise_denied(exc)
                raise
            for msgs in batches.values():
                for m in msgs:
                    if m.value is None:
                        continue
                    rec = await self._decode(m.value)
                    if self.where is None or self.where(rec):
                        yield m, rec
