"""One system's run: its topics and backlog, the worker process, the drain, the latency
phases, the stop and the figures; and the repeated drains of full runs."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from systems.shared import WorkerConfig
from systems.streamproc_run import pipeline_yaml

from streamproc.kafka.admin import Admin

from .config import (
    BATCH,
    BENCH,
    LATENCY_ROUND_SYSTEMS,
    LATENCY_SWEEP,
    MODEL,
    PARTITIONS,
    PROFILED,
    QUIX_SITE,
    ROOT,
    Params,
    log,
)
from .figures import _figures
from .latency import _main_rate, _phase_at, _round_row, run_phases
from .watch import Outputs, Sampler, _vm_hwm, stop_process, wait_for

if TYPE_CHECKING:
    from .harness import Services
    from .workload import Workload


def _command(name: str, cfg: WorkerConfig, work: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    path = [str(BENCH)]
    if name == "streamproc":
        yaml_path = pipeline_yaml(cfg, work / f"{cfg.group_id}.yaml")
        cmd = [sys.executable, "-m", "streamproc", "run", "-c", str(yaml_path),
               "--log-level", "WARNING"]  # fmt: skip
        env.pop("STREAMPROC_KAFKA_BOOTSTRAP", None)  # the yaml names the services
        env.pop("STREAMPROC_SCHEMA_REGISTRY_URL", None)
        return cmd, env
    module = {"passthrough": "passthrough", "naive": "naive", "faust": "faust_agent",
              "quix": "quix_app", PROFILED: "streamproc_run"}[name]  # fmt: skip
    if name == "quix" and importlib.util.find_spec("quixstreams") is None:
        if not QUIX_SITE.is_dir():
            raise RuntimeError(
                "quixstreams is not installed: pip install quixstreams (or into an isolated "
                f"directory with: pip install --target {QUIX_SITE} quixstreams)"
            )
        path.append(str(QUIX_SITE))  # its confluent-kafka / pydantic shadow the venv's
    env["PYTHONPATH"] = os.pathsep.join([*path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cfg_path = work / f"{cfg.group_id}.json"
    cfg.save(cfg_path)
    return [sys.executable, "-m", f"systems.{module}", str(cfg_path)], env


def run_system(
    name: str,
    p: Params,
    svc: Services,
    load: Workload,
    work: Path,
    drain_timeout_s: float,
    latency: bool = True,
    extra_rates: tuple[float, ...] = (),
    batch_size: int = BATCH.max_batch_size,
    max_wait_ms: float = BATCH.max_wait_ms,
    only_rate: float | None = None,
    overrides: dict[str, Any] | None = None,
    cut_after_s: float | None = None,
    sweep: tuple[float, ...] = LATENCY_SWEEP,
) -> dict[str, Any]:
    """Drain the prefilled input, then (``latency``) the latency phases: at ``latency_share``
    of this system's drain rate, at ``extra_rates`` (another system's rate, for a like-for-like
    comparison) and, for streamproc, at the fixed ``sweep`` rates below it; with
    ``only_rate``, one phase at that rate alone (the main one). ``overrides`` set streamproc
    pipeline config keys by dotted path (``systems.streamproc_run.pipeline_dict``).

    ``cut_after_s`` (the time budget, shorter than ``drain_timeout_s``) cuts the drain short
    instead of failing it: events/s is measured over the outputs appended by the cut, the
    result says so under ``budget``, and no latency phase runs (the rest of the backlog
    would sit in front of its events)."""
    if overrides and name not in ("streamproc", PROFILED):
        raise ValueError(f"config overrides apply to streamproc only, not {name}")
    run = uuid.uuid4().hex[:6]
    in_t, out_t = f"bench-{name}-{run}", f"bench-{name}-{run}.out"
    admin = Admin(svc.bootstrap)
    # Both topics stamp records with the broker's append time: the input's splits each
    # latency into the input side (harness producer + broker) and the processor side.
    admin.ensure_topics([in_t, out_t], partitions=PARTITIONS,
                        config={"message.timestamp.type": "LogAppendTime"})  # fmt: skip
    total = load.prefill(in_t, p.warmup + p.drain_n(name))
    profiled = name == PROFILED
    cfg = WorkerConfig(
        system=name, bootstrap=svc.bootstrap, registry_url=svc.registry_url,
        input_topic=in_t, output_topic=out_t, group_id=f"bench-{name}-{run}",
        model_dir=str(MODEL), batch_size=batch_size, max_wait_ms=max_wait_ms,
        state_dir=str(work / f"state-{name}-{run}"),
        report_path=str(work / f"report-{name}-{run}.json"),
        stop_after=total if profiled else 0, overrides=overrides or {},
    )  # fmt: skip
    result: dict[str, Any] = {"input_topic": in_t, "output_topic": out_t}
    try:
        cmd, env = _command(name, cfg, work)
    except RuntimeError as exc:
        log(f"{name}: not run: {exc}")
        return {"status": f"not run: {exc}", "error": str(exc)}
    log_path = work / f"{name}-{run}.log"
    outputs = Outputs(svc.bootstrap, out_t)
    cut = cut_after_s is not None and cut_after_s < drain_timeout_s
    log(f"{name}: {total} events in {in_t}; starting {' '.join(cmd[1:4])}"
        + (f" (the time budget cuts its drain at {cut_after_s:.0f} s)" if cut else "")
        + " ...")  # fmt: skip
    t_spawn = time.time()
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    sampler = Sampler(proc.pid, svc.broker_pids)
    sampler.start()
    status = "ok"
    phases: list[dict[str, Any]] = []
    lat_sent = 0
    cut_ms: int | None = None
    try:
        t_start = time.monotonic()
        limit = cut_after_s if cut and cut_after_s is not None else drain_timeout_s
        status = wait_for(outputs, total, t_start + limit, proc)
        if status == "timeout" and cut:
            cut_ms = int(time.time() * 1000)
            drained = outputs.count()
            status = "ok"
            result["budget"] = (
                f"drain cut at {cut_after_s:.0f} s by the time budget: {drained:,} of "
                f"{total:,} events (the first {p.warmup:,} not measured); no latency phase"
            )
            log(f"{name}: {result['budget']}")
        elif status == "ok" and not profiled and latency:
            status, phases, lat_sent = run_phases(
                name, p, load, outputs, proc, in_t, total, extra_rates, only_rate, sweep
            )
        elif profiled and status == "ok":
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)  # it stops itself after `total` events
        elif status != "ok":  # (ok and not latency: a repeated drain, no latency phase)
            status = f"drain {status}"
    finally:
        sampler.hwm = max(sampler.hwm, _vm_hwm(proc.pid))  # the peak before shutdown
        how, maxrss_kib = stop_process(proc)
        sampler.stop()
    result["status"] = status
    result["stopped_by"] = how
    result["exit_code"] = proc.returncode
    if status != "ok":
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        result["log_tail"] = tail
        log(f"{name}: {status}; log tail:\n  " + "\n  ".join(tail))
    records = outputs.read(total + lat_sent)
    outputs.close()
    inputs: list[tuple[int, int, bytes]] = []
    if phases:
        reader = Outputs(svc.bootstrap, in_t)
        inputs = [r for r in reader.read(total + lat_sent) if r[0] >= phases[0]["start_ms"]]
        reader.close()
    if cut_ms is not None:  # the drain as it stood at the cut
        records = [r for r in records if r[0] <= cut_ms]
    result.update(_figures(p, records, total, phases, lat_sent, sampler, t_spawn, inputs))
    if cut_ms is not None and result.get("events_per_s") is None:
        result["status"] = (
            f"drain cut at {cut_after_s:.0f} s by the time budget before its "
            f"{p.warmup:,} warm-up events were out ({result.get('drain_outputs', 0):,} outputs)"
        )
    result["peak_rss_mb"] = round(sampler.peak_rss() / 2**20, 1)
    result["ru_maxrss_mb"] = round(maxrss_kib / 1024, 1)  # includes the harness (vfork)
    report = Path(cfg.report_path)
    if report.exists():
        result["worker_report"] = json.loads(report.read_text())
    log(f"{name}: {result['status']}, " + ", ".join(
        f"{k}={result.get(k)}" for k in ("events_per_s", "p50_ms", "p99_ms",
                                          "cpu_s_per_million", "peak_rss_mb")))  # fmt: skip
    return result


def repeat_drains(
    p: Params,
    names: list[str],
    svc: Services,
    load: Workload,
    work: Path,
    results: dict[str, dict[str, Any]],
) -> None:
    """Drain each system ``p.rounds - 1`` more times, in rotated order, and make its
    events/s the median of all its drains (the first round's stays under
    ``events_per_s_first``; every other figure is the first round's).

    Each drain of a system in ``LATENCY_ROUND_SYSTEMS`` is followed by one latency phase at
    streamproc's main latency-phase rate of the first round; with the first round's phases
    at that rate they make ``latency_rounds`` (one row per round)."""
    rates: dict[str, list[float]] = {
        n: [results[n]["events_per_s"]] for n in names if results[n].get("events_per_s")
    }
    sp_rate = _main_rate(results)
    for name in LATENCY_ROUND_SYSTEMS:
        first = _phase_at(results.get(name, {}), sp_rate)
        if name in names and first is not None:
            results[name]["latency_rounds"] = [_round_row(1, first)]
    for r in range(1, p.rounds):
        order = names[r % len(names) :] + names[: r % len(names)] if names else []
        for name in order:
            if name not in rates:
                continue
            fixed = sp_rate if name in LATENCY_ROUND_SYSTEMS else None
            again = run_system(name, p, svc, load, work, p.drain_timeout_s,
                               latency=fixed is not None, only_rate=fixed)  # fmt: skip
            if again.get("status") == "ok" and again.get("events_per_s"):
                rates[name].append(again["events_per_s"])
            else:
                log(f"{name}: round {r + 1} {again.get('status')}; left out of the median")
            ph = _phase_at(again, fixed)
            if ph is not None and again.get("status") == "ok":
                results[name].setdefault("latency_rounds", []).append(_round_row(r + 1, ph))
    for name, vals in rates.items():
        if len(vals) > 1:
            results[name]["events_per_s_first"] = vals[0]
            results[name]["events_per_s_rounds"] = vals
            results[name]["events_per_s"] = round(statistics.median(vals), 1)
