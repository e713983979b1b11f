"""Encode outgoing records in the Confluent wire format.

:class:`PredictionEncoder` writes ``schemas/Prediction.avsc`` records for a whole batch
without going through dicts; :func:`encode_record` encodes any one record of the project's
schemas with fastavro (dead letters, alerts, metrics snapshots).

>>> import numpy as np
>>> enc = PredictionEncoder(schema_id=3)
>>> [p] = enc.encode(["e1"], ["acct"], "fraud", "1.0.0",
...                  np.array([[0.25, 0.75]], dtype=np.float32), 1, ["fraud"],
...                  np.array([1000]), 1012)
>>> decode_prediction(p)["latency_ms"], decode_prediction(p)["score"]
(12.0, 0.75)
"""

from __future__ import annotations

import functools
import io
import marshal
import struct
from collections.abc import Sequence
from typing import Any, overload

import fastavro
import numpy as np
import numpy.typing as npt

from streamproc import schemas
from streamproc.codecs import encode_kernel as enc_kernel
from streamproc.codecs.tree import parse, strip_logical
from streamproc.codecs.wire import HEADER_SIZE, frame, header, unframe
from streamproc.types import JoinedIds, JoinedKeys

_DOUBLE = struct.Struct("<d")
# The features and outlier_score fields when both are off: union branch null twice.
_NULL_TAIL = np.zeros((1, 2), np.uint8)


class Features:
    """The ``features`` field of a batch's predictions: column names and one row of values
    per event (``outputs.include_features``).

    >>> f = Features(["a", "b"], np.array([[1.0, 2.0]]))
    >>> want = b"\\x02\\x04" + b"\\x02a" + _DOUBLE.pack(1.0) + b"\\x02b" + _DOUBLE.pack(2.0)
    >>> f.tail().tobytes() == want + b"\\x00"
    True
    """

    __slots__ = ("names", "values")

    def __init__(self, names: Sequence[str], values: npt.NDArray[np.floating[Any]]) -> None:
        self.names = list(names)
        self.values = np.asarray(values, dtype=np.float64)
        if self.values.ndim != 2 or self.values.shape[1] != len(self.names):
            raise ValueError("features: one value per name and event")

    def tail(self) -> npt.NDArray[np.uint8]:
        """Each event's encoded field, one fixed-width row per event: union branch 1, one
        map block of every name with its double, the end of the map."""
        n, k = self.values.shape
        keys = [avro_string(name) for name in self.names]
        head = b"\x02" + (zigzag_varint(k) if k else b"")
        width = len(head) + sum(len(b) + 8 for b in keys) + 1
        out = np.zeros((n, width), np.uint8)
        out[:, : len(head)] = np.frombuffer(head, np.uint8)
        col = len(head)
        doubles = self.values.astype("<f8").view(np.uint8).reshape(n, 8 * k)
        for j, kb in enumerate(keys):
            out[:, col : col + len(kb)] = np.frombuffer(kb, np.uint8)
            col += len(kb)
            out[:, col : col + 8] = doubles[:, 8 * j : 8 * j + 8]
            col += 8
        out[:, col] = 0
        return out

    def record(self, i: int) -> dict[str, float]:
        return dict(zip(self.names, self.values[i].tolist(), strict=True))


def outlier_tail(outlier: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.uint8]:
    """Each event's ``outlier_score`` field, one row per event: union branch 1 (the
    zigzag varint 1, byte 2), then the little-endian double.

    >>> outlier_tail(np.array([1.5])).tobytes() == b"\\x02" + _DOUBLE.pack(1.5)
    True
    """
    values = np.ascontiguousarray(outlier, dtype="<f8")
    n = len(values)
    out = np.empty((n, 9), np.uint8)
    out[:, 0] = 2
    out[:, 1:] = values.view(np.uint8).reshape(n, 8)
    return out


