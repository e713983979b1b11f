"""The latency phases: events produced at fixed rates with ``event_time`` = the wall clock
at send while a worker runs, after its drain; and the rows of the phases repeated over
rounds (full runs), on which the p99 target is judged."""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import TYPE_CHECKING, Any

from .config import Params
from .figures import _drain_rate
from .watch import Outputs, wait_for

if TYPE_CHECKING:
    from .workload import Workload


def run_phases(
    name: str,
    p: Params,
    load: Workload,
    outputs: Outputs,
    proc: subprocess.Popen[bytes],
    in_t: str,
    total: int,
    extra_rates: tuple[float, ...],
    only_rate: float | None,
    sweep: tuple[float, ...],
) -> tuple[str, list[dict[str, Any]], int]:
    """After a drain of ``total`` events: one phase at ``p.latency_share`` of this system's
    drain rate (or at ``only_rate`` alone), one at each of ``extra_rates`` and, for
    streamproc, at the ``sweep`` rates below the main one, lowest first (latency against
    load). Returns (status, the phases, events sent)."""
    drained = outputs.read(total)
    rate = _drain_rate(p, sorted(ts for ts, _, _ in drained), total) or 1_000.0
    del drained
    main_rate = p.latency_share * rate if only_rate is None else only_rate
    rates = sorted({main_rate, *extra_rates})
    if name == "streamproc" and only_rate is None:
        rates = sorted({*[r for r in sweep if r < 0.9 * main_rate], *rates})
    phases: list[dict[str, Any]] = []
    lat_sent = 0
    status = "ok"
    for i, r in enumerate(rates):
        start_ms = int(time.time() * 1000)
        sent, elapsed = load.paced(in_t, int(r * p.latency_s), r, seed=5 + i)
        lat_sent += sent
        phases.append({
            "main": r == main_rate, "target_rate": round(r, 1),
            "achieved_rate": round(sent / elapsed, 1), "sent": sent,
            "start_ms": start_ms, "end_ms": int(time.time() * 1000),
        })  # fmt: skip
        catch_up = 15.0 + lat_sent / rate
        status = wait_for(outputs, total + lat_sent, time.monotonic() + catch_up, proc)
        if status != "ok":
            status = f"latency phase at {r:,.0f}/s {status}"
            break
    return status, phases, lat_sent


ROUND_KEYS = ("achieved_rate", "p50_ms", "p99_ms", "input_p99_ms", "processor_p50_ms",
              "processor_p99_ms", "worker_cores", "machine_cores")  # fmt: skip


def _main_rate(results: dict[str, dict[str, Any]]) -> float | None:
    """streamproc's main latency-phase rate in the first round (None if it had none)."""
    return next((float(ph["target_rate"]) for ph in results.get("streamproc", {})
                 .get("latency_phases", []) if ph["main"]), None)  # fmt: skip


def _phase_at(result: dict[str, Any], rate: float | None) -> dict[str, Any] | None:
    """A result's latency phase at ``rate`` (None if there is none)."""
    if rate is None:
        return None
    phases = result.get("latency_phases", [])
    return next((ph for ph in phases if abs(ph["target_rate"] - rate) < 1.0), None)


def _round_row(round_no: int, ph: dict[str, Any]) -> dict[str, Any]:
    return {"round": round_no, **{k: ph.get(k) for k in ROUND_KEYS}}


def round_medians(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The median over rounds of every figure of ``ROUND_KEYS`` (rounds lacking it left out).

    >>> round_medians([{"p99_ms": 30.0}, {"p99_ms": 76.0}, {"p99_ms": 24.0, "p50_ms": 9.0}])
    {'p50_ms': 9.0, 'p99_ms': 30.0}
    """
    out = {}
    for k in ROUND_KEYS:
        vals = [r[k] for r in rows if r.get(k) is not None]
        if vals:
            out[k] = round(float(statistics.median(vals)), 2)
    return out


def phase_at_streamproc_rate(results: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """System ``name``'s latency at streamproc's main latency-phase rate, measured in this
    run: the median over its rounds' phases at that rate where there are several (full runs),
    else its first round's phase. ``p99_ms`` None (with ``status``) where it has none."""
    rate = _main_rate(results)
    out: dict[str, Any] = {"rate": rate}
    if rate is None:
        return {
            **out,
            "p99_ms": None,
            "status": "streamproc ran no latency phase (not run, or failed)",
        }
    r = results.get(name, {})
    rows = r.get("latency_rounds", [])
    if len(rows) > 1:
        med = round_medians(rows)
        return {**out, "rounds": len(rows), **{k: med.get(k) for k in ROUND_KEYS}}
    ph = _phase_at(r, rate)
    if ph is None:
        why = r.get("budget") or r.get("status") or "not run"
        return {**out, "p99_ms": None, "status": f"no phase at that rate ({why})"}
    return {**out, "rounds": 1, **{k: ph.get(k) for k in ROUND_KEYS}}
