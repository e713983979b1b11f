"""Decode a batch of Confluent-framed Avro payloads into a float32 feature matrix.

:class:`BatchDecoder` checks each payload in a fixed order, and the first failing check
decides its :class:`~streamproc.types.ReasonCode`:

1. NULL_VALUE (payload is None), OVERSIZE (longer than ``max_message_bytes``),
   TRUNCATED (empty), BAD_MAGIC, TRUNCATED (shorter than the 5-byte header);
2. UNKNOWN_SCHEMA (the registry has no such id), INCOMPATIBLE_SCHEMA (the writer schema
   cannot be resolved to the reader schema; checked once per writer id);
3. while reading the body in stream order: TRUNCATED (ended early), CORRUPT (not Avro of the
   writer schema), INCOMPATIBLE_SCHEMA (a writer union branch the reader cannot hold),
   UNKNOWN_ENUM (a symbol the reader enum lacks); then TRAILING_BYTES;
4. per feature, in spec order: MISSING_FEATURE, NAN_FEATURE, OUT_OF_RANGE, UNKNOWN_ENUM.

A registry outage raises :class:`~streamproc.errors.RegistryUnavailableError` out of
:meth:`BatchDecoder.decode`, before any event is decoded: its ``schema_ids`` are the ids the
registry did not give, its ``rows`` the events that need them. Ids cached already never ask
the registry, so the caller can decode the other events at once (the runner does, up to the
first waiting event of each partition) and retry the waiting ones; never a dead letter.

Only the reader fields the model uses (features, id and time fields) take part in schema
resolution (:func:`~streamproc.codecs.resolve.project_reader`): a producer may drop or
change a field the model does not read.

Two paths give the same results. The *reference* path reads each body with fastavro
(writer and reader schema) and maps the record to columns in Python. The *compiled* path
(default) plans a small instruction table per writer schema id
(:mod:`~streamproc.codecs.program`) and runs the whole batch through one numba interpreter
(:mod:`~streamproc.codecs.kernel`), compiled once per machine and cached; given a
:class:`~streamproc.codecs.kernel_cache.Specialiser`, each writer schema's program also gets
a kernel of its own, which takes over once compiled. Recursive writer schemas fall back to
fastavro (counted in :attr:`BatchDecoder.fallbacks`, reported to the sensor and logged).
The compiled path follows fastavro's reading rules (varint overflow, negative enum/union
indexes), so verdicts agree event by event; the reference reads through a strict stream
where fastavro's lenient skipping could otherwise accept a cut payload (see
``resolve.needs_strict_stream``).

>>> import io, fastavro
>>> from streamproc.codecs.source import DictSchemaSource
>>> from streamproc.codecs.wire import frame
>>> from streamproc.models.spec import ModelSpec
>>> schema = {"type": "record", "name": "T", "fields": [
...     {"name": "event_id", "type": "string"},
...     {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
...     {"name": "amount", "type": "double"}]}
>>> spec = ModelSpec.model_validate(
...     {"name": "m", "version": "1.0.0", "inputs": [{"field": "amount", "min": 0}]})
>>> dec = BatchDecoder(spec, schema, DictSchemaSource({1: schema}))
>>> buf = io.BytesIO()
>>> fastavro.schemaless_writer(buf, schema, {"event_id": "e1", "event_time": 5, "amount": 2.5})
>>> batch = dec.decode([frame(1, buf.getvalue()), b"\\x01junk", None])
>>> batch.features[0].tolist(), batch.event_ids, batch.errors.tolist()
([2.5], ['e1', '', ''], [0, 1, 13])
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
from fastavro import _read_py
from fastavro import schemaless_reader as _fast_reader

from streamproc.codecs import compiled as native
from streamproc.codecs import kernel
from streamproc.codecs import tree as avro_tree
from streamproc.codecs.features import (
    FeaturePlan,
    extract_row,
    non_null_branches,
    plan_features,
    resolve_path,
)
from streamproc.codecs.kernel_cache import Specialiser
from streamproc.codecs.program import Unsupported, build_program
from streamproc.codecs.resolve import incompatibility, needs_strict_stream, project_reader
from streamproc.codecs.source import SchemaSource
from streamproc.codecs.wire import HEADER_SIZE, classify_read_error, header_detail, read_headers
from streamproc.errors import ModelError, RegistryUnavailableError
from streamproc.models.spec import ModelSpec
from streamproc.telemetry.sensor import Sensor
from streamproc.types import DecodedBatch, JoinedIds, ReasonCode

log = logging.getLogger(__name__)

_MICROS = ("timestamp-micros", "local-timestamp-micros")


@dataclass
class WriterEntry:
    """What the decoder knows about one writer schema id (cached)."""

    schema_id: int
    verdict: ReasonCode  # OK, UNKNOWN_SCHEMA or INCOMPATIBLE_SCHEMA
    detail: str = ""
    tree: avro_tree.Node | None = None
    fast_schema: Any = None  # fastavro's parsed writer schema, logical types stripped
    pure_python: bool = False  # recursive schemas: fastavro's Python reader (bounded stack)
    strict_io: bool = False  # read through _StrictIO (see needs_strict_stream)
    expires: float = float("inf")  # unknown ids are looked up again after a while
    extra: dict[str, Any] = field(default_factory=dict)  # compiled-path state


class _StrictIO(io.BytesIO):
    """A stream whose short or negative reads raise EOFError (see needs_strict_stream)."""

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size < 0:
            raise EOFError(f"Expected {size} bytes")  # a negative length: CORRUPT
        data = super().read(size)
        if size is not None and size != len(data):
            raise EOFError(f"Expected {size} bytes, read {len(data)}")
        return data


class BatchDecoder:
    """Turns batches of framed payloads into :class:`~streamproc.types.DecodedBatch`.

    ``compiled=True`` (default) uses the compiled decoder for writer schemas it supports and
    fastavro for the others (counted in :attr:`fallbacks`); ``compiled=False`` forces the
    fastavro reference path. Both give identical results.
    """

    NEGATIVE_TTL_S = 30.0  # an unknown id is looked up again after this long
    MAX_ENTRIES = 4096  # beyond this, expired unknown ids are dropped

    def __init__(
        self,
        spec: ModelSpec,
        reader_schema: dict[str, Any],
        source: SchemaSource,
        max_message_bytes: int = 1_000_000,
        compiled: bool = True,
        specialiser: Specialiser | None = None,
        sensor: Sensor | None = None,
    ) -> None:
        self.spec = spec
        self.source = source
        self.max_message_bytes = max_message_bytes
        self.compiled = compiled
        self.fallbacks = 0  # writer schema ids decoded by fastavro although compiled=True
        # Specialised kernels per writer schema (compiled path only); None: interpret.
        self.specialiser = specialiser if compiled else None
        self.sensor = sensor or Sensor()  # fallbacks and kernels, per writer schema
        used = [f.field for f in spec.inputs] + [spec.id_field, spec.time_field]
        try:
            # Only the fields the model reads take part in resolution (see project_reader).
            projected = project_reader(reader_schema, used)
            self.reader = avro_tree.build(projected)
            self._reader_fast = avro_tree.parse(avro_tree.strip_logical(projected))
        except Exception as exc:
            raise ModelError(f"invalid reader schema: {exc}") from exc
        if self.reader.kind != "record":
            raise ModelError("the reader schema must be a record")
        self.plans: list[FeaturePlan] = plan_features(spec, self.reader)
        self.n_features = spec.n_features
        self.id_path = self._special(spec.id_field, {"string", "bytes"})
        self.time_path = self._special(spec.time_field, {"int", "long"})
        self._time_micros = False
        if self.time_path is not None:
            leaf = avro_tree.Node("null")
            found = _leaf(self.reader, self.time_path)
            if found is not None:
                leaf = found
            self._time_micros = any(b.logical in _MICROS for b in non_null_branches(leaf))
        self._entries: dict[int, WriterEntry] = {}
        # Compile (or load from numba's cache) the kernels now, not on the first batch.
        self.compile_seconds = native.warm_up() if compiled else 0.0

    def _special(self, dotted: str, kinds: set[str]) -> tuple[str, ...] | None:
        found = resolve_path(self.reader, dotted)
        if found is None:
            return None
        path, leaf = found
        if not {b.kind for b in non_null_branches(leaf)} <= kinds:
            raise ModelError(f"field {dotted!r} must be one of {sorted(kinds)}")
        return path

    # -- writer schemas ------------------------------------------------------------------

    def writer(self, schema_id: int) -> WriterEntry:
        """The cached entry for a writer id; looks it up (may raise RegistryUnavailableError)."""
        entry = self._entries.get(schema_id)
        if entry is not None and entry.expires > time.monotonic():
            return entry
        raw = self.source.schema(schema_id)
        if raw is None:
            if len(self._entries) > self.MAX_ENTRIES:  # ids from garbage payloads
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v.expires > now}
            entry = WriterEntry(
                schema_id,
                ReasonCode.UNKNOWN_SCHEMA,
                f"schema id {schema_id} is not in the registry",
                expires=time.monotonic() + self.NEGATIVE_TTL_S,
            )
        else:
            entry = self._prepare(schema_id, raw)
        self._entries[schema_id] = entry
        return entry

    def _prepare(self, schema_id: int, raw: dict[str, Any]) -> WriterEntry:
        bad = ReasonCode.INCOMPATIBLE_SCHEMA
        try:
            writer_tree = avro_tree.build(raw)
            fast = avro_tree.parse(avro_tree.strip_logical(raw))
        except Exception as exc:
            return WriterEntry(schema_id, bad, f"writer schema {schema_id} is invalid: {exc}")
        why = incompatibility(writer_tree, self.reader)
        if why is None and avro_tree.has_zero_width_items(writer_tree):
            why = "arrays of items that take no bytes are not supported"
        if why is not None:
            log.info("writer schema %d is incompatible: %s", schema_id, why)
            return WriterEntry(schema_id, bad, f"writer schema {schema_id}: {why}")
        entry = WriterEntry(
            schema_id,
            ReasonCode.OK,
            tree=writer_tree,
            fast_schema=fast,
            pure_python=avro_tree.is_recursive(writer_tree),
        )
        entry.strict_io = entry.pure_python or needs_strict_stream(writer_tree, self.reader)
        if self.compiled:
            self._prepare_compiled(entry)
        return entry

    def _prepare_compiled(self, entry: WriterEntry) -> None:
        """Plan the compiled program for a writer schema, or count a fastavro fallback."""
        assert entry.tree is not None
        try:
            prog = build_program(entry.tree, self.reader, self.plans, self.id_path, self.time_path)
        except Unsupported as exc:
            self.fallbacks += 1
            self.sensor.on_decoder_fallback(entry.schema_id)
            log.warning("writer schema %d decoded by fastavro: %s", entry.schema_id, exc)
            return
        entry.extra["program"] = prog
        if self.specialiser is not None:
            entry.extra["kernel_key"] = self.specialiser.submit(prog)

    def prepare(self, schema_id: int, timeout_s: float | None = None) -> bool:
        """Look up a writer schema now and wait for its specialised kernel (at start-up, for
        the schema a processor expects, so its first batch is not interpreted); whether
        that kernel is ready."""
        entry = self.writer(schema_id)
        key = entry.extra.get("kernel_key")
        if self.specialiser is None or key is None:
            return False
        return self.specialiser.wait(key, timeout_s) is not None

    def _kernel(self, entry: WriterEntry) -> Callable[..., None]:
        """The specialised kernel of a writer schema once compiled, else the interpreter."""
        fn = entry.extra.get("kernel")
        if fn is None:
            assert self.specialiser is not None
            key = entry.extra.get("kernel_key")
            fn = self.specialiser.ready(key)
            if fn is None:
                return kernel.decode
            entry.extra["kernel"] = fn
            assert key is not None
            self.sensor.on_decoder_kernel(entry.schema_id, self.specialiser.compile_seconds[key])
        return fn  # type: ignore[no-any-return]

    # -- decoding ------------------------------------------------------------------------

    def decode(self, payloads: Sequence[bytes | None]) -> DecodedBatch:
        """One row per payload, in input order (see the module docs for the checks)."""
        if self.compiled:
            return self._decode_compiled(payloads)
        n = len(payloads)
        ids, errors = read_headers(payloads, self.max_message_bytes)
        out = _Out.empty(n, self.n_features, errors)
        for i in np.flatnonzero(errors).tolist():
            out.details[i] = header_detail(
                ReasonCode(int(errors[i])), payloads[i], self.max_message_bytes
            )
        for entry, rows in self._groups(ids, errors, out):
            self._decode_reference(entry, payloads, rows.tolist(), out)
        return out.batch(ids)

    def _groups(
        self, ids: npt.NDArray[np.int32], errors: npt.NDArray[np.uint8], out: _Out
    ) -> list[tuple[WriterEntry, npt.NDArray[np.int64]]]:
        """Framed events grouped by writer schema; events of unusable schemas get its verdict.

        Every id is looked up before anything is decoded, so a registry outage raises before
        any work is done (:func:`_raise_unavailable`)."""
        ok = np.flatnonzero(errors == 0)
        if ok.size == 0:
            return []
        sids = ids[ok]
        first = int(sids[0])
        if (sids == first).all():
            pairs = [(first, ok)]
        else:
            pairs = [(int(sid), ok[sids == sid]) for sid in np.unique(sids).tolist()]
        entries = []
        waiting: list[tuple[int, npt.NDArray[np.intp]]] = []
        outage: RegistryUnavailableError | None = None
        for sid, rows in pairs:
            try:
                entries.append((self.writer(sid), rows))
            except RegistryUnavailableError as exc:
                waiting.append((sid, rows))
                outage = exc
        if outage is not None:
            _raise_unavailable(waiting, outage)
        usable = []
        for entry, rows in entries:
            if entry.verdict != ReasonCode.OK:
                errors[rows] = entry.verdict
                for i in rows.tolist():
                    out.details[i] = entry.detail
            else:
                usable.append((entry, rows.astype(np.int64)))
        return usable

    def _decode_compiled(self, payloads: Sequence[bytes | None]) -> DecodedBatch:
        n = len(payloads)
        packed = native.pack(payloads, self.max_message_bytes)
        ids = np.full(n, -1, dtype=np.int32)
        errors = np.zeros(n, dtype=np.uint8)
        if packed.schema_id is None:
            kernel.read_headers(
                packed.buf, packed.starts, packed.ends, packed.present, self.max_message_bytes,
                ids, errors,
            )  # fmt: skip
        else:  # one known header for all (Avro container records): only the size to check
            ids[:] = packed.schema_id
            errors[packed.present == native.TOO_BIG] = ReasonCode.OVERSIZE
        out = _Out.empty(n, self.n_features, errors)
        bad = np.flatnonzero(errors)
        for i in bad.tolist():
            out.details[i] = header_detail(
                ReasonCode(int(errors[i])), payloads[i], self.max_message_bytes
            )
        kout: native.Outputs | None = None
        kernel_rows: list[npt.NDArray[np.int64]] = []
        fallback = False
        for entry, rows in self._groups(ids, errors, out):
            prog = entry.extra.get("program")
            if prog is None:
                self._decode_reference(entry, payloads, rows.tolist(), out)
                fallback = True
                continue
            if kout is None:
                kout = native.Outputs.empty(n)
            fn = kernel.decode if self.specialiser is None else self._kernel(entry)
            native.run(prog, packed, rows, out.features, errors, out.times, kout, fn)
            kernel_rows.append(rows)
            if self._time_micros:
                out.times[rows] //= 1000
            for i in rows[errors[rows] != 0].tolist():
                out.details[i] = native.detail(int(errors[i]), prog, self.plans, packed, i, kout)
        if kout is not None:
            whole = not fallback and sum(r.size for r in kernel_rows) == n
            pooled = np.flatnonzero((kout.id_off < 0) & (kout.id_len > 0))
            if whole and not pooled.size:  # the common case: the ids stay one buffer
                out.joined_ids = native.joined_ids(packed, kout)
                if out.joined_ids is not None:
                    return out.batch(ids)
            native.event_ids(
                packed, kout, out.event_ids, None if whole else np.concatenate(kernel_rows)
            )
            for i in pooled.tolist():  # a default id from the reader schema
                prog = self.writer(int(ids[i])).extra["program"]
                o, ln = -1 - int(kout.id_off[i]), int(kout.id_len[i])
                out.event_ids[i] = prog.pool[o : o + ln].tobytes().decode("utf-8", "replace")
        return out.batch(ids)

    def _decode_reference(
        self, entry: WriterEntry, payloads: Sequence[bytes | None], rows: list[int], out: _Out
    ) -> None:
        read = _read_py.schemaless_reader if entry.pure_python else _fast_reader
        writer, reader = entry.fast_schema, self._reader_fast
        plans = self.plans
        errors, details = out.errors, out.details
        for i in rows:
            payload = payloads[i]
            assert payload is not None
            bio = _StrictIO(payload) if entry.strict_io else io.BytesIO(payload)
            bio.seek(HEADER_SIZE)
            try:
                record: dict[str, Any] = read(bio, writer, reader)  # type: ignore[assignment]
            except Exception as exc:
                why, detail = classify_read_error(exc)
                errors[i] = why
                details[i] = detail
                continue
            left = len(payload) - bio.tell()
            if left:
                errors[i] = ReasonCode.TRAILING_BYTES
                details[i] = f"{left} bytes left after the record"
                continue
            if self.id_path is not None:
                eid = _get(record, self.id_path)
                if isinstance(eid, bytes):
                    eid = eid.decode("utf-8", "replace")
                out.event_ids[i] = eid or ""
            if self.time_path is not None:
                t = _get(record, self.time_path)
                if t is not None:
                    out.times[i] = t // 1000 if self._time_micros else t
            row, code, detail = extract_row(record, plans)
            if code:
                errors[i] = code
                details[i] = detail
                continue
            out.features[i] = row


@dataclass
class _Out:
    """The arrays a decode call fills."""

    features: npt.NDArray[np.float32]
    event_ids: list[str]
    times: npt.NDArray[np.int64]
    errors: npt.NDArray[np.uint8]
    details: list[str]
    joined_ids: JoinedIds | None = None  # set: the event ids, instead of event_ids

    @classmethod
    def empty(cls, n: int, n_features: int, errors: npt.NDArray[np.uint8]) -> _Out:
        return cls(
            features=np.zeros((n, n_features), dtype=np.float32),
            event_ids=[""] * n,
            times=np.zeros(n, dtype=np.int64),
            errors=errors,
            details=[""] * n,
        )

    def batch(self, ids: npt.NDArray[np.int32]) -> DecodedBatch:
        return DecodedBatch(
            features=self.features,
            event_ids=self.event_ids if self.joined_ids is None else self.joined_ids,
            event_time_ms=self.times,
            errors=self.errors,
            details=self.details,
            schema_ids=ids,
        )


def _get(record: Any, path: tuple[str, ...]) -> Any:
    v = record
    for name in path:
        if v is None:
            return None
        v = v[name]
    return v


def _leaf(reader: avro_tree.Node, path: tuple[str, ...]) -> avro_tree.Node | None:
    found = resolve_path(reader, ".".join(path))
    return None if found is None else found[1]


def _raise_unavailable(
    waiting: list[tuple[int, npt.NDArray[np.intp]]], last: RegistryUnavailableError
) -> NoReturn:
    """The registry did not give these writer ids: the error names them and the rows that
    need them, so that the caller can go on with the other rows (the module docs)."""
    sids = tuple(sid for sid, _ in waiting)
    rows = np.sort(np.concatenate([r for _, r in waiting])).tolist()
    raise RegistryUnavailableError(
        f"schema ids {list(sids)} not looked up, {len(rows)} events wait: {last}",
        schema_ids=sids,
        rows=rows,
    ) from last