def _tail(
    features: Features | None, outlier: npt.NDArray[np.floating[Any]] | None, n: int
) -> npt.NDArray[np.uint8]:
    """The per-record tail after ``latency_ms``: the ``features`` then the ``outlier_score``
    field, one row per event (or one row for all when both are null)."""
    if features is None and outlier is None:
        return _NULL_TAIL
    feats = _NULL_TAIL[:, :1] if features is None else _rows(features, n).tail()
    if outlier is None:
        return np.concatenate([feats, np.zeros((n, 1), np.uint8)], axis=1)
    if len(outlier) != n:
        raise ValueError(f"outlier scores for {len(outlier)} events, {n} expected")
    return np.concatenate([np.broadcast_to(feats, (n, feats.shape[1])), outlier_tail(outlier)],
                          axis=1)  # fmt: skip


def zigzag_varint(n: int) -> bytes:
    """Avro's encoding of an int/long.

    >>> zigzag_varint(0), zigzag_varint(-1), zigzag_varint(64)
    (b'\\x00', b'\\x01', b'\\x80\\x01')
    """
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def avro_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return zigzag_varint(len(b)) + b


def _key_bytes(key: str | bytes | None) -> bytes:
    if key is None:
        return b"\x00"
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")  # the Avro field is a string
    return b"\x02" + avro_string(key)


_warm = False


def _warm_up() -> None:
    """Compile (or load from numba's cache) the encoding kernel once per process, through
    the real code path so the argument types match."""
    global _warm  # noqa: PLW0603 - one process-wide flag
    if not _warm:
        _warm = True
        PredictionEncoder(0).encode(
            ["e"], ["k"], "m", "0.0.0", np.zeros((1, 1), np.float32), 0, ["l"],
            np.zeros(1, np.int64), 0,
        )  # fmt: skip


class EncodedRecords(list[bytes]):
    """The encoder's records, a list of ``bytes``, that also keeps the one buffer they were
    cut from (``buf``, record ``i`` ending at ``ends[i]``): a file sink writes them from it
    without joining them again."""

    __slots__ = ("buf", "ends")

    def __init__(
        self, records: list[bytes], buf: npt.NDArray[np.uint8], ends: npt.NDArray[np.int64]
    ) -> None:
        super().__init__(records)
        self.buf = buf
        self.ends = ends


def split_records(buf: npt.NDArray[np.uint8], ends: npt.NDArray[np.int64]) -> list[bytes]:
    """The records laid end to end in ``buf`` (record ``i`` ends at ``ends[i]``) as a list
    of ``bytes``.

    ``marshal.loads`` builds the list in C from a buffer the kernel frames: 0.019 against
    0.109 us per record for slicing one ``bytes`` per record (4096 records of 90 bytes,
    one core of the benchmark VM). Should a Python version ever read that framing
    differently (:func:`_marshal_ok`, checked once), the records are sliced instead.

    >>> split_records(np.frombuffer(b"abcde", np.uint8), np.array([2, 2, 5]))
    [b'ab', b'', b'cde']
    """
    n = len(ends)
    if not _marshal_ok():
        raw = buf.tobytes()
        stops = ends.tolist()
        return list(map(raw.__getitem__, map(slice, [0, *stops[:-1]], stops)))
    framed = np.empty(buf.size + 5 * (n + 1), np.uint8)
    written = enc_kernel.marshal_list(buf, n, ends, framed)
    records: list[bytes] = marshal.loads(framed[:written].data)
    return records


@functools.cache
def _marshal_ok() -> bool:
    """Whether this Python's ``marshal`` reads the kernel's framing back as written."""
    want = [b"", b"a\x00b", bytes(range(256)) * 300]
    buf = np.frombuffer(b"".join(want), np.uint8)
    ends = np.cumsum([len(x) for x in want]).astype(np.int64)
    framed = np.empty(buf.size + 5 * (len(want) + 1), np.uint8)
    try:
        written = enc_kernel.marshal_list(buf, len(want), ends, framed)
        return bool(marshal.loads(framed[:written].data) == want)
    except (ValueError, EOFError, TypeError):
        return False


