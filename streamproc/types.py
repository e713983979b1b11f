"""Plain data types shared by every layer (no I/O, no third-party imports but numpy)."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, overload

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from streamproc.telemetry.sensor import BatchStats


class ReasonCode(enum.IntEnum):
    """Why an event was dead-lettered. ``OK`` (0) marks an accepted event.

    The integer value is what a per-event error array holds, so compiled decoders can
    write it without touching Python objects.
    """

    OK = 0
    BAD_MAGIC = 1  # first byte is not the Confluent magic byte 0
    TRUNCATED = 2  # the body ended before the record did
    CORRUPT = 3  # bytes that are not a valid Avro record of the writer schema
    UNKNOWN_SCHEMA = 4  # the registry has no schema with this id
    INCOMPATIBLE_SCHEMA = 5  # the writer schema cannot be resolved to the reader schema
    MISSING_FEATURE = 6  # a required feature is null or absent
    NAN_FEATURE = 7  # a feature is NaN or infinite where the model forbids it
    OUT_OF_RANGE = 8  # a feature lies outside the model's declared [min, max]
    UNKNOWN_ENUM = 9  # an enum symbol the model does not know
    OVERSIZE = 10  # the message is larger than the configured maximum
    TRAILING_BYTES = 11  # bytes left over after the record
    INFERENCE_FAILED = 12  # the backend raised on this event's batch
    NULL_VALUE = 13  # a tombstone (no value) on an input topic
    MISSING_KEY = 14  # windowed features: the event has no (or an empty) feature key
    MISSING_EVENT_TIME = 15  # windowed features: the event's time field is null


class ReleaseReason(enum.StrEnum):
    """Why the micro-batcher released a batch."""

    SIZE = "size"
    TIME = "time"
    DEADLINE = "deadline"
    REBALANCE = "rebalance"
    SHUTDOWN = "shutdown"


class Guarantee(enum.StrEnum):
    AT_LEAST_ONCE = "at-least-once"
    EXACTLY_ONCE = "exactly-once"


class JoinedKeys(Sequence[bytes | None]):
    """Record keys NUL-joined in one buffer (``joined``: valid UTF-8, no NUL inside a key,
    no None), as the Avro file reader finds them. Split into ``bytes`` only when read: the
    prediction encoder copies the buffer as it is.

    >>> keys = JoinedKeys(b"a\\x00\\x00c", 3)
    >>> keys[2], list(keys), keys == [b"a", b"", b"c"]
    (b'c', [b'a', b'', b'c'], True)
    """

    __slots__ = ("_items", "_n", "joined", "starts")

    def __init__(self, joined: bytes, n: int, starts: npt.NDArray[np.int64] | None = None) -> None:
        self.joined = joined
        self._n = n
        self.starts = starts  # where each id begins (and one past the end): see take()
        self._items: list[bytes] | None = None

    def _list(self) -> list[bytes]:
        if self._items is None:
            items = self.joined.split(b"\0") if self._n else []
            if len(items) != self._n:
                raise ValueError(f"{len(items)} keys joined where {self._n} were expected")
            self._items = items
        return self._items

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> bytes: ...

    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        return self._list()[i]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, JoinedKeys):
            return self.joined == other.joined and self._n == other._n
        if isinstance(other, Sequence):
            return self._list() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class JoinedIds(Sequence[str]):
    """A batch's event ids as the decoder found them: one buffer of the ids' bytes,
    NUL-separated. Split into strings only when read; the prediction encoder copies the
    buffer as it is (no string per event on the way through).

    >>> ids = JoinedIds(b"e1\\x00\\x00e3", 3)
    >>> ids.utf8(), ids[2], ids == ["e1", "", "e3"]
    (b'e1\\x00\\x00e3', 'e3', True)
    """

    __slots__ = ("_items", "_n", "joined", "starts")

    def __init__(self, joined: bytes, n: int, starts: npt.NDArray[np.int64] | None = None) -> None:
        self.joined = joined
        self._n = n
        self.starts = starts  # where each id begins (and one past the end): see take()
        self._items: list[str] | None = None

    def _list(self) -> list[str]:
        if self._items is None:
            items = self.joined.decode("utf-8", "replace").split("\0") if self._n else []
            if len(items) != self._n:
                raise ValueError(f"{len(items)} ids joined where {self._n} were expected")
            self._items = items
        return self._items

    def take(self, rows: Sequence[int]) -> list[str]:
        """The ids at ``rows``; without splitting the others where the decoder gave each
        id's start (a sample of a batch).

        >>> import numpy as np
        >>> JoinedIds(b"e1\\x00\\x00e3", 3, np.array([0, 3, 4, 7])).take([2, 0])
        ['e3', 'e1']
        """
        if self.starts is None:
            items = self._list()
            return [items[i] for i in rows]
        st = self.starts
        j = self.joined
        return [j[st[i] : st[i + 1] - 1].decode("utf-8", "replace") for i in rows]

    def take_joined(self, rows: Sequence[int]) -> bytes:
        """The ids at ``rows`` as one NUL-separated buffer, their bytes as the decoder found
        them (``take`` decodes them).

        >>> import numpy as np
        >>> JoinedIds(b"e1\\x00\\x00e3", 3, np.array([0, 3, 4, 7])).take_joined([2, 0])
        b'e3\\x00e1'
        """
        if self.starts is None:
            return "\0".join(self.take(rows)).encode()
        st = self.starts
        j = self.joined
        return b"\0".join([j[st[i] : st[i + 1] - 1] for i in rows])

    def utf8(self) -> bytes:
        """The joined ids as valid UTF-8 (invalid bytes replaced, as ``self[i]`` reads)."""
        if self.joined.isascii():
            return self.joined
        try:
            self.joined.decode("utf-8")
            return self.joined
        except UnicodeDecodeError:
            return "\0".join(self._list()).encode()

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int | slice) -> Any:
        return self._list()[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, JoinedIds):
            return self._list() == other._list()
        return isinstance(other, list) and self._list() == other

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, like a list

    def __repr__(self) -> str:
        return repr(self._list())


class Severity(enum.StrEnum):
    """How urgent an alert is. Members are listed in rising order: :attr:`rank` compares
    them (the string values do not sort by urgency).

    >>> Severity("INFO").rank < Severity.WARNING.rank < Severity.CRITICAL.rank
    True
    >>> Severity.WARNING.at_least(Severity.INFO), Severity.INFO.at_least(Severity.WARNING)
    (True, False)
    """

    INFO = "INFO"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        """0 for the quietest, rising with urgency."""
        return _SEVERITY_RANK[self]

    def at_least(self, floor: Severity) -> bool:
        return self.rank >= floor.rank


_SEVERITY_RANK = {s: i for i, s in enumerate(Severity)}


class AlertState(enum.StrEnum):
    FIRING = "FIRING"
    RESOLVED = "RESOLVED"


class AlertType(enum.StrEnum):
    INPUT_DRIFT = "input_drift"
    PREDICTION_DRIFT = "prediction_drift"
    DATA_QUALITY = "data_quality"
    ACCURACY_DRIFT = "accuracy_drift"
    NEW_SCHEMA = "new_schema"
    ROLLBACK = "rollback"  # a rollout's candidate rolled back by its guardrails
    OUTLIER_RATE = "outlier_rate"  # the share of outlier inputs rose (streamproc.insight)
    PROBING = "probing"  # a key probes the decision threshold (streamproc.insight)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert state change (a drift firing or resolving, a rollback), from the monitor or
    the rollout guard that raised it to the alerts topic and the webhook.

    Identity and time are left None by whoever raises it when they do not know them; the
    batch handler fills them in (:meth:`stamped`). :meth:`to_record` is the one place the
    Avro ``Alert`` record is built.

    >>> a = Alert(AlertType.INPUT_DRIFT, AlertState.FIRING, Severity.WARNING, "amount",
    ...           "cusum_mean_up", 31.2, 31.0, 90, 1000, 1089, "mean shifted up")
    >>> rec = a.stamped(model_name="fraud", model_version="1.0.0", time_ms=0,
    ...                 alert_id="a1").to_record()
    >>> rec["type"], rec["state"], rec["model_name"], rec["alert_id"], rec["time"]
    ('input_drift', 'FIRING', 'fraud', 'a1', 0)
    """

    type: AlertType
    state: AlertState
    severity: Severity
    feature: str | None
    statistic: str
    value: float
    threshold: float
    window_events: int
    first_offset: int | None
    last_offset: int | None
    message: str
    model_name: str | None = None  # None: the pipeline's model (stamped by the handler)
    model_version: str | None = None
    alert_id: str | None = None
    time_ms: int | None = None

    def stamped(self, *, model_name: str, model_version: str, time_ms: int, alert_id: str) -> Alert:
        """This alert with its identity and time filled in where it has none."""
        return replace(
            self,
            model_name=self.model_name if self.model_name is not None else model_name,
            model_version=self.model_version if self.model_version is not None else model_version,
            alert_id=self.alert_id or alert_id,
            time_ms=self.time_ms if self.time_ms is not None else time_ms,
        )

    def to_record(
        self,
        *,
        model_name: str | None = None,
        model_version: str | None = None,
        time_ms: int | None = None,
        alert_id: str | None = None,
    ) -> dict[str, Any]:
        """The Avro ``Alert`` record (``streamproc/avro_schemas/Alert.avsc``). Identity and
        time the alert lacks come from the arguments; all must be known by then."""
        a = self
        if model_name is not None and model_version is not None and time_ms is not None:
            a = self.stamped(model_name=model_name, model_version=model_version,
                             time_ms=time_ms, alert_id=alert_id or "")  # fmt: skip
        if a.model_name is None or a.model_version is None or a.time_ms is None:
            raise ValueError(f"alert {a.type} has no model or time to record: stamp it first")
        return {
            "alert_id": a.alert_id or "",
            "type": str(a.type),
            "state": str(a.state),
            "severity": str(a.severity),
            "model_name": a.model_name,
            "model_version": a.model_version,
            "feature": a.feature,
            "statistic": a.statistic,
            "value": float(a.value),
            "threshold": float(a.threshold),
            "window_events": int(a.window_events),
            "first_offset": a.first_offset,
            "last_offset": a.last_offset,
            "message": a.message,
            "time": int(a.time_ms),
        }


