"""The schema registry through confluent-kafka's SchemaRegistryClient."""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError as CkRegistryError

from streamproc.errors import RegistryUnavailableError, SchemaRegistryError

_NOT_FOUND = {40403, 40401, 404}


class Registry:
    """Fetch writer schemas by id (a :class:`~streamproc.codecs.source.SchemaSource`) and
    register ours. The client caches fetched schemas; ids are immutable.
    """

    def __init__(self, conf: dict[str, Any] | str) -> None:
        self.client = SchemaRegistryClient(conf if isinstance(conf, dict) else {"url": conf})

    def schema(self, schema_id: int) -> dict[str, Any] | None:
        try:
            s = self.client.get_schema(schema_id)
        except CkRegistryError as exc:
            if exc.error_code in _NOT_FOUND or exc.http_status_code == 404:
                return None
            if exc.http_status_code and 400 <= exc.http_status_code < 500:
                raise SchemaRegistryError(f"registry refused schema id {schema_id}: {exc}") from exc
            raise RegistryUnavailableError(f"registry error for id {schema_id}: {exc}") from exc
        except Exception as exc:  # connection refused, timeouts: requests/httpx errors
            raise RegistryUnavailableError(
                f"schema registry unreachable fetching id {schema_id}: {exc}"
            ) from exc
        if s.schema_type not in (None, "AVRO"):
            return None
        parsed: dict[str, Any] = json.loads(s.schema_str or "null")
        return parsed

    def latest_id(self, subject: str) -> int | None:
        """The id of the subject's latest version; None when the subject has none."""
        try:
            # get_version("latest") asks the registry each time; get_latest_version would
            # answer from a cache that never expires by default.
            sid = self.client.get_version(subject, "latest").schema_id
        except CkRegistryError as exc:
            if exc.error_code in _NOT_FOUND or exc.http_status_code == 404:
                return None
            raise SchemaRegistryError(f"latest version of {subject}: {exc}") from exc
        except Exception as exc:
            raise RegistryUnavailableError(f"schema registry unreachable: {exc}") from exc
        return None if sid is None else int(sid)

    def register(self, subject: str, schema_text: str) -> int:
        try:
            return int(self.client.register_schema(subject, Schema(schema_text, "AVRO")))
        except CkRegistryError as exc:
            raise SchemaRegistryError(f"registering {subject} failed: {exc}") from exc
        except Exception as exc:
            raise RegistryUnavailableError(f"schema registry unreachable: {exc}") from exc

    def set_compatibility(self, subject: str, level: str) -> None:
        try:
            self.client.set_compatibility(subject, level)
        except CkRegistryError as exc:
            raise SchemaRegistryError(f"setting {level} on {subject} failed: {exc}") from exc