def _joined_keys(keys: Sequence[str | bytes | None]) -> bytes:
    """The keys as UTF-8, NUL-separated (None as ""); bytes keys that are not UTF-8 are
    decoded with replacement characters, as ``bytes.decode(errors="replace")`` does."""
    if isinstance(keys, JoinedKeys):  # joined already (and checked: UTF-8, no None)
        return keys.joined
    try:  # join raises TypeError for a None or str key: no per-key type test
        joined = b"\0".join(keys)  # type: ignore[arg-type]
        joined.decode("utf-8")  # one validation for the whole batch
        return joined
    except (TypeError, UnicodeDecodeError):
        pass
    text = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x or "" for x in keys]
    return "\0".join(text).encode()


class IndexedLabels(Sequence[str]):
    """Per-event labels as indexes into a few names: event ``i``'s label is
    ``names[choice[i]]``. The encoder writes them without a string per event.

    >>> labels = IndexedLabels(("legit", "fraud"), np.array([1, 0, 1]))
    >>> list(labels), len(labels)
    (['fraud', 'legit', 'fraud'], 3)
    """

    __slots__ = ("choice", "names")

    def __init__(self, names: Sequence[str], choice: npt.NDArray[np.integer[Any]]) -> None:
        self.names = tuple(names)
        self.choice = choice

    def __len__(self) -> int:
        return len(self.choice)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self.names[j] for j in self.choice[i].tolist()]
        return self.names[int(self.choice[i])]