@dataclass(slots=True)
class DecodedBatch:
    """What a batch decoder returns: one row per input payload, in input order.

    ``features`` rows of rejected events are undefined; ``errors[i] != 0`` marks them and
    ``details[i]`` says why in words.
    """

    features: npt.NDArray[np.float32]  # shape (n, n_features)
    event_ids: Sequence[str]  # a list, or JoinedIds straight from the decoder
    event_time_ms: npt.NDArray[np.int64]  # shape (n,)
    errors: npt.NDArray[np.uint8]  # shape (n,), ReasonCode values
    details: list[str]
    schema_ids: npt.NDArray[np.int32]  # shape (n,), -1 where no id could be read
    raw_columns: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.event_ids)

    @property
    def ok(self) -> npt.NDArray[np.bool_]:
        ok: npt.NDArray[np.bool_] = self.errors == 0
        return ok


@dataclass(slots=True)
class RawBatch:
    """Consumed records, columnar, in consumption order. Built by the Kafka adapter."""

    topic: str
    values: list[bytes | None]
    keys: list[bytes | None]
    partitions: npt.NDArray[np.int32]
    offsets: npt.NDArray[np.int64]
    # Each record's headers (None: none). The Kafka adapter reads them lazily: only dead
    # letters keep them.
    headers: Sequence[list[tuple[str, bytes | None]] | None]
    batch_id: str = ""
    release: ReleaseReason = ReleaseReason.SIZE
    wait_ms: float = 0.0  # time the oldest record waited in the batcher

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A record of a side input (a label on the feedback topic) that could not be read:
    where it was, what it held and why, for its dead letter."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: ReasonCode
    detail: str
    schema_id: int | None = None


