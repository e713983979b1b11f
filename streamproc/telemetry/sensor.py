"""The sensor interface: the pipeline reports once per batch, never per event.

:class:`Sensor` does nothing; subclasses override what they record.

>>> import numpy as np
>>> s = CountingSensor()
>>> s.on_batch(BatchStats(model="m", version="1.0.0", backend="onnxruntime", size=3,
...     predictions=2, rejects={"BAD_MAGIC": 1}, release="size", wait_ms=1.0,
...     stage_s={"decode": 0.001}, latencies_ms=np.array([3.0, 5.0])))
>>> s.events_in, s.events_out, dict(s.rejected)
(3, 2, {'BAD_MAGIC': 1})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(slots=True)
class BatchStats:
    model: str
    version: str
    backend: str
    size: int  # events in
    predictions: int  # events scored and produced
    rejects: Mapping[str, int]  # dead letters by reason name
    release: str  # ReleaseReason value
    wait_ms: float
    stage_s: Mapping[str, float]  # seconds spent per stage for the whole batch
    latencies_ms: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    # predictions per model version, when a rollout splits traffic
    by_version: Mapping[str, int] = field(default_factory=dict)
    # feedback records that were not readable labels, dead-lettered with this batch
    label_rejects: Mapping[str, int] = field(default_factory=dict)


class Sensor:
    """No-op base: every hook is optional to implement."""

    def on_batch(self, stats: BatchStats) -> None:
        """A batch was produced and committed."""

    def on_lag(self, topic: str, lag: Mapping[int, int]) -> None:
        """Consumer lag per partition."""

    def on_model(self, name: str, version: str, backend: str, device: str) -> None:
        """A model version was loaded."""

    def on_registry_retry(self, attempt: int, delay_s: float) -> None:
        """The registry was unreachable; processing pauses and retries."""

    def on_decoder_fallback(self, schema_id: int) -> None:
        """A writer schema could not be compiled; the reference decoder serves it."""

    def on_decoder_kernel(self, schema_id: int, compile_s: float) -> None:
        """A writer schema's specialised kernel took over; it took ``compile_s`` to build
        (or to load from the disk cache)."""

    def on_alert(self, type_: str, severity: str, feature: str | None, firing: bool) -> None:
        """An alert fired or resolved."""

    def on_alert_undelivered(self, type_: str) -> None:
        """An alert of ``type_`` could not be written to the alerts topic (``streamproc
        serve``, whose alerts are not in a batch's transaction)."""

    def on_gauge(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        """A free-form gauge (GPU telemetry, drift statistics)."""

    def on_feature_state(self, partition: int, keys: int, size: int, evicted: int) -> None:
        """Windowed features: a partition's state now (keys, estimated bytes, keys evicted
        since it was assigned); zeros once it is revoked."""

    def on_feature_restore(self, partition: int, records: int, seconds: float) -> None:
        """Windowed features: a partition's state was restored from its changelog."""

    def on_feature_late(self, events: int) -> None:
        """Windowed features: events later than the allowed lateness (scored, not added)."""

    def on_feature_discarded(self, partition: int, keys: int) -> None:
        """Windowed features: a partition's changelog was written from an earlier topic of
        the input's name (deleted and created again): its ``keys`` were discarded."""


class SensorGroup(Sensor):
    """Fan one call out to several sensors."""

    def __init__(self, sensors: Iterable[Sensor]) -> None:
        self.sensors = list(sensors)

    def on_batch(self, stats: BatchStats) -> None:
        for s in self.sensors:
            s.on_batch(stats)

    def on_lag(self, topic: str, lag: Mapping[int, int]) -> None:
        for s in self.sensors:
            s.on_lag(topic, lag)

    def on_model(self, name: str, version: str, backend: str, device: str) -> None:
        for s in self.sensors:
            s.on_model(name, version, backend, device)

    def on_registry_retry(self, attempt: int, delay_s: float) -> None:
        for s in self.sensors:
            s.on_registry_retry(attempt, delay_s)

    def on_decoder_fallback(self, schema_id: int) -> None:
        for s in self.sensors:
            s.on_decoder_fallback(schema_id)

    def on_decoder_kernel(self, schema_id: int, compile_s: float) -> None:
        for s in self.sensors:
            s.on_decoder_kernel(schema_id, compile_s)

    def on_alert(self, type_: str, severity: str, feature: str | None, firing: bool) -> None:
        for s in self.sensors:
            s.on_alert(type_, severity, feature, firing)

    def on_alert_undelivered(self, type_: str) -> None:
        for s in self.sensors:
            s.on_alert_undelivered(type_)

    def on_gauge(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        for s in self.sensors:
            s.on_gauge(name, value, labels)

    def on_feature_state(self, partition: int, keys: int, size: int, evicted: int) -> None:
        for s in self.sensors:
            s.on_feature_state(partition, keys, size, evicted)

    def on_feature_restore(self, partition: int, records: int, seconds: float) -> None:
        for s in self.sensors:
            s.on_feature_restore(partition, records, seconds)

    def on_feature_late(self, events: int) -> None:
        for s in self.sensors:
            s.on_feature_late(events)

    def on_feature_discarded(self, partition: int, keys: int) -> None:
        for s in self.sensors:
            s.on_feature_discarded(partition, keys)


class CountingSensor(Sensor):
    """In-memory totals: feeds MetricsSnapshot records and the demo's live view."""

    def __init__(self, latency_window: int = 4096) -> None:
        self.events_in = 0
        self.events_out = 0
        self.batches = 0
        self.rejected: Counter[str] = Counter()
        self.labels_rejected: Counter[str] = Counter()
        self.lag: dict[int, int] = {}
        self._lat = np.zeros(latency_window)
        self._lat_n = 0
        # Windowed features: per partition (keys, bytes, evicted), restores, late events.
        self.feature_state: dict[int, tuple[int, int, int]] = {}
        self.feature_restore_records = 0
        self.feature_restore_seconds = 0.0
        self.feature_late = 0

    def on_batch(self, stats: BatchStats) -> None:
        self.events_in += stats.size
        self.events_out += stats.predictions
        self.batches += 1
        if stats.rejects:
            self.rejected.update(stats.rejects)
        if stats.label_rejects:
            self.labels_rejected.update(stats.label_rejects)
        size = len(self._lat)
        lat = stats.latencies_ms[-size:]
        k = len(lat)
        if k:  # ring buffer: two slice copies, no index arrays
            start = self._lat_n % size
            first = min(k, size - start)
            self._lat[start : start + first] = lat[:first]
            self._lat[: k - first] = lat[first:]
            self._lat_n += k

    def on_lag(self, topic: str, lag: Mapping[int, int]) -> None:
        self.lag.update(lag)

    def on_feature_state(self, partition: int, keys: int, size: int, evicted: int) -> None:
        if keys or size or evicted:
            self.feature_state[partition] = (keys, size, evicted)
        else:
            self.feature_state.pop(partition, None)

    def on_feature_restore(self, partition: int, records: int, seconds: float) -> None:
        self.feature_restore_records += records
        self.feature_restore_seconds += seconds

    def on_feature_late(self, events: int) -> None:
        self.feature_late += events

    def latency_quantiles(self) -> tuple[float, float]:
        """(p50, p99) of recent end-to-end latencies in ms; zeros before any prediction."""
        n = min(self._lat_n, len(self._lat))
        if n == 0:
            return 0.0, 0.0
        p50, p99 = np.percentile(self._lat[:n], [50, 99])
        return float(p50), float(p99)
