"""The side records a batch makes besides its predictions: dead letters, alerts and metrics
snapshots, each one Avro record on its topic (schemas/DeadLetter.avsc, Alert.avsc,
MetricsSnapshot.avsc). Pure functions of what they record; the handler decides when."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamproc.codecs.encoder import encode_record
from streamproc.models.spec import ModelSpec
from streamproc.personal import Redactor
from streamproc.telemetry import CountingSensor
from streamproc.types import Alert, OutRecord


@dataclass(frozen=True, slots=True)
class Rejected:
    """Where a rejected record came from, what it held, and why it was rejected."""

    reason: str
    code: int
    detail: str | None
    topic: str
    partition: int
    offset: int
    schema_id: int | None
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


def dead_letter(
    rejected: Rejected,
    *,
    topic: str,
    schema_id: int,
    processor: str,
    now_ms: int,
    redactor: Redactor | None = None,
) -> OutRecord:
    """The ``DeadLetter`` for ``rejected``, keyed like the original, with the reason in a
    ``streamproc-reason`` header too (a consumer can route without decoding). With a
    ``redactor`` (personal fields configured) the original value is dropped and a personal
    key hashed, on the record and in it (streamproc.personal)."""
    r = rejected
    detail, key, value = r.detail or r.reason, r.key, r.value
    if redactor is not None:
        detail, key, value = redactor.detail(detail, value), redactor.key(key), None
    rec = {
        "reason": r.reason,
        "reason_code": r.code,
        "detail": detail,
        "source_topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "schema_id": r.schema_id,
        "key": key,
        "value": value,
        "headers": [{"key": k, "value": v} for k, v in r.headers],
        "processor": processor,
        "time": now_ms,
    }
    out = encode_record("DeadLetter", schema_id, rec)
    return OutRecord(topic, key, out, [("streamproc-reason", r.reason.encode())])


def alert(stamped: Alert, *, topic: str, schema_id: int) -> OutRecord:
    """The ``Alert`` record of a stamped alert, keyed by model, type and feature (so one
    alert's FIRING and RESOLVED share a partition)."""
    value = encode_record("Alert", schema_id, stamped.to_record())
    key = f"{stamped.model_name}/{stamped.type}/{stamped.feature or ''}".encode()
    return OutRecord(topic, key, value)


def metrics_snapshot(
    counters: CountingSensor,
    *,
    topic: str,
    schema_id: int,
    processor: str,
    pipeline: str,
    spec: ModelSpec,
    now_ms: int,
) -> OutRecord:
    """A ``MetricsSnapshot`` of the processor's counters and its process's CPU and memory."""
    import psutil

    c = counters
    proc = psutil.Process()
    cpu = proc.cpu_times()
    p50, p99 = c.latency_quantiles()
    rec = {
        "processor": processor,
        "pipeline": pipeline,
        "model_name": spec.name,
        "model_version": spec.version,
        "time": now_ms,
        "events_in": c.events_in,
        "events_out": c.events_out,
        "events_rejected": dict(c.rejected),
        "batches": c.batches,
        "mean_batch_size": c.events_in / c.batches if c.batches else 0.0,
        "p50_latency_ms": p50,
        "p99_latency_ms": p99,
        "consumer_lag": int(sum(c.lag.values())),
        "cpu_seconds": cpu.user + cpu.system,
        "rss_bytes": proc.memory_info().rss,
    }
    if c.feature_state or c.feature_restore_records or c.feature_late:  # windowed features
        state = list(c.feature_state.values())
        rec.update({
            "feature_state_keys": sum(s[0] for s in state),
            "feature_state_bytes": sum(s[1] for s in state),
            "feature_evicted_keys": sum(s[2] for s in state),
            "feature_late_events": c.feature_late,
            "feature_restore_records": c.feature_restore_records,
            "feature_restore_seconds": c.feature_restore_seconds,
        })  # fmt: skip
    value = encode_record("MetricsSnapshot", schema_id, rec)
    return OutRecord(topic, processor.encode(), value)
