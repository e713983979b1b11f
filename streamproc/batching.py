"""Micro-batching: a pure window policy with an injected clock, and a thin driver.

The policy only counts events and compares times; it never sleeps or reads a clock.
A batch is released when it reaches ``max_size`` (SIZE), when its first event has waited
``max_wait_ms`` (TIME), or when its oldest event (by event time) is ``max_event_age_ms``
old (DEADLINE). The driver releases what is pending on REBALANCE and SHUTDOWN.

>>> p = WindowPolicy(max_size=3, max_wait_ms=5.0)
>>> p.add(2, now_ms=100.0)
[]
>>> p.deadline_ms()
105.0
>>> p.add(2, now_ms=101.0)       # the third event fills a batch; one stays pending
[(3, <ReleaseReason.SIZE: 'size'>)]
>>> p.due(now_ms=105.0) is None  # the pending event arrived at 101: due at 106
True
>>> p.due(now_ms=106.0)
<ReleaseReason.TIME: 'time'>
>>> p.cut(ReleaseReason.TIME)
(1, <ReleaseReason.TIME: 'time'>)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from streamproc.types import ReleaseReason

T = TypeVar("T")


@dataclass
class WindowPolicy:
    max_size: int
    max_wait_ms: float
    max_event_age_ms: float | None = None
    _pending: int = 0
    _opened_ms: float = math.inf  # arrival time of the oldest pending event
    _oldest_event_ms: float = math.inf  # event time of the oldest pending event
    # (arrival, event time, count) of pending chunks, to re-open after a SIZE cut.
    _chunks: deque[tuple[float, float, int]] = field(default_factory=deque)

    @property
    def pending(self) -> int:
        return self._pending

    def add(
        self, n: int, now_ms: float, oldest_event_ms: float | None = None
    ) -> list[tuple[int, ReleaseReason]]:
        """Account for ``n`` new events; return the SIZE releases they complete, in order."""
        if n <= 0:
            return []
        ev = math.inf if oldest_event_ms is None else oldest_event_ms
        self._chunks.append((now_ms, ev, n))
        self._pending += n
        self._recompute()
        out: list[tuple[int, ReleaseReason]] = []
        while self._pending >= self.max_size:
            out.append(self._take(self.max_size, ReleaseReason.SIZE))
        return out

    def deadline_ms(self) -> float | None:
        """When the pending events must be released, or None when nothing is pending."""
        if self._pending == 0:
            return None
        t = self._opened_ms + self.max_wait_ms
        if self.max_event_age_ms is not None:
            t = min(t, self._oldest_event_ms + self.max_event_age_ms)
        return t

    def due(self, now_ms: float) -> ReleaseReason | None:
        """The reason to release now, or None."""
        if self._pending == 0:
            return None
        if (
            self.max_event_age_ms is not None
            and now_ms >= self._oldest_event_ms + self.max_event_age_ms
        ):
            return ReleaseReason.DEADLINE
        if now_ms >= self._opened_ms + self.max_wait_ms:
            return ReleaseReason.TIME
        return None

    def cut(self, reason: ReleaseReason) -> tuple[int, ReleaseReason]:
        """Release everything pending (up to ``max_size``) for ``reason``."""
        return self._take(min(self._pending, self.max_size), reason)

    def _take(self, n: int, reason: ReleaseReason) -> tuple[int, ReleaseReason]:
        left = n
        while left and self._chunks:
            arrival, ev, k = self._chunks[0]
            if k <= left:
                self._chunks.popleft()
                left -= k
            else:
                self._chunks[0] = (arrival, ev, k - left)
                left = 0
        self._pending -= n
        self._recompute()
        return n, reason

    def _recompute(self) -> None:
        if not self._chunks:
            self._opened_ms = math.inf
            self._oldest_event_ms = math.inf
            return
        self._opened_ms = self._chunks[0][0]
        self._oldest_event_ms = min(ev for _, ev, _ in self._chunks)


@dataclass
class Released(Generic[T]):
    items: list[T]
    reason: ReleaseReason
    wait_ms: float


class MicroBatcher(Generic[T]):
    """Holds items for a :class:`WindowPolicy`; the caller waits on :meth:`timeout_s`.

    >>> clock = iter([0.0, 1.0, 2.0, 9.0]).__next__
    >>> b = MicroBatcher(WindowPolicy(max_size=2, max_wait_ms=5.0), clock=clock)
    >>> [r.items for r in b.add(["a"])]          # at t=0
    []
    >>> [r.items for r in b.add(["b", "c"])]     # at t=1: a and b fill a batch
    [['a', 'b']]
    >>> round(b.timeout_s(), 3)                  # at t=2: c is due at 6, 4 ms from now
    0.004
    >>> [(r.items, r.reason.value) for r in b.release_due()]   # at t=9
    [(['c'], 'time')]

    Items that arrived while the driver was busy wait from when it last looked:

    >>> clock = iter([20.0, 21.0]).__next__
    >>> b = MicroBatcher(WindowPolicy(max_size=10, max_wait_ms=5.0), clock=clock)
    >>> b.add(["d"], arrived_ms=14.0)            # at t=20, fetched since t=14: due at 19
    []
    >>> [(r.items, r.reason.value, r.wait_ms) for r in b.release_due()]   # at t=21
    [(['d'], 'time', 7.0)]
    """

    def __init__(self, policy: WindowPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock  # milliseconds
        # The items as they came, one (arrival time, items) chunk per add: no per-item work.
        self._chunks: deque[tuple[float, list[T]]] = deque()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(
        self,
        items: list[T],
        oldest_event_ms: float | None = None,
        arrived_ms: float | None = None,
    ) -> list[Released[T]]:
        """Hold ``items``; return the batches they fill.

        ``arrived_ms`` is the earliest the items can have arrived (default: now). A driver
        that was busy with a batch while they arrived passes the time it last looked, so
        that they wait ``max_wait_ms`` from then, not from when it got round to them;
        it is capped at now and at no earlier than the previous add's arrival.
        """
        now = self.clock()
        at = now if arrived_ms is None else min(now, arrived_ms)
        if self._chunks:
            at = max(at, self._chunks[-1][0])  # arrivals stay in order
        if items:
            self._chunks.append((at, items))
            self._count += len(items)
        return [self._pop(n, r, now) for n, r in self.policy.add(len(items), at, oldest_event_ms)]

    def timeout_s(self, idle_s: float = 0.5) -> float:
        """Seconds until the pending batch is due (0 if overdue); ``idle_s`` when empty."""
        deadline = self.policy.deadline_ms()
        if deadline is None:
            return idle_s
        return max(0.0, (deadline - self.clock()) / 1000.0)

    def release_due(self) -> list[Released[T]]:
        now = self.clock()
        reason = self.policy.due(now)
        if reason is None:
            return []
        n, r = self.policy.cut(reason)
        return [self._pop(n, r, now)]

    def release_all(self, reason: ReleaseReason) -> list[Released[T]]:
        """Release everything pending (REBALANCE, SHUTDOWN), in ``max_size`` pieces."""
        now = self.clock()
        out = []
        while self.policy.pending:
            n, r = self.policy.cut(reason)
            out.append(self._pop(n, r, now))
        return out

    def _pop(self, n: int, reason: ReleaseReason, now: float) -> Released[T]:
        """The ``n`` oldest items; ``waited_ms`` counts from the first one's arrival."""
        chunks = self._chunks
        first = chunks[0][0] if chunks else now
        items: list[T] = []
        while len(items) < n:
            arrived, chunk = chunks[0]
            need = n - len(items)
            if len(chunk) <= need:
                chunks.popleft()
                if not items and len(chunk) == n:
                    items = chunk  # the common case: one whole chunk is the batch
                else:
                    items.extend(chunk)
            else:
                items.extend(chunk[:need])
                chunks[0] = (arrived, chunk[need:])
        self._count -= n
        return Released(items, reason, now - first)
