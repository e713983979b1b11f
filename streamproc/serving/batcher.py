"""Concurrent requests micro-batched by the stream's :class:`~streamproc.batching.WindowPolicy`.

Each request brings ``k`` rows; the policy counts rows and releases a batch on SIZE (the
batch is full) or TIME (its first row waited ``max_wait_ms``), and on SHUTDOWN; a request
carries no event time the policy could compare with its clock, so ``max_event_age_ms``
(DEADLINE) does not apply: a row's wait is what the window bounds. A request's rows may span two
batches; it is answered when all of its rows are scored. One driver task forms batches on
the event loop and hands each to ``score`` in one worker thread, awaiting it: rows that
arrive meanwhile wait, and the next batch takes them at once when their window has passed
(larger batches under load, as in the stream). With an ``idle`` callable, the driver also
runs it in that thread whenever ``idle_s`` pass with no rows waiting (the service sends the
alerts a rollout guard decided between requests).

The queue is bounded: :meth:`AsyncBatcher.submit` refuses a request whose rows would take
the rows not yet answered past ``max_queue_rows`` (:class:`QueueFull`: the server answers
503 with Retry-After), and any request once :meth:`AsyncBatcher.close` has begun
(:class:`ShuttingDown`). ``close`` answers every request it accepted before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streamproc.batching import WindowPolicy
from streamproc.types import ReleaseReason

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The rows waiting and in flight would pass the bound."""


class ShuttingDown(Exception):
    """The batcher is closing: it answers what it holds and accepts nothing new."""


@dataclass(eq=False)
class Request:
    """One request's rows, and where their answers go."""

    features: npt.NDArray[np.float32]  # (k, n_features)
    keys: Sequence[bytes | None]  # one per row: the rollout routes by it
    version: str | None = None  # a version the request named (None: the rollout's routing)
    arrived_s: float = field(default_factory=time.perf_counter)
    # Filled in as its rows are scored: scores (k, K) and the version of each row.
    scores: npt.NDArray[np.float32] | None = None
    versions: list[str] = field(default_factory=list)
    remaining: int = 0
    future: asyncio.Future[Request] | None = None

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class Batch:
    """Rows of one or more requests: ``(request, start, stop)`` pieces, in arrival order."""

    pieces: list[tuple[Request, int, int]]
    reason: ReleaseReason
    wait_ms: float

    def __len__(self) -> int:
        return sum(stop - start for _, start, stop in self.pieces)

    def features(self) -> npt.NDArray[np.float32]:
        if len(self.pieces) == 1:
            r, a, b = self.pieces[0]
            return r.features[a:b]
        return np.concatenate([r.features[a:b] for r, a, b in self.pieces])

    def keys(self) -> list[bytes | None]:
        out: list[bytes | None] = []
        for r, a, b in self.pieces:
            out.extend(r.keys[a:b])
        return out


@dataclass
class Scores:
    """What ``score`` returns for a batch: one row of scores and one version per row."""

    scores: npt.NDArray[np.float32]
    versions: list[str]


def _ms() -> float:
    return time.monotonic() * 1000.0


class AsyncBatcher:
    """Batches :class:`Request` rows by ``policy``; ``score`` runs in one worker thread."""

    def __init__(
        self,
        policy: WindowPolicy,
        score: Callable[[Batch], Scores],
        max_queue_rows: int,
        clock_ms: Callable[[], float] = _ms,
        idle: Callable[[], None] | None = None,
        idle_s: float = 1.0,
    ) -> None:
        self.policy = policy
        self.score = score
        self.idle = idle
        self.idle_s = idle_s
        self.max_queue_rows = max_queue_rows
        self.clock_ms = clock_ms
        self.queued_rows = 0  # accepted, not yet answered
        self.batches = 0
        self.max_batch_rows = 0
        self._chunks: deque[tuple[Request, int, float]] = deque()  # (request, next row, arrival)
        self._ready: deque[Batch] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="streamproc-score")

    def start(self) -> None:
        """Start the driver on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._drive(), name="batcher")

    async def submit(self, request: Request) -> Request:
        """Queue ``request``'s rows; return it once every row has its score. Raises
        :class:`QueueFull`, :class:`ShuttingDown`, or what ``score`` raised on its batch."""
        k = len(request)
        if self._closing or self._task is None:
            raise ShuttingDown("the server is shutting down")
        if self.queued_rows + k > self.max_queue_rows:
            raise QueueFull(f"{self.queued_rows} rows queued, at most {self.max_queue_rows}")
        loop = asyncio.get_running_loop()
        request.future = fut = loop.create_future()
        request.remaining = k
        request.versions = [""] * k
        if k == 0:
            return request
        self.queued_rows += k
        now = self.clock_ms()
        self._chunks.append((request, 0, now))
        for n, reason in self.policy.add(k, now):
            self._ready.append(self._take(n, reason, now))
        self._wake.set()
        return await asyncio.shield(fut)  # a client that goes away leaves its rows in

    def _take(self, n: int, reason: ReleaseReason, now: float) -> Batch:
        pieces: list[tuple[Request, int, int]] = []
        first = self._chunks[0][2] if self._chunks else now
        left = n
        while left:
            req, start, at = self._chunks[0]
            stop = min(len(req), start + left)
            pieces.append((req, start, stop))
            left -= stop - start
            if stop == len(req):
                self._chunks.popleft()
            else:
                self._chunks[0] = (req, stop, at)
        return Batch(pieces, reason, now - first)

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        policy = self.policy
        while True:
            if self._ready:
                await self._run(loop, self._ready.popleft())
                continue
            now = self.clock_ms()
            reason = policy.due(now)
            if reason is None and self._closing and policy.pending:
                reason = ReleaseReason.SHUTDOWN
            if reason is not None:
                n, r = policy.cut(reason)
                self._ready.append(self._take(n, r, now))
                continue
            if self._closing:
                return
            deadline = policy.deadline_ms()
            self._wake.clear()
            if deadline is None:
                if self.idle is None:
                    await self._wake.wait()
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), self.idle_s)
                except TimeoutError:
                    await self._run_idle(loop)
                continue
            timeout = max(0.0, (deadline - now) / 1000.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _run_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.idle is not None
        try:
            await loop.run_in_executor(self._pool, self.idle)
        except Exception as exc:  # the next idle period tries again
            log.warning("the batcher's idle task failed: %s", exc)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: Batch) -> None:
        n = len(batch)
        self.batches += 1
        self.max_batch_rows = max(self.max_batch_rows, n)
        try:
            out = await loop.run_in_executor(self._pool, self.score, batch)
        except Exception as exc:  # every request of the batch gets the error
            for req, _, _ in batch.pieces:
                if req.future is not None and not req.future.done():
                    req.future.set_exception(exc)
                    self.queued_rows -= req.remaining
                    req.remaining = 0
            return
        at = 0
        for req, start, stop in batch.pieces:
            k = stop - start
            if req.future is None or req.future.done():  # failed in an earlier piece
                at += k
                continue
            if req.scores is None:
                req.scores = np.empty((len(req), out.scores.shape[1]), np.float32)
            req.scores[start:stop] = out.scores[at : at + k]
            req.versions[start:stop] = out.versions[at : at + k]
            at += k
            req.remaining -= k
            self.queued_rows -= k
            if req.remaining == 0:
                req.future.set_result(req)

    async def close(self) -> None:
        """Stop accepting; score and answer every accepted row; stop the worker."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._pool.shutdown(wait=True)