class PredictionEncoder:
    """Encodes batches of predictions as framed ``Prediction`` records."""

    def __init__(self, schema_id: int, framed: bool = True) -> None:
        """``framed`` False: the records without their 5-byte header, bare Avro datums (as
        an Avro container file holds them)."""
        self.schema_id = schema_id
        self._header = header(schema_id) if framed else b""
        self._header_arr = np.frombuffer(self._header, np.uint8)
        _warm_up()
        self._labels: dict[str, bytes] = {}
        self._model: tuple[str, str, bytes] = ("", "", b"")

    def _model_bytes(self, model_name: str, model_version: str) -> bytes:
        if self._model[:2] != (model_name, model_version):
            self._model = (
                model_name,
                model_version,
                avro_string(model_name) + avro_string(model_version),
            )
        return self._model[2]

    def _label(self, label: str) -> bytes:
        b = self._labels.get(label)
        if b is None:
            b = avro_string(label)
            if len(self._labels) < 1024:
                self._labels[label] = b
        return b

    def encode(
        self,
        event_ids: Sequence[str],
        keys: Sequence[str | bytes | None],
        model_name: str,
        model_version: str,
        scores: npt.NDArray[np.float32],
        score_index: int,
        labels: Sequence[str],
        event_time_ms: npt.NDArray[np.int64],
        processed_time_ms: int,
        features: Features | None = None,
        outlier: npt.NDArray[np.floating[Any]] | None = None,
    ) -> list[bytes]:
        """One framed Prediction per event; ``latency_ms = processed_time - event_time``.

        Written by a numba kernel; strings holding a NUL character take the Python path
        (:meth:`encode_python`), which gives the same bytes. ``outlier``: each event's
        ``outlier_score`` (None: the field is null).
        """
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        if scores.ndim != 2:
            raise ValueError("scores must have shape (n, k)")
        n, k = scores.shape
        if not (len(event_ids) == len(keys) == len(labels) == len(event_time_ms) == n):
            raise ValueError("event_ids, keys, labels, event_time_ms and scores differ in length")
        if n == 0:
            return []
        if k and not -k <= score_index < k:
            raise ValueError(f"score_index {score_index} out of range for {k} scores")
        times = np.ascontiguousarray(event_time_ms, dtype=np.int64)
        if isinstance(event_ids, JoinedIds):  # as the decoder found them: no join
            ids_b = event_ids.utf8()
        else:
            ids_b = "\0".join(event_ids).encode()
        keys_b = _joined_keys(keys)
        if isinstance(labels, IndexedLabels):  # a few names and an index: no join per event
            names: Sequence[str] = labels.names
            label_idx = labels.choice.astype(np.int64)
            if len(names) == 0 or not 0 <= label_idx.min() <= label_idx.max() < len(names):
                raise ValueError("a label index outside the names")
        else:
            names, label_idx = labels, np.arange(n, dtype=np.int64)
        labels_b = "\0".join(names).encode()
        ends = np.empty((2, n), np.int64)
        label_ends = np.empty(len(names), np.int64)
        bufs = [np.frombuffer(b, np.uint8) for b in (ids_b, keys_b, labels_b)]
        if not (
            enc_kernel.split_ends(bufs[0], n, ends[0])
            and enc_kernel.split_ends(bufs[1], n, ends[1])
            and enc_kernel.split_ends(bufs[2], len(names), label_ends)
        ):
            return self.encode_python(
                event_ids, keys, model_name, model_version, scores, score_index, labels,
                event_time_ms, processed_time_ms, features, outlier,
            )  # fmt: skip
        if not isinstance(keys, JoinedKeys) and None in keys:
            present = np.fromiter((x is not None for x in keys), np.bool_, n)
        else:
            present = np.ones(n, np.bool_)
        model = self._model_bytes(model_name, model_version)
        tail = _tail(features, outlier, n)
        # header, 6 varints, union index, score, array end, latency: an exact upper bound
        per_event = HEADER_SIZE + 10 * 6 + 1 + 8 + 1 + 8 + len(model) + 4 * k
        # every label fits in all the names joined: a bound for an index into them
        label_room = len(labels_b) * (n if isinstance(labels, IndexedLabels) else 1)
        per_event += tail.shape[1]
        out = np.empty(n * per_event + len(ids_b) + len(keys_b) + label_room, np.uint8)
        out_ends = np.empty(n, np.int64)
        written = enc_kernel.encode_predictions(
            self._header_arr, bufs[0], ends[0], bufs[1], ends[1], present,
            np.frombuffer(model, np.uint8), scores, score_index, bufs[2], label_ends, label_idx,
            times, int(processed_time_ms), tail, out, out_ends,
        )  # fmt: skip
        return EncodedRecords(split_records(out[:written], out_ends), out[:written], out_ends)

    def encode_python(
        self,
        event_ids: Sequence[str],
        keys: Sequence[str | bytes | None],
        model_name: str,
        model_version: str,
        scores: npt.NDArray[np.float32],
        score_index: int,
        labels: Sequence[str],
        event_time_ms: npt.NDArray[np.int64],
        processed_time_ms: int,
        features: Features | None = None,
        outlier: npt.NDArray[np.floating[Any]] | None = None,
    ) -> list[bytes]:
        """The same bytes as :meth:`encode`, built with numpy and ``bytes.join``."""
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        n, k = scores.shape
        if n == 0:
            return []
        # Fixed-width middle: score (double) + scores array block (count, k floats, end).
        score = scores[:, score_index].astype("<f8") if k else np.zeros(n, "<f8")
        middle = np.empty((n, 8 + (len(zigzag_varint(k)) + 4 * k + 1 if k else 1)), np.uint8)
        middle[:, :8] = score.view(np.uint8).reshape(n, 8)
        if k:
            kz = zigzag_varint(k)
            middle[:, 8 : 8 + len(kz)] = np.frombuffer(kz, np.uint8)
            start = 8 + len(kz)
            middle[:, start : start + 4 * k] = scores.astype("<f4").view(np.uint8).reshape(n, 4 * k)
        middle[:, -1] = 0
        mids = middle.tobytes()
        width = middle.shape[1]
        head = self._header
        model = self._model_bytes(model_name, model_version)
        proc = zigzag_varint(int(processed_time_ms))
        times = np.asarray(event_time_ms, dtype=np.int64).tolist()
        rows = _tail(features, outlier, n)
        tails = [rows.tobytes()] * n if rows.shape[0] == 1 else [r.tobytes() for r in rows]
        out: list[bytes] = []
        label_bytes = self._label
        pack = _DOUBLE.pack
        for i in range(n):
            t = times[i]
            out.append(
                b"".join(
                    (
                        head,
                        avro_string(event_ids[i]),
                        _key_bytes(keys[i]),
                        model,
                        mids[i * width : (i + 1) * width],
                        label_bytes(labels[i]),
                        zigzag_varint(t),
                        proc,
                        pack(float(processed_time_ms - t)),
                        tails[i],
                    )
                )
            )
        return out

    def encode_reference(
        self,
        event_ids: Sequence[str],
        keys: Sequence[str | bytes | None],
        model_name: str,
        model_version: str,
        scores: npt.NDArray[np.float32],
        score_index: int,
        labels: Sequence[str],
        event_time_ms: npt.NDArray[np.int64],
        processed_time_ms: int,
        features: Features | None = None,
        outlier: npt.NDArray[np.floating[Any]] | None = None,
    ) -> list[bytes]:
        """The same records written by fastavro (slower; the reference for tests)."""
        out = []
        for i in range(len(event_ids)):
            key = keys[i]
            if isinstance(key, bytes):
                key = key.decode("utf-8", "replace")
            t = int(event_time_ms[i])
            record = {
                "event_id": event_ids[i],
                "key": key,
                "model_name": model_name,
                "model_version": model_version,
                "score": float(scores[i, score_index]) if scores.shape[1] else 0.0,
                "scores": [float(x) for x in scores[i]],
                "label": labels[i],
                "event_time": t,
                "processed_time": int(processed_time_ms),
                "latency_ms": float(processed_time_ms - t),
                "features": None if features is None else features.record(i),
                "outlier_score": None if outlier is None else float(outlier[i]),
            }
            out.append(encode_record("Prediction", self.schema_id, record))
        return out


