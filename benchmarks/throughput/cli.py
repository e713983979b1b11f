"""The command line: ``python benchmarks/throughput.py [--quick]`` runs :func:`main`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from streamproc.kafka.registry import Registry

from .config import FULL, PROFILED, QUICK, RESULTS, ROUND_SYSTEMS, SYSTEMS, Params, log
from .figures import _REGISTRY
from .harness import combine_cores, machine, missing_package, run_core, services, warm_broker
from .latency import _main_rate
from .report import write_results
from .runner import repeat_drains, run_system
from .summary import ratios, summarize
from .workload import Workload

# Beyond its drain, a system's run takes about this long: the latency phase, its catch-up,
# the stop and reading the topics back.
AFTER_DRAIN_S = 20.0


def drain_cut(p: Params, started: float, systems_left: int) -> float | None:
    """Seconds after its start at which the next system's drain is cut short: its share of
    what is left of ``p.budget_s`` (at least ``p.min_drain_s``); None without a budget.

    Every system gets its turn whatever the budget: a slow one that started late is
    measured over a shorter drain, not skipped.

    >>> p = Params(n=1, warmup=1, latency_share=0.5, latency_s=1.0, drain_timeout_s=40.0,
    ...            core_events=1, quick=True, budget_s=170.0, min_drain_s=25.0)
    >>> drain_cut(p, time.monotonic() - 50.0, 2)  # 120 s left for two: 60 s each
    40.0
    >>> drain_cut(p, time.monotonic() - 200.0, 3)  # the budget is spent: the floor
    25.0
    """
    if p.budget_s is None:
        return None
    left = p.budget_s - (time.monotonic() - started)
    share = left / max(systems_left, 1) - AFTER_DRAIN_S
    return float(round(max(p.min_drain_s, share)))


def order_systems(names: list[str]) -> list[str]:
    """``names`` with streamproc moved ahead of the passthrough where it came after it: the
    passthrough runs a phase at streamproc's latency-phase rate, known once streamproc ran.

    >>> order_systems(["naive", "passthrough", "quix", "streamproc"])
    ['naive', 'streamproc', 'passthrough', 'quix']
    """
    both = "streamproc" in names and "passthrough" in names
    if both and names.index("streamproc") > names.index("passthrough"):
        names = [n for n in names if n != "streamproc"]
        names.insert(names.index("passthrough"), "streamproc")
    return names


def failures(results: dict[str, dict[str, Any]], names: list[str]) -> dict[str, str]:
    """The named systems that were not measured, and why."""
    return {
        n: str(results.get(n, {}).get("status") or "no result")
        for n in names
        if results.get(n, {}).get("status") != "ok"
    }


def main(argv: list[str] | None = None) -> int:
    from . import __doc__ as doc

    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N; a few minutes")
    ap.add_argument("--n", type=int, help="events per system in every measured drain")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled run")
    ap.add_argument(
        "--results",
        type=Path,
        help="write the Markdown report here (default: RESULTS.md on a full run)",
    )
    ap.add_argument("--json", type=Path, help="also write every figure as JSON here")
    args = ap.parse_args(argv)
    p = QUICK if args.quick else FULL
    if args.n:  # every system drains --n events
        p = Params(**{**p.__dict__, "n": args.n, "n_long": None})
    names = [s for s in args.systems.split(",") if s]
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    names = order_systems(names)
    started = time.monotonic()
    info = machine()
    info["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    log(f"{info['cpu_model']}, {info['cores']} cores, load {info['load_avg_at_start']}")
    results: dict[str, dict[str, Any]] = {}
    for name in names:  # a system whose package is missing is reported, not run
        why = missing_package(name)
        if why is not None:
            log(f"{name}: not run: {why}")
            results[name] = {"status": f"not run: {why}", "error": why}
    runnable = [n for n in names if n not in results]
    with tempfile.TemporaryDirectory(prefix="streamproc-bench-") as tmp:
        work = Path(tmp)
        core = run_core(p, work)
        with services(work) as svc:
            _REGISTRY.append(Registry(svc.registry_url))
            warm_broker(p, svc, work)
            load = Workload(svc, p.warmup + max(p.n, p.n_long or 0))
            for i, name in enumerate(runnable):
                cut = drain_cut(p, started, len(runnable) - i)
                # The passthrough also runs at streamproc's latency-phase rate: what the
                # broker and the load generator alone cost in latency at that rate.
                sp_rate = _main_rate(results)
                extra = (sp_rate,) if name == "passthrough" and sp_rate is not None else ()
                results[name] = run_system(name, p, svc, load, work, p.drain_timeout_s,
                                           extra_rates=extra, cut_after_s=cut)  # fmt: skip
            if not args.no_profile:  # not a compared system: never cut, only timed out
                results[PROFILED] = run_system(PROFILED, p, svc, load, work, p.drain_timeout_s)
            rounds = [n for n in runnable if n in ROUND_SYSTEMS]
            repeat_drains(p, rounds, svc, load, work, results)
            load.close()
            profile = results.pop(PROFILED, {})
        if p.rounds > 1:
            core = combine_cores(core, run_core(p, work))
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["elapsed_s"] = round(time.monotonic() - started, 1)
    summary = summarize(results, core, profile)
    failed = failures(results, names)
    full = {
        "params": {**p.__dict__},
        "machine": info,
        "summary": summary,
        "ratios": ratios(results),
        "systems": results,
        "profiled": profile,
        "core": core,
        "failed": failed,
    }
    if args.json:
        args.json.write_text(json.dumps(full, indent=2, default=str))
    target = args.results or (None if p.quick else RESULTS)
    if target is not None:
        write_results(target, full)
        log(f"wrote {target}")
    log(f"done in {info['elapsed_s']}s")
    for name, why in failed.items():
        log(f"NOT MEASURED: {name}: {why}")
    print(json.dumps(summary))
    return 1 if failed else 0
