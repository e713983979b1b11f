"""``AccuracyMonitor``: joins labels to predictions by event id, watches the error rate."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

import numpy as np
import numpy.typing as npt

from streamproc.drift.alerts import AlertEvent, AlertType
from streamproc.drift.base import Detector
from streamproc.drift.config import DriftConfig
from streamproc.drift.cusum import conservative_error_rate
from streamproc.drift.factory import make_error_detector
from streamproc.drift.monitors import AlertMaker


class _Log:
    """The recorded predictions: a ring of ``capacity`` rows, looked up by event id.

    Row ``seq`` (the ``seq``-th prediction recorded) lives in slot ``seq % capacity``
    until ``capacity`` later predictions overwrite it. Event ids map to their ``seq`` in
    three dicts of one generation each (``capacity`` predictions): the two newest cover
    every live row, the third remembers rows evicted since, so a label that comes after its
    prediction was evicted is told apart from one for an unknown id for at least
    ``capacity`` predictions after the eviction. Each batch costs a few dict and numpy
    calls whose per-row loops run in C: no Python per prediction or label.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.recorded = 0  # predictions recorded so far: the next row's seq
        self.pending = 0  # live rows that no label has joined yet
        self.gens: list[dict[str, int]] = [{}, {}, {}]  # newest first
        size = min(capacity, 4096)
        self.labels = np.empty(size, dtype=object)
        self.versions = np.empty(size, dtype=object)
        self.joined = np.zeros(size, dtype=np.bool_)

    def _grow(self, rows: int) -> None:
        """Room for slots ``[0, rows)`` (the ring reaches ``capacity`` only when used)."""
        size = self.labels.size
        if rows <= size:
            return
        new = min(self.capacity, max(rows, 2 * size))
        for name in ("labels", "versions", "joined"):
            old = getattr(self, name)
            arr = (
                np.empty(new, dtype=old.dtype) if old.dtype == object else np.zeros(new, old.dtype)
            )
            arr[:size] = old
            setattr(self, name, arr)

    def record(
        self,
        ids: Sequence[str],
        labels: Sequence[object] | npt.NDArray[np.object_],
        versions: Sequence[str | None] | None,
    ) -> int:
        """Append rows; returns how many unjoined rows they evicted."""
        evicted = 0
        n, cap, done = len(ids), self.capacity, 0
        while done < n:
            seq = self.recorded
            if seq and seq % cap == 0:  # a new generation begins
                self.gens = [{}, *self.gens[:2]]
            k = min(n - done, cap - seq % cap)  # up to the generation's end
            lo = seq % cap
            self._grow(lo + k)
            if seq >= cap:  # these slots held rows recorded one capacity ago
                evicted += k - int(np.count_nonzero(self.joined[lo : lo + k]))
            self.labels[lo : lo + k] = np.fromiter(labels[done : done + k], dtype=object, count=k)
            self.versions[lo : lo + k] = (
                None if versions is None
                else np.fromiter(versions[done : done + k], dtype=object, count=k)
            )  # fmt: skip
            self.joined[lo : lo + k] = False
            self.gens[0].update(zip(ids[done : done + k], range(seq, seq + k), strict=True))
            self.recorded += k
            done += k
        self.pending += n - evicted
        return evicted

    def take(self, ids: Sequence[str]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Each id's newest row, removed from the lookup: (slot, live). A row that is not
        live was evicted (its slot is -1 when the id is not known at all)."""
        n = len(ids)
        seqs = np.full(n, -1, dtype=np.int64)
        for gen in self.gens:  # every generation: a repeated id leaves no older row behind
            found = np.fromiter(map(gen.pop, ids, repeat(-1)), dtype=np.int64, count=n)
            np.maximum(seqs, found, out=seqs)
        live = seqs >= max(self.recorded - self.capacity, 0)  # -1 (unknown) never is
        slots = np.where(seqs >= 0, seqs % self.capacity, -1)
        # Each id's first label took its row from every generation, so a second label for
        # it in the same call finds none: the live slots are distinct.
        self.joined[slots[live]] = True
        self.pending -= int(np.count_nonzero(live))
        return slots, live


class AccuracyMonitor:
    """Joins labels to predictions by event id and watches the error rate.

    Predictions wait in a log of the last ``config.label_retention`` recorded; a label
    whose prediction is not there counts as ``unmatched`` (and also as ``late`` when that
    prediction was evicted before the label came). Matched labels feed the error-rate
    detector (a Bernoulli CUSUM by default) with 1 for a wrong prediction. An event id
    recorded again replaces its earlier prediction, which then counts as evicted when its
    row is reused.

    >>> am = AccuracyMonitor(DriftConfig(label_retention=2), reference_error_rate=0.1)
    >>> am.record_predictions(["a", "b", "c"], [1, 0, 1])
    >>> am.record_labels(["b", "c", "a", "x"], [0, 0, 1, 1])
    []
    >>> am.matched, am.unmatched, am.late, am.evicted, am.errors
    (2, 2, 1, 1, 1)

    During a rollout the version of each prediction comes along; joined labels are then
    grouped by version in :attr:`outcomes` (True where the prediction was right):

    >>> am.record_predictions(["d", "e"], [1, 0], versions=["1.0.0", "1.1.0"])
    >>> am.record_labels(["d", "e"], [1, 1])
    []
    >>> am.outcomes
    {'1.0.0': [True], '1.1.0': [False]}
    """

    def __init__(
        self, config: DriftConfig | None = None, *, reference_error_rate: float | None = None
    ) -> None:
        self.config = config or DriftConfig()
        self.capacity = self.config.label_retention
        p0 = reference_error_rate or self.config.reference_error_rate
        self.reference_error_rate = p0
        self._log = _Log(self.capacity)
        # Per model version, whether each joined label matched its prediction (only for
        # predictions recorded with a version); the owner takes and clears it.
        self.outcomes: dict[str, list[bool]] = {}
        self.matched = 0
        self.unmatched = 0
        self.late = 0
        self.evicted = 0
        self.errors = 0
        self._warm: list[float] = []
        self.detector: Detector | None = (
            None if p0 is None else make_error_detector(self.config, p0)
        )
        self._alerts = AlertMaker(AlertType.ACCURACY_DRIFT, [None], self.config)
        self._t = 0

    @property
    def pending(self) -> int:
        """Predictions recorded, not evicted, and not joined to a label yet."""
        return self._log.pending

    def record_predictions(
        self,
        event_ids: Sequence[str],
        predicted_labels: Sequence[object] | npt.NDArray[np.object_],
        versions: Sequence[str | None] | None = None,
    ) -> None:
        """Remember each event's predicted label (and, during a rollout, the model version
        that predicted it: :attr:`outcomes` then groups the joined labels by version)."""
        if len(predicted_labels) != len(event_ids) or (
            versions is not None and len(versions) != len(event_ids)
        ):
            raise ValueError("event_ids, predicted_labels and versions differ in length")
        self.evicted += self._log.record(event_ids, predicted_labels, versions)

    def record_labels(
        self,
        event_ids: Sequence[str],
        true_labels: Sequence[object] | npt.NDArray[np.object_],
        offsets: npt.NDArray[np.integer] | None = None,
    ) -> list[AlertEvent]:
        """Join labels to their predictions; returns new alerts. Labels of one call are
        fed to the detector in their order."""
        n = len(event_ids)
        if len(true_labels) != n:
            raise ValueError("event_ids and true_labels differ in length")
        if n == 0:
            return []
        slots, live = self._log.take(event_ids)
        k = int(np.count_nonzero(live))
        self.matched += k
        self.unmatched += n - k
        self.late += int(np.count_nonzero((slots >= 0) & ~live))
        if k == 0:
            return []
        rows = slots[live]
        truth = np.fromiter(true_labels, dtype=object, count=n)[live]
        wrong = np.asarray(self._log.labels[rows] != truth, dtype=np.bool_)
        self.errors += int(np.count_nonzero(wrong))
        versions = self._log.versions[rows]
        for version in dict.fromkeys(versions.tolist()):  # in order of first join
            if version is None:
                continue
            right = ~wrong[versions == version]
            self.outcomes.setdefault(version, []).extend(right.tolist())
        x = wrong.astype(np.float64)
        if offsets is not None:
            off = np.asarray(offsets, dtype=np.int64)[live]
        else:  # the matched labels' count
            off = np.arange(self.matched - k, self.matched, dtype=np.int64)
        if self.detector is None:
            need = self.config.accuracy_warmup_labels - len(self._warm)
            self._warm.extend(x[:need].tolist())
            x, off = x[need:], off[need:]
            if len(self._warm) < self.config.accuracy_warmup_labels:
                return []
            p0 = conservative_error_rate(int(sum(self._warm)), len(self._warm))
            self.reference_error_rate = p0
            self.detector = make_error_detector(self.config, p0)
            if x.size == 0:
                return []
        self.detector.update(x, off)
        self._t += x.size
        return self._alerts.make(self.detector.transitions, "accuracy")
