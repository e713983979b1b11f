"""The figures of one run, from the topics' broker append times and the worker's samples:
events/s, CPU and memory of the drain, and each latency phase's end-to-end, input-side and
processor-side percentiles."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import numpy as np
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME
from systems.shared import to_ms

from streamproc.kafka.registry import Registry

from .config import Params
from .watch import Sampler


def _drain_rate(p: Params, drain: list[int], total: int) -> float | None:
    """events/s between the warm-up's last output and the drain's last, by append time."""
    if len(drain) <= p.warmup + 1:
        return None
    last = min(len(drain), total) - 1
    secs = max((drain[last] - drain[p.warmup - 1]) / 1000.0, 1e-3)
    return (last - (p.warmup - 1)) / secs


def _figures(
    p: Params,
    records: list[tuple[int, int, bytes]],
    total: int,
    phases: list[dict[str, Any]],
    lat_sent: int,
    sampler: Sampler,
    t_spawn: float,
    inputs: list[tuple[int, int, bytes]] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"outputs": len(records)}
    if records and any(kind != TIMESTAMP_LOG_APPEND_TIME for _, kind, _ in records):
        out["warning"] = "output timestamps are not LogAppendTime"
    lat_start_ms = phases[0]["start_ms"] if phases else None
    cut = lat_start_ms if lat_start_ms is not None else 2**62
    drain = sorted(ts for ts, _, _ in records if ts < cut)
    out["drain_outputs"] = len(drain)
    if len(drain) > p.warmup + 1:
        last = min(len(drain), total) - 1
        t_a, t_b = drain[p.warmup - 1] / 1000.0, drain[last] / 1000.0
        events = last - (p.warmup - 1)
        secs = max(t_b - t_a, 1e-3)
        cpu = sampler.at(t_b, 1) - sampler.at(t_a, 1)
        busy = sampler.at(t_b, 3) - sampler.at(t_a, 3)
        known = sampler.at(t_b, 4) - sampler.at(t_a, 4)
        out.update({
            "events_per_s": round(events / secs, 1),
            "measured_events": events,
            "drain_s": round(secs, 3),
            "cpu_s_per_million": round(cpu / events * 1e6, 2),
            "cpu_cores_used": round(cpu / secs, 2),
            # CPU of everything but this worker, the broker/registry and the harness:
            # other users of the shared machine, in cores.
            "others_cores": round(max(busy - cpu - known, 0.0) / secs, 2),
            "startup_s": round(drain[0] / 1000.0 - t_spawn, 2),
            "events_per_s_incl_startup": round(min(len(drain), total) / (t_b - t_spawn), 1),
        })  # fmt: skip
    if lat_start_ms is not None:
        lat_all, sent_all, key_all = _latencies(
            [(ts, v) for ts, _, v in records if ts >= lat_start_ms]
        )
        # The input side of each event (its input record's append time minus event_time)
        # and the processor side (output append time minus input append time), joined on
        # (event_id, event_time).
        in_lat, in_sent, in_key = _latencies([(ts, v) for ts, _, v in inputs or []])
        order = np.argsort(in_key, kind="stable")
        in_key, in_append = in_key[order], (in_lat + in_sent)[order]
        out["latency_events"] = len(lat_all)
        out["latency_sent"] = lat_sent
        for ph in phases:
            sel = (sent_all >= ph["start_ms"]) & (sent_all <= ph["end_ms"])
            lat, sent_ms = lat_all[sel], sent_all[sel]
            ph["events"] = int(sel.sum())
            in_sel = (in_sent >= ph["start_ms"]) & (in_sent <= ph["end_ms"])
            if in_sel.any():
                ph["input_p50_ms"], ph["input_p99_ms"] = (
                    round(float(v), 2) for v in np.percentile(in_lat[in_sel], [50, 99])
                )
            if len(in_key) and len(lat):
                at = np.minimum(np.searchsorted(in_key, key_all[sel]), len(in_key) - 1)
                hit = in_key[at] == key_all[sel]
                proc = (lat + sent_ms)[hit] - in_append[at[hit]]
                ph["joined"] = int(hit.sum())
                if len(proc):
                    ph["processor_p50_ms"], ph["processor_p99_ms"] = (
                        round(float(v), 2) for v in np.percentile(proc, [50, 99])
                    )
            a, b = ph["start_ms"] / 1000.0, ph["end_ms"] / 1000.0
            # whole-machine and worker CPU during the phase, in cores (of os.cpu_count())
            ph["machine_cores"] = round((sampler.at(b, 3) - sampler.at(a, 3)) / (b - a), 2)
            ph["worker_cores"] = round((sampler.at(b, 1) - sampler.at(a, 1)) / (b - a), 2)
            ph["broker_harness_cores"] = round((sampler.at(b, 4) - sampler.at(a, 4)) / (b - a), 2)
            if len(lat):
                p50, p99 = np.percentile(lat, [50, 99])
                ph.update({"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2),
                           "max_ms": round(float(lat.max()), 2)})  # fmt: skip
                # p50 per second of the phase (by event_time): shows stalls and trends
                second = (sent_ms - ph["start_ms"]) // 1000
                ph["p50_ms_by_second"] = [
                    round(float(np.median(lat[second == k])), 1) for k in np.unique(second).tolist()
                ]
            if ph["main"]:
                out["latency_phase_rate"] = ph["achieved_rate"]
                for k in ("p50_ms", "p99_ms", "max_ms", "p50_ms_by_second"):
                    if k in ph:
                        out[k] = ph[k]
        out["latency_phases"] = phases
    return out


_WRITERS: dict[int, Any] = {}
_REGISTRY: list[Registry] = []


def _latencies(records: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Append time minus the input event_time carried in the record, those event times,
    and a key per record: the hash of (event_id, event_time), the same for an input
    event and its Prediction (unique within a run: a reused pool event carries a later
    event_time)."""
    out, sent, keys = [], [], []
    for ts, value in records:
        if len(value) < 5 or value[0] != 0:
            continue
        sid = int.from_bytes(value[1:5], "big")
        schema = _WRITERS.get(sid)
        if schema is None:
            raw = _REGISTRY[0].schema(sid)
            schema = _WRITERS[sid] = fastavro.parse_schema(raw)
        rec = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None)
        t = to_ms(rec["event_time"])  # type: ignore[index,call-overload]
        out.append(ts - t)
        sent.append(t)
        keys.append(hash((rec["event_id"], t)))  # type: ignore[index]
    return (np.asarray(out, dtype=np.float64), np.asarray(sent, dtype=np.int64),
            np.asarray(keys, dtype=np.int64))  # fmt: skip
