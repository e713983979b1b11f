"""Fixed batch shapes: pad a batch up to a bucket size, split one larger than the largest.

TensorRT optimization profiles and CUDA graphs run fastest (or only) at a few known batch
sizes; these helpers map any ``n`` onto them and back. All pure functions.

>>> plan(300, (1, 8, 32, 64, 128, 256))
[(0, 256, 256), (256, 300, 64)]
>>> out = run_bucketed(np.arange(10, dtype=np.float32).reshape(5, 2), (4,), lambda b: b * 10)
>>> out.shape, out[-1].tolist()
((5, 2), [80.0, 90.0])
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T")
R = TypeVar("R")
Matrix = npt.NDArray[np.float32]


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n`` rows.

    >>> [bucket_for(n, (1, 8, 32)) for n in (1, 2, 8, 9, 32)]
    [1, 8, 8, 32, 32]
    >>> bucket_for(33, (1, 8, 32))
    Traceback (most recent call last):
    ...
    ValueError: 33 rows exceed the largest bucket 32; split with plan()
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"{n} rows exceed the largest bucket {buckets[-1]}; split with plan()")
    return buckets[i]


def plan(n: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(start, stop, bucket)`` chunks covering rows ``0..n``, in order.

    Full chunks of the largest bucket first, then the remainder padded to its bucket.

    >>> plan(1, (1, 8)), plan(8, (1, 8)), plan(17, (1, 8))
    ([(0, 1, 1)], [(0, 8, 8)], [(0, 8, 8), (8, 16, 8), (16, 17, 1)])
    >>> plan(0, (1, 8))
    []
    """
    largest = buckets[-1]
    chunks = []
    for start in range(0, n, largest):
        stop = min(start + largest, n)
        chunks.append((start, stop, bucket_for(stop - start, buckets)))
    return chunks


def pad_rows(batch: Matrix, size: int) -> Matrix:
    """``batch`` with zero rows appended up to ``size`` rows (itself when already that big).

    >>> pad_rows(np.ones((2, 3), dtype=np.float32), 4).sum(axis=1).tolist()
    [3.0, 3.0, 0.0, 0.0]
    """
    n = batch.shape[0]
    if n > size:
        raise ValueError(f"cannot pad {n} rows down to {size}")
    if n == size:
        return batch
    out = np.zeros((size, *batch.shape[1:]), dtype=batch.dtype)
    out[:n] = batch
    return out


def run_bucketed(batch: Matrix, buckets: Sequence[int], fn: Callable[[Matrix], Matrix]) -> Matrix:
    """Apply ``fn`` (which only accepts bucket-sized batches) to a batch of any size.

    Padding rows are dropped from ``fn``'s output; results stay in input order.

    >>> seen = []
    >>> def fn(b):
    ...     seen.append(len(b))
    ...     return b[:, :1]
    >>> run_bucketed(np.ones((11, 2), dtype=np.float32), (2, 4), fn).shape, seen
    ((11, 1), [4, 4, 4])
    """
    parts = [fn(pad_rows(batch[a:b], size))[: b - a] for a, b, size in plan(len(batch), buckets)]
    if not parts:
        raise ValueError("empty batch")
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def pipelined(
    items: Iterable[T],
    submit: Callable[[int, T], None],
    collect: Callable[[int], R],
    slots: int = 2,
) -> Iterator[R]:
    """Keep up to ``slots`` items in flight; yield their results in submission order.

    ``submit(slot, item)`` enqueues asynchronous work on ``slot``'s buffers; ``collect(slot)``
    waits for it and returns the result. With two slots the copy of item N+1 overlaps the
    compute of item N; a slot is reused only after its previous result was collected.

    >>> log = []
    >>> out = pipelined([10, 20, 30], lambda s, x: log.append(f"s{s}<-{x}"),
    ...                 lambda s: log.append(f"s{s}->") or s)
    >>> list(out), log
    ([0, 1, 0], ['s0<-10', 's1<-20', 's0->', 's0<-30', 's1->', 's0->'])
    """
    if slots < 1:
        raise ValueError("slots must be >= 1")
    in_flight: deque[int] = deque()
    for i, item in enumerate(items):
        slot = i % slots
        if len(in_flight) == slots:
            yield collect(in_flight.popleft())
        submit(slot, item)
        in_flight.append(slot)
    while in_flight:
        yield collect(in_flight.popleft())


Chunk = tuple[Matrix, tuple[int, int, int]]  # (the whole batch, (start, stop, bucket))


def pipelined_batches(
    batches: Iterable[Matrix],
    buckets: Sequence[int],
    submit: Callable[[int, Chunk], None],
    collect: Callable[[int], Matrix],
    slots: int = 2,
) -> Iterator[Matrix]:
    """Score a stream of batches chunk by chunk through :func:`pipelined`.

    Each batch is cut by :func:`plan`; ``submit(slot, (batch, (start, stop, bucket)))``
    enqueues one chunk and ``collect(slot)`` returns its ``stop - start`` output rows.
    Yields one output per input batch, in order, while the next chunks are in flight.

    >>> held = {}
    >>> def submit(slot, chunk):
    ...     batch, (a, b, size) = chunk
    ...     held[slot] = pad_rows(batch[a:b], size)[: b - a] + 1
    >>> outs = pipelined_batches(
    ...     [np.zeros((3, 1), np.float32), np.zeros((1, 1), np.float32)], (2,), submit, held.pop)
    >>> [o.ravel().tolist() for o in outs]
    [[1.0, 1.0, 1.0], [1.0]]
    """
    pending: deque[int] = deque()  # chunks per batch, for batches not yet yielded

    def chunks() -> Iterator[Chunk]:
        for batch in batches:
            if len(batch) == 0:
                raise ValueError("empty batch")
            parts = plan(len(batch), buckets)
            pending.append(len(parts))
            for part in parts:
                yield batch, part

    done: list[Matrix] = []
    for out in pipelined(chunks(), submit, collect, slots):
        done.append(out)
        while pending and len(done) >= pending[0]:
            k = pending.popleft()
            yield np.concatenate(done[:k]) if k > 1 else done[0]
            del done[:k]
