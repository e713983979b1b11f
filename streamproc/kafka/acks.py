"""at-least-once bookkeeping: which input offsets may be committed, given the delivery
reports of the records produced for them.

Each batch's records count down its own :class:`PendingBatch` as the broker acknowledges
them. Acknowledgements arrive out of order across output partitions, so input offsets move
only over the longest prefix of batches whose every record is acknowledged: a batch never
has its offsets committed while an earlier one still waits. No Kafka client here: the
runner wires :meth:`PendingBatch.ack` into ``Producer.produce(on_delivery=...)``.

>>> t = AckTracker()
>>> first = t.add({0: 10}, records=2)
>>> second = t.add({0: 20, 1: 5}, records=1)
>>> second.ack(None, None)        # the later batch is acknowledged first ...
>>> t.collect()                   # ... but nothing moves past the waiting one
{}
>>> first.ack(None, None); first.ack(None, None)
>>> t.collect()
{0: 20, 1: 5}
>>> t.pending_batches, t.collect()
(0, {})
"""

from __future__ import annotations

from collections import deque
from typing import Any


class PendingBatch:
    """One produced batch: its input offsets and how many records still await an ack."""

    __slots__ = ("errors", "offsets", "remaining")

    def __init__(self, offsets: dict[int, int], records: int, errors: list[str]) -> None:
        self.offsets = offsets  # input partition -> next offset to commit
        self.remaining = records
        self.errors = errors  # shared with the tracker

    def ack(self, err: Any, msg: Any) -> None:
        """A delivery report (the producer's ``on_delivery`` signature)."""
        self.remaining -= 1
        if err is not None:
            self.errors.append(f"{msg.topic()}[{msg.partition()}]: {err}" if msg else str(err))


class AckTracker:
    def __init__(self) -> None:
        self._pending: deque[PendingBatch] = deque()
        self._ready: dict[int, int] = {}
        self.errors: list[str] = []  # failed deliveries; the runner raises on any

    @property
    def pending_batches(self) -> int:
        return len(self._pending)

    def add(self, offsets: dict[int, int], records: int) -> PendingBatch:
        batch = PendingBatch(offsets, records, self.errors)
        self._pending.append(batch)
        return batch

    def collect(self) -> dict[int, int]:
        """Offsets newly safe to commit (partition -> next offset); empty if none."""
        pending, ready = self._pending, self._ready
        while pending and pending[0].remaining <= 0:
            for p, o in pending.popleft().offsets.items():
                if o > ready.get(p, -1):
                    ready[p] = o
        out, self._ready = ready, {}
        return out

    def clear(self) -> None:
        """Forget every pending batch (partitions lost: their new owner replays them)."""
        self._pending.clear()
        self._ready = {}
