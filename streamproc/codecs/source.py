"""Where a decoder gets writer schemas from: a :class:`SchemaSource`.

The registry-backed source lives in ``streamproc.kafka.registry``; :class:`DictSchemaSource`
serves tests and benchmarks from memory.

>>> src = DictSchemaSource({7: {"type": "record", "name": "R", "fields": []}})
>>> src.schema(7)["name"], src.schema(8)
('R', None)
>>> src.schema(7) is src.schema(7)
False
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from streamproc.errors import RegistryUnavailableError


@runtime_checkable
class SchemaSource(Protocol):
    """Look up a writer schema by its registry id.

    Returns the parsed schema JSON (a dict for record schemas), ``None`` when the registry
    has no schema with that id, and raises
    :class:`~streamproc.errors.RegistryUnavailableError` when the registry cannot be reached
    (the caller retries; such events never become dead letters).
    """

    def schema(self, schema_id: int) -> dict[str, Any] | None: ...


class DictSchemaSource:
    """An in-memory registry. Values may be dicts or JSON text; lookups return copies.

    ``unavailable`` simulates an outage: while it is true every lookup raises
    :class:`RegistryUnavailableError`. ``lookups`` counts calls (to test caching).
    """

    def __init__(self, schemas: Mapping[int, dict[str, Any] | str] | None = None) -> None:
        self._schemas: dict[int, dict[str, Any]] = {}
        self.unavailable = False
        self.lookups = 0
        for schema_id, schema in (schemas or {}).items():
            self.register(schema_id, schema)

    def register(self, schema_id: int, schema: dict[str, Any] | str) -> None:
        self._schemas[schema_id] = json.loads(schema) if isinstance(schema, str) else schema

    def schema(self, schema_id: int) -> dict[str, Any] | None:
        self.lookups += 1
        if self.unavailable:
            raise RegistryUnavailableError(f"registry unavailable (looking up id {schema_id})")
        found = self._schemas.get(schema_id)
        return None if found is None else copy.deepcopy(found)
