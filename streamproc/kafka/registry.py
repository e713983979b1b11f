"""The schema registry through confluent-kafka's SchemaRegistryClient.

A lookup of a writer schema id (:meth:`Registry.schema`) sits on the processing loop, so the
project bounds it, not the client: the client retries a failed request ``max.retries`` times
with jittered waits of up to ``retries.max.wait.ms``, each request bounded by ``timeout``
alone, which for a registry that accepts connections and never answers adds up to several
timeouts and waits. Lookups go through a client of their own with no inner retries, run in a
background thread, and the caller waits for one at most ``timeout`` seconds (the first
lookup of an outage) and not at all while the registry is known to be failing: then it gets
:class:`~streamproc.errors.RegistryUnavailableError` at once, and the lookup goes on in the
background, so that a retry after the caller's backoff finds its answer. The caller (the
runner) owns the retries and their backoff.

Start-up calls (registering schemas, compatibility) keep the client's own retries: there,
waiting out a short blip beats failing to start.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError as CkRegistryError

from streamproc.errors import RegistryUnavailableError, SchemaRegistryError

log = logging.getLogger(__name__)

_NOT_FOUND = {40403, 40401, 404}


class _Lookup:
    """One schema id's lookup, running in a daemon thread."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: dict[str, Any] | None = None
        self.error: SchemaRegistryError | None = None


