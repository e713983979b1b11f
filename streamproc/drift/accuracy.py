"""``AccuracyMonitor``: joins labels to predictions by event id, watches the error rate."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from streamproc.drift.alerts import AlertEvent, AlertType
from streamproc.drift.base import Detector
from streamproc.drift.config import DriftConfig
from streamproc.drift.cusum import conservative_error_rate
from streamproc.drift.factory import make_error_detector
from streamproc.drift.monitors import AlertMaker


class AccuracyMonitor:
    """Joins labels to predictions by event id and watches the error rate.

    Predictions wait in an LRU of ``config.label_retention`` entries; a label whose
    prediction is not there counts as ``unmatched`` (and also as ``late`` when that
    prediction was evicted before the label came). Matched labels feed the error-rate
    detector (a Bernoulli CUSUM by default) with 1 for a wrong prediction.

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
        self._preds: OrderedDict[str, tuple[object, str | None]] = OrderedDict()
        # Per model version, whether each joined label matched its prediction (only for
        # predictions recorded with a version); the owner takes and clears it.
        self.outcomes: dict[str, list[bool]] = {}
        self._evicted_ids: OrderedDict[str, None] = OrderedDict()
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
        return len(self._preds)

    def record_predictions(
        self,
        event_ids: Sequence[str],
        predicted_labels: Sequence[object],
        versions: Sequence[str | None] | None = None,
    ) -> None:
        """Remember each event's predicted label (and, during a rollout, the model version
        that predicted it: :attr:`outcomes` then groups the joined labels by version)."""
        preds = self._preds
        vers = versions if versions is not None else [None] * len(event_ids)
        for eid, label, version in zip(event_ids, predicted_labels, vers, strict=True):
            if eid in preds:
                preds.move_to_end(eid)
            preds[eid] = (label, version)
            if len(preds) > self.capacity:
                old, _ = preds.popitem(last=False)
                self.evicted += 1
                self._evicted_ids[old] = None
                if len(self._evicted_ids) > self.capacity:
                    self._evicted_ids.popitem(last=False)

    def record_labels(
        self,
        event_ids: Sequence[str],
        true_labels: Sequence[object],
        offsets: npt.NDArray[np.integer] | None = None,
    ) -> list[AlertEvent]:
        errs: list[float] = []
        offs: list[int] = []
        for i, (eid, label) in enumerate(zip(event_ids, true_labels, strict=True)):
            pred = self._preds.pop(eid, None)
            if pred is None:
                self.unmatched += 1
                if eid in self._evicted_ids:
                    self.late += 1
                    del self._evicted_ids[eid]
                continue
            self.matched += 1
            predicted, version = pred
            wrong = predicted != label
            if version is not None:
                self.outcomes.setdefault(version, []).append(not wrong)
            self.errors += int(wrong)
            errs.append(1.0 if wrong else 0.0)
            offs.append(int(offsets[i]) if offsets is not None else self.matched - 1)
        if not errs:
            return []
        x = np.array(errs)
        off = np.array(offs, dtype=np.int64)
        if self.detector is None:
            need = self.config.accuracy_warmup_labels - len(self._warm)
            self._warm.extend(errs[:need])
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