@dataclass(slots=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone (a compacted topic's deleted key)
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None  # None: the partitioner decides (by key)


@dataclass(slots=True)
class RecordBlock:
    """Many records for one topic that share their headers, column by column: the
    predictions' form, with no object per record beyond its key and value."""

    topic: str
    keys: list[bytes | None]
    values: list[bytes]
    headers: list[tuple[str, bytes]] = field(default_factory=list)  # on every record

    def __len__(self) -> int:
        return len(self.values)

    def records(self) -> Iterator[OutRecord]:
        """One :class:`OutRecord` per record (for tests and tools)."""
        for k, v in zip(self.keys, self.values, strict=True):
            yield OutRecord(self.topic, k, v, list(self.headers))


@dataclass(slots=True)
class Outputs:
    """Everything one batch produces; the runner writes it, then commits the batch."""

    records: list[OutRecord] = field(default_factory=list)
    blocks: list[RecordBlock] = field(default_factory=list)
    n_predictions: int = 0
    n_dead_letters: int = 0
    stats: BatchStats | None = None  # reported once committed
    # Changelog entries of the batch's window state (streamproc.pipeline.features). Under
    # exactly-once they go in the batch's transaction; under at-least-once the runner
    # produces them only once the outputs they follow are acknowledged (KafkaRunner._commit).
    state: list[OutRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records) + sum(len(b) for b in self.blocks)

    def all_records(self) -> Iterator[OutRecord]:
        """Every record, blocks first (one object per record: for tests and tools)."""
        for b in self.blocks:
            yield from b.records()
        yield from self.records


# ---------------------------------------------------------------- the handler contract


class BatchHandlerLike(Protocol):
    """What the runner asks of a handler. A class that subclasses this protocol needs only
    ``__call__``; the defaults make it a handler that does not overlap.

    A handler that ``overlaps`` (see the module docstring) also splits its work in two: the
    runner calls ``start(raw)`` and, later, ``finish(started)`` instead of ``handler(raw)``.
    """

    @property
    def overlaps(self) -> bool:
        """Whether :meth:`start` leaves work running after it returns (then the runner keeps
        one batch in flight)."""
        return False

    def __call__(self, raw: RawBatch) -> Outputs: ...

    def start(self, raw: RawBatch) -> Any:
        return raw

    def finish(self, started: Any) -> Outputs:
        return self(started)

    def pending(self) -> list[OutRecord]:
        """Records that no batch carries, to send now: an alert decided between batches (a
        rollout guard's rollback). The runner asks when it finds nothing to read, so such a
        record never waits for the next event."""
        return []

    def assigned(self, partitions: list[int]) -> None:
        """The group gave these input partitions to this replica (before any of their
        records is consumed): a stateful handler restores their state here."""
        return None  # a default, not an abstract method

    def defer_state(self) -> None:
        """The runner commits at-least-once with no batch in flight: a stateful handler may
        then keep its state changes for :meth:`state_records` instead of putting them in
        each batch's ``Outputs.state`` (told once, before the first batch)."""
        return None

    def state_records(self) -> list[OutRecord]:
        """After :meth:`defer_state`: the state records of every change since the last call,
        as the state stands now. The runner asks at each commit, once the outputs of every
        batch handled so far are acknowledged and before their offsets move."""
        return []

    def revoked(self, partitions: list[int]) -> None:
        """These input partitions were taken away, after their last batch was produced and
        committed (or lost: nothing was committed): a stateful handler forgets them."""
        return None
