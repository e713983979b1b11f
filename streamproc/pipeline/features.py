"""Windowed features in the live pipeline: between decoding and scoring, the window store
(:func:`streamproc.features.factory.open_store`) computes each event's feature values.

The decoder reads the event fields only (:func:`decoder_spec`: the model's event inputs,
then each definition's value field and the time field, as plain values where a null is
NaN). :meth:`FeatureStage.apply` then, per input partition of the batch (events in offset
order), gives the store the events that decoded, with the Kafka record key as the feature
key and the model's time field as event time; an event without a key or a time is a dead
letter (MISSING_KEY, MISSING_EVENT_TIME). The model's input matrix is assembled in
``spec.columns`` order. A NaN feature value (an empty window's mean, a first event's
``since_last``) follows the input's own ``null`` rule: ``impute`` takes its impute value,
``nan`` passes NaN to the model, ``reject`` (the default) makes the event a
MISSING_FEATURE dead letter; ``min``/``max`` apply as to any input.

State: after each batch the store's changes become changelog records
(:mod:`streamproc.kafka.changelog`) in the batch's outputs (``Outputs.state``); under
at-least-once with no batch in flight the runner asks for them at each commit instead
(:meth:`FeatureStage.state_records`: each key changed since the last commit once, as the
state stands after the last batch handled, which is the last batch produced). On
assignment a partition's state is restored from its changelog before any of its events is
processed; on revoke the store forgets it. Keys the changelog holds *ahead* of the committed
input offset (at-least-once: written before a crash, the offsets not committed yet) are
not given their replayed events again: those events are dropped, with no prediction (their
predictions were acknowledged before the state was written, see ``KafkaRunner._commit``).
A batch that starts before the offset the state reached (exactly-once: a transaction
aborted and its batches are read again) restores the partition from the changelog first.
A changelog written from an earlier topic of the input's name (its state past the input
partition's end) is discarded, not restored (:func:`_stale`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from streamproc.codecs.encoder import encode_record
from streamproc.errors import ConfigError, ModelError
from streamproc.features.api import ClosedWindow, WindowStore
from streamproc.features.spec import FeaturesSpec
from streamproc.models.spec import FeatureSpec, ModelSpec
from streamproc.telemetry import Sensor
from streamproc.types import DecodedBatch, OutRecord, RawBatch, ReasonCode

log = logging.getLogger(__name__)

_VALUE_NAME = "\x00value:"  # never an Avro field name: the derived inputs' own columns


class RestoredPartition(Protocol):
    """What :class:`ChangelogSource` gives for one partition (see
    :class:`streamproc.kafka.changelog.Restored`)."""

    entries: list[tuple[bytes, bytes | None]]  # the store's, in changelog order
    ahead: dict[bytes, int]  # keys whose state is past the committed input offset
    committed: int | None  # the group's committed input offset (None: none)
    input_end: int | None  # the input partition's end offset now (None: not known)
    records: int
    seconds: float


class ChangelogSource(Protocol):
    def read(self, partitions: list[int]) -> Mapping[int, RestoredPartition]: ...


def require_stateless(spec: ModelSpec, mode: str) -> None:
    """Refuse a model with windowed features in a mode that keeps no window state (HTTP
    serving, request-reply, Faust): its inputs would be computed from nothing. (``score``
    rebuilds the state from the input's history: streamproc.pipeline.batchscore.)"""
    if spec.features is not None:
        raise ConfigError(
            f"model {spec.name} {spec.version} computes windowed features "
            f"({', '.join(spec.features.names)}); {mode} keeps no window state yet: run it "
            "with `streamproc run`, or compute the features offline with `streamproc "
            "features backfill`"
        )


def decoder_spec(spec: ModelSpec) -> ModelSpec:
    """The spec the decoder reads with: the model's event inputs, then each value field of
    the features and the time field as plain numbers (null: NaN)."""
    assert spec.features is not None
    names = set(spec.features.names)
    event = [f for f in spec.inputs if f.field not in names]
    extra = [
        FeatureSpec(field=v, null="nan", allow_nan=True)
        for v in [*spec.features.value_fields, spec.time_field]
    ]
    return spec.model_copy(update={"inputs": tuple(event + extra), "features": None})


@dataclass
class FeatureBatch:
    """The decoded batch with the model's input matrix, and what the stage adds."""

    dec: DecodedBatch
    skip: npt.NDArray[np.bool_]  # events already in the state (dropped, no output)
    state: list[OutRecord] = field(default_factory=list)
    closed: list[ClosedWindow] = field(default_factory=list)
    records: list[OutRecord] = field(default_factory=list)  # closed windows, to their topic
    late: int = 0


class FeatureStage:
    """Computes the feature columns of a batch with a window store, keeps its changelog."""

    def __init__(
        self,
        spec: ModelSpec,
        store: WindowStore,
        *,
        changelog_topic: str | None,
        source: ChangelogSource | None = None,
        sensor: Sensor | None = None,
        closed_schema_id: int | None = None,
        repartitioned: bool = False,
    ) -> None:
        """``closed_schema_id``: the registry id of ``WindowAggregate`` on the features'
        ``closed_topic``; with it, closed tumbling/hopping windows go out there.
        ``repartitioned``: the input was re-keyed by ``features.key`` (.repartition).
        ``changelog_topic`` None: the state is kept for this run only (``score``, which
        builds it from the input's history), and no changelog entries are made."""
        if spec.features is None:
            raise ModelError(f"model {spec.name} has no features section")
        fs: FeaturesSpec = spec.features
        if fs.key and not repartitioned:
            # State must be partitioned like the input: the processor reads the input
            # re-keyed by these fields (streamproc.pipeline.repartition).
            raise ModelError(
                f"model {spec.name}: features keyed by {list(fs.key)} need the input topic "
                "keyed by those fields (the processor repartitions it)"
            )
        self.spec = spec
        self.fspec = fs
        self.store = store
        self.changelog_topic = changelog_topic
        # at-least-once with no batch in flight (defer_state): the changelog is written at
        # each commit, each key once, rather than after each batch
        self.deferred = False
        self.source = source
        self.sensor = sensor or Sensor()
        self.decoder_spec = decoder_spec(spec)
        self.closed_schema_id = closed_schema_id
        # Where each model column comes from: ("event", column in the decoded matrix) or
        # ("feature", definition index).
        feature_index = {n: j for j, n in enumerate(fs.names)}
        event_cols = 0
        self._plan: list[tuple[FeatureSpec, str, int, int]] = []  # (input, kind, src, width)
        for f in spec.inputs:
            width = len(f.columns)
            if f.field in feature_index:
                self._plan.append((f, "feature", feature_index[f.field], width))
            else:
                self._plan.append((f, "event", event_cols, width))
                event_cols += width
        self._value_col = {v: event_cols + i for i, v in enumerate(fs.value_fields)}
        self._time_col = event_cols + len(fs.value_fields)
        self._next: dict[int, int] = {}  # the input offset each partition's state reached
        self._ahead: dict[int, dict[bytes, int]] = {}  # see the module docstring
        self._ahead_max: dict[int, int] = {}
        # Keys of a discarded changelog (_discard), tombstoned with the partition's next batch.
        self._tombstones: dict[int, list[bytes]] = {}

    # -- partitions ------------------------------------------------------------------------

    def assigned(self, partitions: list[int]) -> None:
        """Restore each partition's state from its changelog (before any of its events)."""
        if self.source is None or not partitions:
            for p in partitions:
                self.store.revoke(p)
            return
        got = self.source.read(sorted(partitions))
        for p in sorted(partitions):
            r = got[p]
            if _stale(r):
                self._discard(p, r)
                continue
            n = self.store.restore(p, r.entries)
            self._next.pop(p, None)
            self._ahead[p] = r.ahead
            self._ahead_max[p] = max(r.ahead.values(), default=-1)
            st = self.store.stats(p)
            log.info("partition %d: state of %d keys restored from %d changelog records in "
                     "%.3fs (%d keys ahead of the committed offset)", p, st.keys, n, r.seconds,
                     len(r.ahead))  # fmt: skip
            self.sensor.on_feature_restore(p, r.records, r.seconds)
            self.sensor.on_feature_state(p, st.keys, st.bytes, st.evicted_keys)

    def _discard(self, p: int, r: RestoredPartition) -> None:
        """Start partition ``p`` with no state: its changelog was written from an earlier
        topic of the input's name (see :func:`_stale`). Its keys are tombstoned with the
        partition's next batch, so that a later restore does not bring them back."""
        latest = dict(r.entries)
        dead = [k for k, v in latest.items() if v is not None]
        self.store.revoke(p)
        self._next.pop(p, None)
        self._ahead[p], self._ahead_max[p] = {}, -1
        self._tombstones[p] = dead
        log.warning(
            "partition %d: the changelog's state reached input offset %d (group committed "
            "%s) but the input partition ends at %s: the input topic was deleted and created "
            "again, or truncated, since that state was written. Its %d keys are discarded and "
            "the partition's features start from no state.",
            p, max(r.ahead.values(), default=r.committed or 0), r.committed, r.input_end,
            len(dead),
        )  # fmt: skip
        self.sensor.on_feature_discarded(p, len(dead))
        self.sensor.on_feature_state(p, 0, 0, 0)

    def defer_state(self) -> None:
        """From now on the changelog records are made by :meth:`state_records` (at each
        commit) instead of in each batch's outputs."""
        self.deferred = True

    def state_records(self) -> list[OutRecord]:
        """The changelog records of every key changed since the last call, each framed with
        the input offset its partition's state has reached (after :meth:`defer_state`)."""
        if not self.deferred or self.changelog_topic is None:
            return []
        out: list[OutRecord] = []
        for p in self._next:
            out += self._changes(p)
        return out

    def _changes(self, p: int) -> list[OutRecord]:
        topic = self.changelog_topic
        assert topic is not None
        framed = self.store.changes(p, _frame(self._next[p]))
        return [OutRecord(topic, k, v, partition=p) for k, v in framed]

    def revoked(self, partitions: list[int]) -> None:
        for p in partitions:
            self.store.revoke(p)
            self._next.pop(p, None)
            self._tombstones.pop(p, None)
            self._ahead.pop(p, None)
            self._ahead_max.pop(p, None)
            self.sensor.on_feature_state(p, 0, 0, 0)

    # -- one batch -------------------------------------------------------------------------

    def apply(self, raw: RawBatch, dec: DecodedBatch) -> FeatureBatch:
        n = len(raw)
        fs = self.fspec
        decoded = dec.features
        errors = dec.errors.copy()
        details = list(dec.details)
        matrix = np.zeros((n, self.spec.n_features), np.float32)
        values = np.full((n, len(fs.definitions)), np.nan, np.float64)
        skip = np.zeros(n, np.bool_)
        keys = raw.keys
        out = FeatureBatch(dec, skip)
        times_missing = np.isnan(decoded[:, self._time_col]) if n else np.zeros(0, np.bool_)
        keyless = np.fromiter(map(_no_key, keys), np.bool_, n)  # None or empty
        for p in np.unique(raw.partitions).tolist():
            in_p = raw.partitions == p
            rows = np.flatnonzero(in_p & (errors == 0))
            first = int(raw.offsets[in_p].min())
            reached = self._next.get(p)
            if reached is not None and first < reached and self.source is not None:
                # Read again from before what the state holds (an aborted transaction):
                # back to what the changelog holds.
                log.info("partition %d read again from offset %d (state at %d): restoring",
                         p, first, reached)  # fmt: skip
                self.assigned([p])
            no_key = rows[keyless[rows]]
            no_time = rows[~keyless[rows] & times_missing[rows]]
            for i in no_key.tolist():
                errors[i] = ReasonCode.MISSING_KEY
                details[i] = "the event has no key (the Kafka record key is the feature key)"
            for i in no_time.tolist():
                errors[i] = ReasonCode.MISSING_EVENT_TIME
                details[i] = f"{self.spec.time_field} is null"
            ok = rows[~keyless[rows] & ~times_missing[rows]]
            good = self._drop_ahead(p, raw, ok.tolist(), skip)
            self._next[p] = int(raw.offsets[in_p].max()) + 1
            dead = self._tombstones.pop(p, None)
            if dead and self.changelog_topic is not None:
                out.state += [OutRecord(self.changelog_topic, k, None, partition=p) for k in dead]
            if not good:
                continue
            idx = np.asarray(good, np.intp)
            res = self.store.process(
                p,
                [keys[i] or b"" for i in good],
                dec.event_time_ms[idx],
                {v: decoded[idx, c].astype(np.float64) for v, c in self._value_col.items()},
            )
            values[idx] = res.values
            late = int(res.late.sum())
            out.late += late
            out.closed.extend(res.closed)
            if self.changelog_topic is not None and not self.deferred:
                out.state += self._changes(p)
            st = self.store.stats(p)
            self.sensor.on_feature_state(p, st.keys, st.bytes, st.evicted_keys)
        if out.late:
            self.sensor.on_feature_late(out.late)
        if out.closed and fs.closed_topic and self.closed_schema_id is not None:
            out.records = [self._closed_record(w, fs.closed_topic, self.closed_schema_id)
                           for w in out.closed]  # fmt: skip
        self._assemble(decoded, values, matrix, errors, details)
        out.dec = DecodedBatch(
            features=matrix,
            event_ids=dec.event_ids,
            event_time_ms=dec.event_time_ms,
            errors=errors,
            details=details,
            schema_ids=dec.schema_ids,
            raw_columns=dec.raw_columns,
        )
        return out

    def _closed_record(self, w: ClosedWindow, topic: str, schema_id: int) -> OutRecord:
        rec = {
            "feature": w.feature,
            "key": w.key.decode("utf-8", "replace"),
            "model_name": self.spec.name,
            "model_version": self.spec.version,
            "window_start": w.start_ms,
            "window_end": w.end_ms,
            "value": float(w.value),
            "events": int(w.events),
        }
        return OutRecord(topic, w.key, encode_record("WindowAggregate", schema_id, rec))

    def _drop_ahead(self, p: int, raw: RawBatch, good: list[int], skip: npt.NDArray[np.bool_]
                    ) -> list[int]:  # fmt: skip
        """The events whose key's restored state already holds them are dropped."""
        ahead = self._ahead.get(p)
        if not ahead:
            return good
        keep = []
        for i in good:
            o = int(raw.offsets[i])
            k = raw.keys[i] or b""
            if o < ahead.get(k, -1):
                skip[i] = True
            else:
                keep.append(i)
        last = int(raw.offsets[raw.partitions == p].max())
        if last + 1 >= self._ahead_max.get(p, -1):  # past every key ahead: done
            self._ahead.pop(p, None)
        return keep

    def _assemble(
        self,
        decoded: npt.NDArray[np.float32],
        values: npt.NDArray[np.float64],
        matrix: npt.NDArray[np.float32],
        errors: npt.NDArray[np.uint8],
        details: list[str],
    ) -> None:
        col = 0
        for f, kind, src, width in self._plan:
            if kind == "event":
                matrix[:, col : col + width] = decoded[:, src : src + width]
            else:
                matrix[:, col] = self._feature_column(f, values[:, src], errors, details)
            col += width

    def _feature_column(
        self,
        f: FeatureSpec,
        v: npt.NDArray[np.float64],
        errors: npt.NDArray[np.uint8],
        details: list[str],
    ) -> npt.NDArray[np.float64]:
        ok = errors == 0
        undefined = np.isnan(v)
        if undefined.any():
            if f.null == "impute":
                v = np.where(undefined, f.impute, v)
            elif f.null == "reject":
                for i in np.flatnonzero(undefined & ok).tolist():
                    errors[i] = ReasonCode.MISSING_FEATURE
                    details[i] = f"{f.field} is undefined (no event of the key in its window)"
        lo = -math.inf if f.min is None else f.min
        hi = math.inf if f.max is None else f.max
        with np.errstate(invalid="ignore"):
            bad = (v < lo) | (v > hi)
        for i in np.flatnonzero(bad & (errors == 0)).tolist():
            errors[i] = ReasonCode.OUT_OF_RANGE
            details[i] = f"{f.field}={v[i]} is outside [{f.min}, {f.max}]"
        return v


def _stale(r: RestoredPartition) -> bool:
    """Whether a changelog partition was written from an earlier topic of the input's name:
    its state (or the group's committed offset) is past the input partition's end, which
    a state written from this topic's records never is. (An earlier topic that held fewer
    records than this one holds now cannot be told apart by offsets.)"""
    if r.input_end is None:
        return False
    past = max(r.ahead.values(), default=-1)  # with nothing committed, every key is ahead
    return past > r.input_end or (r.committed is not None and r.committed > r.input_end)


def _no_key(key: bytes | None) -> bool:
    return not key


def _frame(offset: int) -> bytes:
    # The kafka layer's framing, without importing it here (the pipeline layer stays free
    # of the Kafka client): 8 bytes of offset, big-endian, then the state.
    return offset.to_bytes(8, "big", signed=True)