def _rows(features: Features, n: int) -> Features:
    if len(features.values) != n:
        raise ValueError(f"features for {len(features.values)} events, {n} expected")
    return features


def encode_record(schema_name: str, schema_id: int, record: dict[str, Any]) -> bytes:
    """One framed record of a project schema (``Prediction``, ``DeadLetter``, ``Alert``,
    ``MetricsSnapshot``, ``Transaction``), written by fastavro.

    >>> p = encode_record("Alert", 9, {"alert_id": "a", "type": "input_drift",
    ...     "severity": "WARNING", "model_name": "m", "model_version": "1.0.0",
    ...     "statistic": "psi", "value": 0.3, "threshold": 0.2, "window_events": 10,
    ...     "message": "drift", "time": 0})
    >>> p[:5], decode_record("Alert", p)["state"]
    (b'\\x00\\x00\\x00\\x00\\t', 'FIRING')
    """
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schemas.parsed(schema_name), record)
    return frame(schema_id, buf.getvalue())


def decode_record(schema_name: str, payload: bytes) -> dict[str, Any]:
    """Read back a framed record of a project schema (timestamps as ms since the epoch)."""
    _, body = unframe(payload)
    schema = _plain(schema_name)
    bio = io.BytesIO(body)
    record = fastavro.schemaless_reader(bio, schema, schema)
    assert isinstance(record, dict)
    return record


def decode_prediction(payload: bytes) -> dict[str, Any]:
    """Read back a framed Prediction (for tests and tools)."""
    return decode_record("Prediction", payload)


_PLAIN: dict[str, Any] = {}


def _plain(schema_name: str) -> Any:
    if schema_name not in _PLAIN:
        _PLAIN[schema_name] = parse(strip_logical(schemas.schema_dict(schema_name)))
    return _PLAIN[schema_name]


__all__ = [
    "Features",
    "IndexedLabels",
    "PredictionEncoder",
    "avro_string",
    "decode_prediction",
    "decode_record",
    "encode_record",
    "outlier_tail",
    "zigzag_varint",
]
