#!/usr/bin/env python
"""Drain rate against ``max_batch_size``: the evidence behind the pipeline's default.

Same harness as ``throughput.py`` (its services, workload and ``run_system``), drains only
(no latency phase). Every ``system:batch_size`` variant drains the same backlog once per
round; rounds rotate the order, and each variant's figure is the median of its rounds.

``python benchmarks/batch_sweep.py --n 300000 --rounds 5 \\
    streamproc:1024 passthrough:1024 streamproc:4096 passthrough:4096``

With ``--rate R`` every drain is followed by a 10 s latency phase at R events/s (the same
rate for every variant), and the figures of that phase are reported per drain: end-to-end
and processor-side p50 / p99, and the worker's cores. ``--linger MS`` (repeatable) runs every
variant once per value of the latency phase producer's ``linger.ms``:

``python benchmarks/batch_sweep.py --n 100000 --rounds 3 --rate 94000 --linger 0 \
    --linger 5 streamproc:4096 passthrough:4096``

A variant may also name its batch window, ``system:max_batch_size@max_wait_ms`` (default:
the pipeline's ``batching.max_wait_ms``):

``python benchmarks/batch_sweep.py --n 300000 --rounds 3 --rate 200000 \\
    streamproc:4096@5 streamproc:4096@0 passthrough:4096``

A streamproc variant may set any pipeline config key by its dotted path, after a ``+``
(repeatable; the value is read as YAML), to A/B a setting on the real broker:

``python benchmarks/batch_sweep.py --n 2000000 --rounds 3 --warm full \\
    streamproc:4096 streamproc:4096+delivery.commit_interval_ms=5000 passthrough:4096``

``--warm full`` warms the fresh broker as a full ``throughput.py`` run does (``Params.warm_n``
events drained, then ``warm_s`` paced at ``warm_rate``): the first phases after a broker
starts run slow while its JIT compiler works (benchmarks/README.md, "The broker's JIT
compiler").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import throughput as bench
import yaml


def parse_variant(text: str) -> tuple[str, int, float | None, dict[str, Any]]:
    """``system:max_batch_size[@max_wait_ms][+key=value ...]`` -> (system, size, wait or
    None, config overrides).

    >>> parse_variant("streamproc:4096@0.5"), parse_variant("passthrough:1024")
    (('streamproc', 4096, 0.5, {}), ('passthrough', 1024, None, {}))
    >>> parse_variant("streamproc:4096+delivery.commit_interval_ms=5000+drift.enabled=false")
    ('streamproc', 4096, None, {'delivery.commit_interval_ms': 5000, 'drift.enabled': False})
    """
    head, *sets = text.split("+")
    system, _, rest = head.partition(":")
    size, _, wait = rest.partition("@")
    overrides = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"{text!r}: expected +key=value, got +{item}")
        overrides[key] = yaml.safe_load(value)
    if overrides and system != "streamproc":
        raise ValueError(f"{text!r}: config overrides apply to streamproc only")
    return system, int(size), float(wait) if wait else None, overrides


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+",
                    help="system:max_batch_size[@max_wait_ms][+key=value ...], e.g. "
                         "streamproc:4096@0")  # fmt: skip
    ap.add_argument("--warm", choices=["short", "full"], default="short",
                    help="the broker's warm-up: 4,000 events, or a full run's")  # fmt: skip
    ap.add_argument("--n", type=int, default=300_000, help="events per drain")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate", type=float, help="also a latency phase at this many events/s")
    ap.add_argument("--linger", type=float, action="append",
                    help="the latency phase producer's linger.ms (repeatable; default: "
                         "the harness's)")  # fmt: skip
    args = ap.parse_args(argv)
    lingers: list[float | None] = list(args.linger or [None])
    variants = [(v, parse_variant(v), linger) for v in args.variants for linger in lingers]

    def name(text: str, linger: float | None) -> str:
        return text + ("" if linger is None else f":linger{linger:g}")

    p = bench.Params(**{**bench.FULL.__dict__, "n": args.n})
    sweep = bench.LATENCY_SWEEP
    if args.rate:
        sweep = ()  # only the phase at --rate (and a token one, below)
        p = bench.Params(**{**p.__dict__, "latency_share": 0.02, "latency_s": 10.0})
    phases: dict[str, list[dict[str, float]]] = {name(v[0], v[2]): [] for v in variants}
    info = bench.machine()
    rates: dict[str, list[float]] = {name(v[0], v[2]): [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="streamproc-sweep-") as tmp:
        work = Path(tmp)
        with bench.services(work) as svc:
            bench._REGISTRY.append(bench.Registry(svc.registry_url))
            full = args.warm == "full"
            f = bench.FULL
            warm = bench.Params(**{**p.__dict__, "n": f.warm_n if full else 4_000,
                                   "n_long": None, "warmup": 1_000,
                                   "latency_s": f.warm_s if full else 1.0})  # fmt: skip
            warm_load = bench.Workload(svc, warm.warmup + warm.n, seed=4)
            bench.run_system(
                "passthrough",
                warm,
                svc,
                warm_load,
                work,
                60.0,
                only_rate=f.warm_rate if full else None,
            )  # not reported; fmt: skip
            warm_load.close()
            load = bench.Workload(svc, p.warmup + p.n)
            for r in range(args.rounds):
                k = r % len(variants)
                for text, (system, size, wait, overrides), linger in variants[k:] + variants[:k]:
                    key = name(text, linger)
                    load.paced_config = (
                        None if linger is None else {**bench.PACED_PRODUCER, "linger.ms": linger}
                    )
                    # With --rate, the harness's own phase runs at 2% of the drain rate (a
                    # few thousand events/s) before the phase at --rate; only that is kept.
                    res = bench.run_system(
                        system, p, svc, load, work, p.drain_timeout_s, latency=bool(args.rate),
                        extra_rates=(args.rate,) if args.rate else (), batch_size=size,
                        max_wait_ms=bench.BATCH.max_wait_ms if wait is None else wait,
                        overrides=overrides, sweep=sweep,
                    )  # fmt: skip
                    if res.get("status") == "ok" and res.get("events_per_s"):
                        rates[key].append(res["events_per_s"])
                    for ph in res.get("latency_phases", []):
                        if args.rate and ph["target_rate"] == round(args.rate, 1):
                            keep = (
                                "achieved_rate",
                                "p50_ms",
                                "p99_ms",
                                "processor_p50_ms",
                                "processor_p99_ms",
                                "input_p99_ms",
                                "worker_cores",
                                "machine_cores",
                            )
                            row = {k: ph.get(k) for k in keep}
                            phases[key].append(row)
            load.close()
    out = {
        "machine": {k: info[k] for k in ("cpu_model", "cores")},
        "n": args.n,
        "drains": {k: [round(x) for x in v] for k, v in rates.items()},
        "median": {k: round(statistics.median(v)) for k, v in rates.items() if v},
    }
    if args.rate:
        out["latency_phases"] = phases
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
