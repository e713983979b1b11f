"""The same windowed features offline: a training set from history (issue #27).

:func:`backfill_rows` takes events as the pipeline sees them (:class:`SourceEvent`: the
partition, the offset, the Kafka record key and the decoded record) and gives, per event,
its fields plus the value of every feature definition, computed by the store that
:func:`~streamproc.features.factory.open_store` opens, per partition and in offset order,
exactly as the pipeline does. The store is batch-invariant, so how the events are cut into
calls does not change a value.

What enters the state is what the pipeline scores:

* the key: the ``features.key`` fields of the record joined (:func:`record_key`, as the
  pipeline's repartitioning joins them), else the Kafka record key (a source without one,
  such as Avro container files, supplies the model's ``key_field`` as the key:
  :func:`avro_file_events`); an empty key is no key;
* the event time: the model's ``time_field`` (a long of ms, or the datetime fastavro reads
  for ``timestamp-millis``);
* an event without a key (``MISSING_KEY``) or an event time (``MISSING_EVENT_TIME``), one
  that could not be decoded (its reason from the source), and, with ``check_inputs`` (the
  default), one that the model's own input constraints reject (``MISSING_FEATURE``,
  ``NAN_FEATURE``, ``OUT_OF_RANGE``, ``UNKNOWN_ENUM``, as the decoder checks them) is a dead
  letter: counted, given no row and never added to the state;
* a value field that is null (or absent) reads as NaN (absent for that definition); a
  boolean as 0/1; every value is rounded to float32 first (:data:`VALUE_DTYPE`), as the
  pipeline's decoder reads it.

A late event (below the partition's watermark less the allowed lateness) still gets a row,
with the values of the state as it stood; it is counted and not added.

A range that starts after a partition's first event starts with the state empty unless the
events before it are given too, as a warm-up (``emit_from``): the pipeline's state held
them, so only then are the first rows' values the ones the pipeline computed.

>>> from streamproc.features.spec import FeaturesSpec
>>> spec = FeaturesSpec.model_validate({"definitions": [
...     {"name": "n_1m", "agg": "count", "window": {"size": "1m"}},
...     {"name": "avg_1m", "agg": "mean", "value": "x", "window": {"size": "1m"}}]})
>>> evs = [SourceEvent(0, i, b"a", {"event_time": t, "x": x})
...        for i, (t, x) in enumerate([(0, 1.0), (30_000, 3.0), (80_000, 5.0)])]
>>> report = BackfillReport()
>>> [(r["n_1m"], r["avg_1m"]) for r in backfill_rows(spec, evs, report=report)]
[(0.0, nan), (1.0, 1.0), (1.0, 3.0)]
>>> report.events_read, report.rows, report.late_events, dict(report.dead_letters)
(3, 3, 0, {})
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from streamproc.features.factory import open_store
from streamproc.features.spec import FeaturesSpec
from streamproc.models.spec import FeatureSpec, ModelSpec

__all__ = [
    "OFFSET_COLUMN",
    "PARTITION_COLUMN",
    "BackfillReport",
    "SourceEvent",
    "avro_file_events",
    "backfill_rows",
    "output_schema",
    "record_key",
    "write_avro",
    "write_csv",
]

PARTITION_COLUMN = "_partition"  # where each row's event came from (Avro files: 0)
OFFSET_COLUMN = "_offset"  # (Avro files: the record's position in the files, from 0)
# The pipeline's decoder reads the value fields into its float32 matrix, and the store gets
# them widened from there: the same rounding here, so that sums and means are the pipeline's
# to the bit (a double such as 297.54 is 297.53997802734375 after it).
VALUE_DTYPE = np.float32
KEY_SEPARATOR = "|"  # between the fields of a composite key, as the pipeline joins them


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """One input event: ``record`` None means it could not be decoded (``reason`` says
    why, a :class:`~streamproc.types.ReasonCode` name)."""

    partition: int
    offset: int
    key: bytes | None
    record: dict[str, Any] | None
    reason: str | None = None


@dataclass
class BackfillReport:
    """What a backfill read and wrote; ``partitions``: partition -> [first offset, last
    offset, events read]."""

    events_read: int = 0  # in the range asked for (warm-up events apart)
    warmup_events: int = 0
    rows: int = 0
    late_events: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    partitions: dict[int, list[int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "events_read": self.events_read,
            "warmup_events": self.warmup_events,
            "rows_written": self.rows,
            "late_events": self.late_events,
            "dead_letters": sum(self.dead_letters.values()),
            "dead_letters_by_reason": dict(sorted(self.dead_letters.items())),
            "partitions": {
                str(p): {"first_offset": a, "last_offset": b, "events": n}
                for p, (a, b, n) in sorted(self.partitions.items())
            },
        }


def record_key(record: Mapping[str, Any], fields: Sequence[str]) -> bytes | None:
    """The feature key of a record as the pipeline's repartitioning makes it: its ``fields``'
    values (dotted paths for nested records) as text, joined by ``|``, UTF-8; None when one
    is null, absent or empty.

    >>> record_key({"account_id": "acct-1", "card": {"n": 7}}, ["account_id", "card.n"])
    b'acct-1|7'
    >>> record_key({"account_id": None}, ["account_id"]) is None
    True
    """
    parts: list[str] = []
    for dotted in fields:
        v: Any = record
        for name in dotted.split("."):
            v = v.get(name) if isinstance(v, Mapping) else None
        if v is None or v in ("", b""):
            return None
        parts.append(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
    return KEY_SEPARATOR.join(parts).encode()


def event_time_ms(value: Any) -> int | None:
    """An event time as ms since the epoch (a long, or fastavro's datetime).

    >>> event_time_ms(dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)), event_time_ms(None)
    (1700000000000, None)
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        delta: dt.timedelta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        ms: int = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
        return ms
    if isinstance(value, int | float) and math.isfinite(value):
        return int(value)
    return None


