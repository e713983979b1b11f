"""numba kernel writing a batch of framed ``Prediction`` records into one buffer.

Strings arrive as one UTF-8 buffer per column, NUL-separated (one decode-free ``join`` and
``encode`` per batch in Python); the kernel splits them, writes every record back to back
and returns where each ends.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def split_ends(buf, n, ends):  # type: ignore[no-untyped-def]
    """End offsets of the ``n`` NUL-separated items of ``buf``; False when the count is off
    (an item held a NUL itself)."""
    k = 0
    for i in range(buf.shape[0]):
        if buf[i] == 0:
            if k >= n - 1:
                return False
            ends[k] = i
            k += 1
    if k != n - 1:
        return False
    ends[n - 1] = buf.shape[0]
    return True


@njit(cache=True, nogil=True)
def _varint(out, w, value):  # type: ignore[no-untyped-def]
    z = np.uint64((value << 1) ^ (value >> 63))
    while z > 0x7F:
        out[w] = np.uint8((z & np.uint64(0x7F)) | np.uint64(0x80))
        w += 1
        z >>= np.uint64(7)
    out[w] = np.uint8(z)
    return w + 1


@njit(cache=True, nogil=True)
def _string(out, w, src, start, stop):  # type: ignore[no-untyped-def]
    w = _varint(out, w, np.int64(stop - start))
    for i in range(start, stop):
        out[w] = src[i]
        w += 1
    return w


@njit(cache=True, nogil=True)
def encode_predictions(  # type: ignore[no-untyped-def]
    header, ids, id_ends, keys, key_ends, key_present, model, scores, score_index,
    labels, label_ends, label_idx, event_time, processed_time, tail, out, out_ends,
):  # fmt: skip
    """Write each record (header, event_id, key, model name+version, score, scores,
    label, event_time, processed_time, latency_ms, then ``tail``: row ``i`` of it, or its
    only row for every record: the ``features`` and ``outlier_score`` fields); returns the
    bytes written."""
    tmp = np.zeros(8, np.uint8)
    f64 = tmp.view(np.float64)
    f32 = tmp[:4].view(np.float32)
    n, k = scores.shape
    w = 0
    id_start = 0
    key_start = 0
    for i in range(n):
        for j in range(header.shape[0]):
            out[w] = header[j]
            w += 1
        w = _string(out, w, ids, id_start, id_ends[i])
        id_start = id_ends[i] + 1
        if key_present[i]:
            out[w] = 2
            w = _string(out, w + 1, keys, key_start, key_ends[i])
        else:
            out[w] = 0
            w += 1
        key_start = key_ends[i] + 1
        for j in range(model.shape[0]):
            out[w] = model[j]
            w += 1
        f64[0] = np.float64(scores[i, score_index]) if k > 0 else 0.0
        for j in range(8):
            out[w] = tmp[j]
            w += 1
        if k > 0:
            w = _varint(out, w, np.int64(k))
            for c in range(k):
                f32[0] = scores[i, c]
                for j in range(4):
                    out[w] = tmp[j]
                    w += 1
        out[w] = 0
        w += 1
        li = label_idx[i]
        w = _string(out, w, labels, 0 if li == 0 else label_ends[li - 1] + 1, label_ends[li])
        t = event_time[i]
        w = _varint(out, w, t)
        w = _varint(out, w, processed_time)
        f64[0] = np.float64(processed_time - t)
        for j in range(8):
            out[w] = tmp[j]
            w += 1
        r = i if tail.shape[0] > 1 else 0
        for j in range(tail.shape[1]):
            out[w] = tail[r, j]
            w += 1
        out_ends[i] = w
    return w


@njit(cache=True, nogil=True)
def marshal_list(src, n, ends, out):  # type: ignore[no-untyped-def]
    """Write the ``n`` records of ``src`` (record ``i`` ends at ``ends[i]``) to ``out`` as
    the ``marshal`` serialisation of a list of ``bytes`` (unchanged since
    Python 2: ``[``, a little-endian int32 count, then per item ``s``, an int32 length and
    the bytes); returns the bytes written. ``out`` needs ``len(src) + 5 * (n + 1)``."""
    out[0] = 0x5B  # "[": TYPE_LIST
    w = _int32(out, 1, n)
    start = 0
    for i in range(n):
        stop = ends[i]
        out[w] = 0x73  # "s": TYPE_STRING, a bytes object
        w = _int32(out, w + 1, stop - start)
        out[w : w + stop - start] = src[start:stop]
        w += stop - start
        start = stop
    return w


@njit(cache=True, nogil=True)
def _int32(out, w, value):  # type: ignore[no-untyped-def]
    for k in range(4):
        out[w + k] = np.uint8((value >> (8 * k)) & 0xFF)
    return w + 4
