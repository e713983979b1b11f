"""What the pipeline asks of a window store: one object holds the state of every partition
assigned to this process for one :class:`~streamproc.features.spec.FeaturesSpec`.

The contract (the reference in ``reference.py`` states it in plain Python):

* :meth:`WindowStore.process` takes one partition's events **in offset order** and returns,
  per event, the value of every definition from the state *before* that event (point in
  time), then adds the event to the state unless it is late.
* An event is *late* when its event time is below the partition's watermark (the largest
  event time accepted before it) less ``allowed_lateness``. A late event is still given
  values (from the state as it stands) but is not added to any window; it is counted.
* After each call, events that no future on-time event can see (event time at or below
  watermark - lateness - the largest window) are evicted; a key with nothing left is gone.
* :meth:`WindowStore.changes` returns what changed in a partition since the last call as
  changelog entries, ``(key, state bytes)`` or ``(key, None)`` for a key evicted, so that
  :meth:`WindowStore.restore` of the latest entry per key rebuilds the same state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ClosedWindow:
    """A tumbling or hopping window that the watermark (less lateness) has passed."""

    feature: str
    key: bytes
    start_ms: int
    end_ms: int
    value: float
    events: int


@dataclass
class FeatureResult:
    values: npt.NDArray[np.float64]  # (n, n_definitions), definitions' order; NaN: undefined
    late: npt.NDArray[np.bool_]  # (n,)
    closed: list[ClosedWindow] = field(default_factory=list)


@dataclass(frozen=True)
class StoreStats:
    keys: int
    bytes: int  # estimated memory of the partition's state
    late_events: int  # since the partition was assigned
    evicted_keys: int
    watermark_ms: int | None
    # events dropped because their key held ``FeaturesSpec.max_events_per_key`` events
    dropped_events: int = 0


class WindowStore(Protocol):
    def process(
        self,
        partition: int,
        keys: Sequence[bytes],
        event_time_ms: npt.NDArray[np.int64],
        values: Mapping[str, npt.NDArray[np.float64]],
    ) -> FeatureResult:
        """Values for one partition's events (offset order), then update the state."""
        ...

    def changes(self, partition: int, prefix: bytes = b"") -> list[tuple[bytes, bytes | None]]:
        """Changelog entries since the last call (key -> state, None: evicted), each state
        after ``prefix`` (the caller's framing: :meth:`restore` takes states without it)."""
        ...

    def restore(self, partition: int, entries: Iterable[tuple[bytes, bytes | None]]) -> int:
        """Rebuild a partition from changelog entries (later entries win); returns how many
        were read."""
        ...

    def revoke(self, partition: int) -> None:
        """Forget a partition (after its changes were flushed)."""
        ...

    def stats(self, partition: int) -> StoreStats: ...