def _number(value: Any) -> float:
    if value is None or isinstance(value, str | bytes):
        return math.nan
    return float(value)


def _input_error(feat: FeatureSpec, record: Mapping[str, Any]) -> str | None:
    """The decoder's verdict on one model input of the record (None: accepted)."""
    value: Any = record
    for part in feat.field.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return "MISSING_FEATURE" if feat.null == "reject" else None
    if feat.encoding != "value":
        return None if value in feat.symbols else "UNKNOWN_ENUM"
    if feat.length:
        return None
    x = float(value)
    if not math.isfinite(x):
        return None if feat.allow_nan else "NAN_FEATURE"
    if (feat.min is not None and x < feat.min) or (feat.max is not None and x > feat.max):
        return "OUT_OF_RANGE"
    return None


@dataclass
class _Pending:
    events: list[tuple[SourceEvent, bytes, int, bool]] = field(default_factory=list)


def backfill_rows(
    spec: ModelSpec | FeaturesSpec,
    events: Iterable[SourceEvent],
    *,
    time_field: str = "event_time",
    check_inputs: bool = True,
    labels: Mapping[str, str] | None = None,
    label_column: str = "label",
    batch_size: int = 4096,
    report: BackfillReport | None = None,
    emit_from: Mapping[int, int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows (the record's fields, the features, ``_partition`` and ``_offset``, and with
    ``labels`` the label of the record's ``event_id`` or None) for ``events``, each
    partition's in offset order. A :class:`ModelSpec` brings its ``features``, its
    ``time_field`` and its input constraints (``check_inputs``); a bare
    :class:`FeaturesSpec` reads ``time_field`` and checks nothing else.

    ``emit_from`` (partition -> offset): a partition's events before that offset are a
    warm-up: they enter the state as any event does, so that the first rows see the
    history before them as the pipeline did, but they give no row and count only as
    ``warmup_events`` (their dead letters and late events are not counted)."""
    model = spec if isinstance(spec, ModelSpec) else None
    if model is not None:
        if model.features is None:
            raise ValueError(f"model {model.name} {model.version} has no features section")
        features, time_field = model.features, model.time_field
        names = set(features.names)
        checked = [f for f in model.inputs if f.field not in names] if check_inputs else []
        id_field = model.id_field
    else:
        features, checked, id_field = spec, [], "event_id"  # type: ignore[assignment]
    report = report if report is not None else BackfillReport()
    store = open_store(features)
    pending: dict[int, _Pending] = {}
    last_offset: dict[int, int] = {}

    def flush(partition: int) -> Iterator[dict[str, Any]]:
        batch = pending.pop(partition).events
        keys = [k for _, k, _, _ in batch]
        times = np.fromiter((t for _, _, t, _ in batch), np.int64, len(batch))
        values = {f: np.fromiter((_number(e.record.get(f) if e.record else None)
                                  for e, _, _, _ in batch), VALUE_DTYPE, len(batch))
                  .astype(np.float64) for f in features.value_fields}  # fmt: skip
        result = store.process(partition, keys, times, values)
        names = features.names
        late = result.late.tolist()
        for (e, _, _, warm), row, is_late in zip(batch, result.values.tolist(), late, strict=True):
            if warm:
                continue
            assert e.record is not None
            report.late_events += is_late
            out = dict(e.record)
            out.update(zip(names, row, strict=True))
            out[PARTITION_COLUMN], out[OFFSET_COLUMN] = e.partition, e.offset
            if labels is not None:
                out[label_column] = labels.get(str(e.record.get(id_field)))
            report.rows += 1
            yield out

    for e in events:
        if last_offset.get(e.partition, -1) >= e.offset:
            raise ValueError(f"partition {e.partition}: offset {e.offset} came after "
                             f"{last_offset[e.partition]}: not in offset order")  # fmt: skip
        last_offset[e.partition] = e.offset
        warm = emit_from is not None and e.offset < emit_from.get(e.partition, 0)
        if warm:
            report.warmup_events += 1
        else:
            report.events_read += 1
            seen = report.partitions.setdefault(e.partition, [e.offset, e.offset, 0])
            seen[1], seen[2] = e.offset, seen[2] + 1
        if e.record is None:
            if not warm:
                report.dead_letters[e.reason or "CORRUPT"] += 1
            continue
        key = record_key(e.record, features.key) if features.key else e.key
        t = event_time_ms(e.record.get(time_field))
        reason = (
            "MISSING_KEY" if not key
            else "MISSING_EVENT_TIME" if t is None
            else next((r for f in checked if (r := _input_error(f, e.record))), None)
        )  # fmt: skip
        if reason is not None:
            if not warm:
                report.dead_letters[reason] += 1
            continue
        assert key and t is not None
        p = pending.setdefault(e.partition, _Pending())
        p.events.append((e, key, t, warm))
        if len(p.events) >= batch_size:
            yield from flush(e.partition)
    for partition in sorted(pending):
        yield from flush(partition)


def avro_file_events(paths: Sequence[Path | str], key_field: str) -> Iterator[SourceEvent]:
    """The records of Avro container files, in order, as ONE stream: partition 0, offsets
    counting from 0 across the files. Files carry no record key, so the key is the
    record's ``key_field`` (the demo producer keys its records by ``account_id``); a record
    without it is a ``MISSING_KEY`` dead letter, unless ``features.key`` names fields."""
    offset = 0
    for path in paths:
        with open(path, "rb") as fh:
            for rec in fastavro.reader(fh):
                assert isinstance(rec, dict)
                v = rec.get(key_field)
                key = None if v is None else (v if isinstance(v, bytes) else str(v).encode())
                yield SourceEvent(0, offset, key, rec)
                offset += 1


def avro_file_schema(path: Path | str) -> dict[str, Any]:
    """The writer schema of an Avro container file."""
    with open(path, "rb") as fh:
        schema = fastavro.reader(fh).writer_schema
    assert isinstance(schema, dict)
    return schema


def output_schema(
    event_schema: Mapping[str, Any], feature_names: Sequence[str], label_column: str | None
) -> dict[str, Any]:
    """The training set's Avro schema: the event's fields, then a double per feature (NaN:
    undefined), ``_partition``, ``_offset`` and an optional nullable label."""
    fields = [f for f in event_schema["fields"] if f["name"] not in feature_names]
    fields += [{"name": n, "type": "double", "doc": "windowed feature (NaN: undefined)"}
               for n in feature_names]  # fmt: skip
    fields += [{"name": PARTITION_COLUMN, "type": "int"}, {"name": OFFSET_COLUMN, "type": "long"}]
    if label_column is not None:
        fields.append({"name": label_column, "type": ["null", "string"], "default": None})
    return {
        "type": "record",
        "name": f"{event_schema.get('name', 'Event').split('.')[-1]}Features",
        "namespace": event_schema.get("namespace", "io.streamproc.features"),
        "fields": fields,
    }


def write_avro(rows: Iterable[dict[str, Any]], path: Path | str, schema: Mapping[str, Any]) -> int:
    """Write rows to an Avro container file (deflate); returns how many."""
    n = 0

    def counted() -> Iterator[dict[str, Any]]:
        nonlocal n
        for row in rows:
            n += 1
            yield row

    parsed = fastavro.parse_schema(dict(schema))
    with open(path, "wb") as fh:
        fastavro.writer(fh, parsed, counted(), codec="deflate")
    return n


def write_csv(rows: Iterable[dict[str, Any]], path: Path | str) -> int:
    """Write rows to CSV (header from the first row; event times as ms, nulls empty)."""
    n = 0
    with open(path, "w", newline="") as fh:
        writer: csv.DictWriter[str] | None = None
        for row in rows:
            if writer is None:
                writer = csv.DictWriter(fh, fieldnames=list(row), extrasaction="ignore")
                writer.writeheader()
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
            n += 1
    return n


def _csv_value(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return event_time_ms(v)
    if v is None:
        return ""
    return v