class Registry:
    """Fetch writer schemas by id (a :class:`~streamproc.codecs.source.SchemaSource`) and
    register ours. The client caches fetched schemas; ids are immutable.

    ``conf`` is the client's configuration (:func:`~streamproc.kafka.configuration.
    registry_config`) or a URL; its ``timeout`` (seconds) bounds one lookup of an id
    (none: wait for the answer).
    """

    def __init__(self, conf: dict[str, Any] | str) -> None:
        conf = conf if isinstance(conf, dict) else {"url": conf}
        self.client = SchemaRegistryClient(conf)
        # One request per lookup: the runner retries with its own backoff (module docs).
        self._lookup_client = SchemaRegistryClient({**conf, "max.retries": 0})
        self.url = str(conf.get("url", ""))
        user = str(conf.get("basic.auth.user.info", "")).partition(":")[0]
        self._who = f"user {user}" if user else "an anonymous client"
        timeout = conf.get("timeout")
        self.timeout_s: float | None = None if timeout is None else float(timeout)
        self._lock = threading.Lock()
        self._lookups: dict[int, _Lookup] = {}
        self._failing = False  # the last lookup found the registry unavailable

    def _refused(self, exc: CkRegistryError) -> SchemaRegistryError | None:
        """A refused login (HTTP 401, 403) as one line naming the user and the fix: a
        client that would retry it only waits for the same answer."""
        if exc.http_status_code not in (401, 403):
            return None
        return SchemaRegistryError(
            f"schema registry at {self.url} refused {self._who} (HTTP {exc.http_status_code}"
            "); check the registry username and password "
            "(schema.registry.basic.auth.user.info in --kafka-config, registry.username and "
            "$STREAMPROC_SCHEMA_REGISTRY_PASSWORD)"
        )

    def schema(self, schema_id: int) -> dict[str, Any] | None:
        """The writer schema of an id; None when the registry has no (Avro) schema of it.

        Raises :class:`RegistryUnavailableError` after at most ``timeout`` seconds, and at
        once while the registry is failing (the lookup goes on in the background)."""
        with self._lock:
            job = self._lookups.get(schema_id)
            if job is not None and job.done.is_set() and _transient(job.error):
                job = None  # a finished failed lookup is old news: ask again
            fresh = job is None
            if job is None:
                job = self._lookups[schema_id] = _Lookup()
                threading.Thread(target=self._run, args=(schema_id, job), daemon=True,
                                 name=f"registry-lookup-{schema_id}").start()  # fmt: skip
            wait = self.timeout_s if fresh and not self._failing else 0.0
        if not job.done.wait(wait):
            if not self._failing:
                log.warning("schema registry did not answer for schema id %d within %ss; "
                            "retrying in the background", schema_id, self.timeout_s)  # fmt: skip
            self._failing = True
            why = (
                f"did not answer for schema id {schema_id} within {self.timeout_s}s"
                if wait
                else f"is failing; the lookup of schema id {schema_id} goes on in the background"
            )
            raise RegistryUnavailableError(f"schema registry {why}", schema_ids=(schema_id,))
        with self._lock:
            if self._lookups.get(schema_id) is job:
                del self._lookups[schema_id]
        if _transient(job.error):
            if not self._failing:
                log.warning("schema registry unavailable for schema id %d: %s",
                            schema_id, job.error)  # fmt: skip
            self._failing = True
        elif self._failing:
            log.info("schema registry answers again (schema id %d)", schema_id)
            self._failing = False
        if job.error is not None:
            raise job.error
        return job.result

    def _run(self, schema_id: int, job: _Lookup) -> None:
        try:
            job.result = self._fetch(schema_id)
        except SchemaRegistryError as exc:
            job.error = exc
        except BaseException as exc:  # a failure in the thread must reach the caller
            job.error = RegistryUnavailableError(f"registry lookup of id {schema_id}: {exc}")
        finally:
            job.done.set()

    def _fetch(self, schema_id: int) -> dict[str, Any] | None:
        try:
            s = self._lookup_client.get_schema(schema_id)
        except CkRegistryError as exc:
            if exc.error_code in _NOT_FOUND or exc.http_status_code == 404:
                return None
            if refused := self._refused(exc):
                raise refused from exc
            if exc.http_status_code and 400 <= exc.http_status_code < 500:
                raise SchemaRegistryError(f"registry refused schema id {schema_id}: {exc}") from exc
            raise RegistryUnavailableError(
                f"registry error for id {schema_id}: {exc}", schema_ids=(schema_id,)
            ) from exc
        except Exception as exc:  # connection refused, timeouts: httpx errors
            raise RegistryUnavailableError(
                f"schema registry unreachable fetching schema id {schema_id}: "
                f"{type(exc).__name__}: {exc}",
                schema_ids=(schema_id,),
            ) from exc
        if s.schema_type not in (None, "AVRO"):
            return None
        parsed: dict[str, Any] = json.loads(s.schema_str or "null")
        return parsed

    def latest_id(self, subject: str) -> int | None:
        """The id of the subject's latest version; None when the subject has none. One
        request, bounded by ``timeout`` (a start-up warm-up that may be skipped)."""
        try:
            # get_version("latest") asks the registry each time; get_latest_version would
            # answer from a cache that never expires by default.
            sid = self._lookup_client.get_version(subject, "latest").schema_id
        except CkRegistryError as exc:
            if exc.error_code in _NOT_FOUND or exc.http_status_code == 404:
                return None
            raise self._refused(exc) or SchemaRegistryError(
                f"latest version of {subject}: {exc}"
            ) from exc
        except Exception as exc:
            raise RegistryUnavailableError(f"schema registry unreachable: {exc}") from exc
        return None if sid is None else int(sid)

    def register(self, subject: str, schema_text: str) -> int:
        try:
            return int(self.client.register_schema(subject, Schema(schema_text, "AVRO")))
        except CkRegistryError as exc:
            raise self._refused(exc) or SchemaRegistryError(
                f"registering {subject} failed: {exc}"
            ) from exc
        except Exception as exc:
            raise RegistryUnavailableError(f"schema registry unreachable: {exc}") from exc

    def set_compatibility(self, subject: str, level: str) -> None:
        try:
            self.client.set_compatibility(subject, level)
        except CkRegistryError as exc:
            raise self._refused(exc) or SchemaRegistryError(
                f"setting {level} on {subject} failed: {exc}"
            ) from exc


def _transient(error: SchemaRegistryError | None) -> bool:
    return isinstance(error, RegistryUnavailableError)
