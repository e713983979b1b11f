"""Prometheus metrics for one processor, in a registry of its own (nothing global).

>>> import numpy as np
>>> from streamproc.telemetry import BatchStats
>>> p = PrometheusSensor(pipeline="demo")
>>> p.on_batch(BatchStats(model="m", version="1.0.0", backend="onnxruntime", size=4,
...     predictions=3, rejects={"CORRUPT": 1}, release="size", wait_ms=2.0,
...     stage_s={"infer": 0.001}, latencies_ms=np.array([4.0, 5.0, 6.0])))
>>> p.registry.get_sample_value("streamproc_events_rejected_total",
...     {"pipeline": "demo", "reason": "CORRUPT"})
1.0
>>> labels = {"pipeline": "demo", "model": "m", "version": "1.0.0"}
>>> p.registry.get_sample_value("streamproc_end_to_end_latency_ms_bucket", {**labels, "le": "5.0"})
2.0
>>> p.registry.get_sample_value("streamproc_end_to_end_latency_ms_sum", labels)
15.0
>>> p.on_lag("tx", {0: 5, 1: 7}); p.on_lag("tx", {1: 2})  # partition 0 moved away
>>> lag = {"pipeline": "demo", "topic": "tx"}
>>> [p.registry.get_sample_value("streamproc_consumer_lag", {**lag, "partition": n}) for n in "01"]
[None, 2.0]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from streamproc.telemetry.health import HealthServer, Readiness, health_app
from streamproc.telemetry.sensor import BatchStats, Sensor

M = TypeVar("M", bound=MetricWrapperBase)

_LAT_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_STAGE_BUCKETS = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.5, 1)


class _ProcessCollector(Collector):
    """CPU seconds and RSS of this process, read at scrape time (psutil)."""

    def __init__(self, pipeline: str) -> None:
        import psutil

        self._proc = psutil.Process()
        self._pipeline = pipeline

    def collect(self):  # type: ignore[no-untyped-def]
        cpu = self._proc.cpu_times()
        g = GaugeMetricFamily("streamproc_process_cpu_seconds", "CPU seconds used",
                              labels=["pipeline"])  # fmt: skip
        g.add_metric([self._pipeline], cpu.user + cpu.system)
        yield g
        m = GaugeMetricFamily("streamproc_process_rss_bytes", "Resident memory",
                              labels=["pipeline"])  # fmt: skip
        m.add_metric([self._pipeline], self._proc.memory_info().rss)
        yield m


class GpuCollector(Collector):
    """Memory and utilisation of each GPU, read at scrape time from ``stats`` (the
    :func:`~streamproc.backends.nvml.gpu_stats` shape: a dict per GPU)."""

    def __init__(self, pipeline: str, stats: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        self._pipeline = pipeline
        self._stats = stats

    def collect(self):  # type: ignore[no-untyped-def]
        lg = ["pipeline", "gpu"]
        families = {
            "memory_used_bytes": GaugeMetricFamily("streamproc_gpu_memory_used_bytes",
                                                   "GPU memory in use", labels=lg),
            "memory_total_bytes": GaugeMetricFamily("streamproc_gpu_memory_total_bytes",
                                                    "GPU memory", labels=lg),
            "utilization_pct": GaugeMetricFamily("streamproc_gpu_utilization_percent",
                                                 "GPU busy time", labels=lg),
        }  # fmt: skip
        for gpu in self._stats():
            for key, family in families.items():
                if gpu.get(key) is not None:
                    family.add_metric([self._pipeline, str(gpu["index"])], float(gpu[key]))
        yield from families.values()


# Alert types whose series exist from the start (at 0), so that a rule's ``increase`` sees
# the first one (a series born at 1 has no increase) and a dashboard shows 0, not nothing.
_DRIFT_TYPES = ("input_drift", "prediction_drift", "accuracy_drift")


class PrometheusSensor(Sensor):
    """The processor's metrics. ``gpu_stats`` (a callable returning one dict per GPU, as
    :func:`~streamproc.backends.nvml.gpu_stats` does) adds the GPUs' memory and utilisation,
    read at scrape time."""

    def __init__(
        self,
        pipeline: str,
        registry: CollectorRegistry | None = None,
        gpu_stats: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.registry = registry or CollectorRegistry()
        r = self.registry
        lp = ["pipeline"]
        self.events_in = Counter("streamproc_events_in", "Events consumed", lp, registry=r)
        self.events_out = Counter("streamproc_events_out", "Predictions produced",
                                  [*lp, "model", "version"], registry=r)  # fmt: skip
        self.rejected = Counter("streamproc_events_rejected", "Events dead-lettered",
                                [*lp, "reason"], registry=r)  # fmt: skip
        self.labels_rejected = Counter("streamproc_labels_rejected",
                                       "Feedback records dead-lettered (not readable labels)",
                                       [*lp, "reason"], registry=r)  # fmt: skip
        self.batches = Counter("streamproc_batches", "Batches committed",
                               [*lp, "release"], registry=r)  # fmt: skip
        self.batch_size = Histogram("streamproc_batch_size", "Events per batch", lp,
                                    buckets=(1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
                                    registry=r)  # fmt: skip
        self.batch_wait = Histogram("streamproc_batch_wait_ms", "Time the oldest event waited",
                                    lp, buckets=_LAT_BUCKETS, registry=r)  # fmt: skip
        self.stage = Histogram("streamproc_stage_seconds", "Seconds per batch and stage",
                               [*lp, "stage", "model", "version", "backend"],
                               buckets=_STAGE_BUCKETS, registry=r)  # fmt: skip
        self.e2e = Histogram("streamproc_end_to_end_latency_ms",
                             "event_time to prediction produced", [*lp, "model", "version"],
                             buckets=_LAT_BUCKETS, registry=r)  # fmt: skip
        self.lag = Gauge("streamproc_consumer_lag", "Records behind the end",
                         [*lp, "topic", "partition"], registry=r)  # fmt: skip
        self.model_info = Info("streamproc_model", "Loaded model", lp, registry=r)
        self.registry_retries = Counter("streamproc_registry_retries", "Registry retries", lp,
                                        registry=r)  # fmt: skip
        self.fallbacks = Counter("streamproc_decoder_fallbacks", "Schemas not compiled",
                                 lp, registry=r)  # fmt: skip
        self.kernel_compile = Gauge("streamproc_decoder_kernel_compile_seconds",
                                    "Build (or cache load) time of a writer schema's kernel",
                                    [*lp, "schema_id"], registry=r)  # fmt: skip
        self.alerts = Counter("streamproc_alerts", "Alerts raised",
                              [*lp, "type", "severity", "state"], registry=r)  # fmt: skip
        self.alerts_undelivered = Counter("streamproc_alerts_undelivered",
                                          "Alerts not written to the alerts topic (serve)",
                                          [*lp, "type"], registry=r)  # fmt: skip
        self.alerts_firing = Gauge("streamproc_alerts_firing", "Alerts firing now (not resolved)",
                                   [*lp, "type"], registry=r)  # fmt: skip
        fp = [*lp, "partition"]
        self.feature_keys = Gauge("streamproc_feature_state_keys",
                                  "Windowed features: keys in a partition's state", fp,
                                  registry=r)  # fmt: skip
        self.feature_bytes = Gauge("streamproc_feature_state_bytes",
                                   "Windowed features: estimated bytes of a partition's state",
                                   fp, registry=r)  # fmt: skip
        self.feature_evicted = Gauge("streamproc_feature_evicted_keys",
                                     "Windowed features: keys evicted since the partition "
                                     "was assigned", fp, registry=r)  # fmt: skip
        self.feature_restore_s = Gauge("streamproc_feature_restore_seconds",
                                       "Windowed features: time of the partition's last restore",
                                       fp, registry=r)  # fmt: skip
        self.feature_restore_records = Gauge("streamproc_feature_restore_records",
                                             "Windowed features: changelog records read by the "
                                             "partition's last restore", fp,
                                             registry=r)  # fmt: skip
        self.feature_late = Counter("streamproc_feature_late_events",
                                    "Windowed features: events past the allowed lateness "
                                    "(scored, not added to the windows)", lp,
                                    registry=r)  # fmt: skip
        self.feature_discarded = Counter("streamproc_feature_discarded_keys",
                                         "Windowed features: keys of a changelog written from "
                                         "an earlier topic of the input's name, discarded at "
                                         "restore", fp, registry=r)  # fmt: skip
        self.alerts.labels(pipeline, "rollback", "CRITICAL", "firing")
        for type_ in _DRIFT_TYPES:
            self.alerts_firing.labels(pipeline, type_)
        self._firing: dict[tuple[str, str | None], bool] = {}
        self._server: HealthServer | None = None
        self._lag_parts: dict[str, set[int]] = {}  # topic -> partitions with a lag series
        self.gauges: dict[str, Gauge] = {}
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        r.register(_ProcessCollector(pipeline))
        if gpu_stats is not None:
            r.register(GpuCollector(pipeline, gpu_stats))

    def _child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, looked up once: ``labels()`` takes a lock and builds
        a key on every call, and a batch makes about ten of them."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child  # type: ignore[return-value]  # the key's metric made it

    def on_batch(self, stats: BatchStats) -> None:
        p, c = self.pipeline, self._child
        c(self.events_in, p).inc(stats.size)
        if stats.by_version:
            for version, n in stats.by_version.items():
                c(self.events_out, p, stats.model, version).inc(n)
        elif stats.predictions:
            c(self.events_out, p, stats.model, stats.version).inc(stats.predictions)
        for reason, n in stats.rejects.items():
            c(self.rejected, p, reason).inc(n)
        for reason, n in stats.label_rejects.items():
            c(self.labels_rejected, p, reason).inc(n)
        c(self.batches, p, stats.release).inc()
        c(self.batch_size, p).observe(stats.size)
        c(self.batch_wait, p).observe(stats.wait_ms)
        for stage, secs in stats.stage_s.items():
            c(self.stage, p, stage, stats.model, stats.version, stats.backend).observe(secs)
        if len(stats.latencies_ms):
            # One observe per bucket, not per event: histogram of the batch, then add.
            self._observe_many(c(self.e2e, p, stats.model, stats.version), stats.latencies_ms)

    @staticmethod
    def _observe_many(hist: Histogram, values: np.ndarray) -> None:
        """Observe a whole batch at once (prometheus_client has no bulk observe).

        Its histogram keeps one non-cumulative count per upper bound and a sum; we add the
        batch's per-bucket counts and its sum to them, which is what observing each value
        would do, at per-bucket instead of per-event cost.
        """
        bounds = np.asarray(hist._upper_bounds)  # type: ignore[attr-defined]
        counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
        for i in np.flatnonzero(counts):
            hist._buckets[i].inc(int(counts[i]))  # type: ignore[attr-defined]
        hist._sum.inc(float(values.sum()))  # type: ignore[attr-defined]

    def on_lag(self, topic: str, lag: Mapping[int, int]) -> None:
        """The lag of the partitions this replica owns now; the series of those it no longer
        owns go (else a moved partition's last value would stay and count twice in a sum
        over replicas)."""
        for part, n in lag.items():
            self.lag.labels(self.pipeline, topic, str(part)).set(n)
        gone = self._lag_parts.get(topic, set()) - set(lag)
        for part in gone:
            self.lag.remove(self.pipeline, topic, str(part))
        self._lag_parts[topic] = set(lag)

    def on_model(self, name: str, version: str, backend: str, device: str) -> None:
        self.model_info.labels(self.pipeline).info(
            {"name": name, "version": version, "backend": backend, "device": device}
        )

    def on_registry_retry(self, attempt: int, delay_s: float) -> None:
        self.registry_retries.labels(self.pipeline).inc()

    def on_decoder_fallback(self, schema_id: int) -> None:
        self.fallbacks.labels(self.pipeline).inc()

    def on_decoder_kernel(self, schema_id: int, compile_s: float) -> None:
        self.kernel_compile.labels(self.pipeline, str(schema_id)).set(compile_s)

    def on_alert(self, type_: str, severity: str, feature: str | None, firing: bool) -> None:
        self.alerts.labels(self.pipeline, type_, severity, "firing" if firing else "resolved").inc()
        if type_ == "rollback":  # an event, never resolved: the counter says it happened
            return
        # Firing and resolving come once per state change of a (type, feature) detector; a
        # repeat of the same state changes nothing, so the gauge never drifts below zero.
        key = (type_, feature)
        if self._firing.get(key, False) != firing:
            self._firing[key] = firing
            g = self.alerts_firing.labels(self.pipeline, type_)
            g.inc() if firing else g.dec()

    def on_alert_undelivered(self, type_: str) -> None:
        self.alerts_undelivered.labels(self.pipeline, type_).inc()

    def on_gauge(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        g = self.gauges.get(name)
        if g is None:
            g = Gauge(name, name, ["pipeline", *labels], registry=self.registry)
            self.gauges[name] = g
        g.labels(self.pipeline, *labels.values()).set(value)

    def on_feature_state(self, partition: int, keys: int, size: int, evicted: int) -> None:
        part = str(partition)
        if not (keys or size or evicted):  # revoked: its series go (another replica has it)
            for g in (self.feature_keys, self.feature_bytes, self.feature_evicted):
                with contextlib.suppress(KeyError):
                    g.remove(self.pipeline, part)
            return
        self.feature_keys.labels(self.pipeline, part).set(keys)
        self.feature_bytes.labels(self.pipeline, part).set(size)
        self.feature_evicted.labels(self.pipeline, part).set(evicted)

    def on_feature_restore(self, partition: int, records: int, seconds: float) -> None:
        self.feature_restore_s.labels(self.pipeline, str(partition)).set(seconds)
        self.feature_restore_records.labels(self.pipeline, str(partition)).set(records)

    def on_feature_late(self, events: int) -> None:
        self.feature_late.labels(self.pipeline).inc(events)

    def on_feature_discarded(self, partition: int, keys: int) -> None:
        self.feature_discarded.labels(self.pipeline, str(partition)).inc(keys)

    def serve(self, port: int, host: str = "127.0.0.1", readiness: Readiness | None = None) -> int:
        """Serve /metrics, /healthz and /readyz (from ``readiness``: see
        :mod:`~streamproc.telemetry.health`) over HTTP from a daemon thread; returns the bound
        port (pass 0 for a free one)."""
        self._server = HealthServer(health_app(self.registry, readiness), port, host)
        return self._server.port

    def close(self) -> None:
        """Stop serving (nothing when :meth:`serve` was not called)."""
        if self._server is not None:
            self._server.close()
            self._server = None
