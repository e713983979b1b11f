"""`make demo`: the whole product on this machine, end to end, in a few minutes.

Starts (or reuses) the local Kafka broker and schema registry, applies the schemas, runs the
fraud pipeline, produces a stream with malformed events and a distribution shift, shows
live progress, and ends with a summary that accounts for every event produced.

``--payments``: the realistic variant (``deploy/pipelines/payments.yaml``, model fraud 2.0.0):
raw payments without aggregates, whose windowed features per account the processor computes
itself; the summary also scores the predictions against the generator's fraud labels, shows
a compromised account's burst with its features, and checks the features the predictions
carry (``outputs.include_features``) against ``features backfill`` over the same topic.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from streamproc.config import load_config
from streamproc.kafka.admin import Admin
from streamproc.kafka.clients import EventProducer, RecordConsumer, RegistryConnection
from streamproc.kafka.configuration import Connection, registry_config
from streamproc.kafka.registry import Registry
from streamproc.loadgen import ProduceReport, produce_synthetic
from streamproc.local import LocalStack, from_environment
from streamproc.pipeline.app import apply_schemas, build_processor

ROOT = Path(__file__).resolve().parents[1]
console = Console()


def _progress(report: ProduceReport, proc: Any, started: float) -> Table:
    c = proc.counters
    elapsed = max(time.monotonic() - started, 1e-6)
    p50, p99 = c.latency_quantiles()
    t = Table(title="streamproc demo: live", show_header=True)
    for col in ("produced", "consumed", "predictions", "dead letters", "events/s",
                "p50 ms", "p99 ms", "lag"):  # fmt: skip
        t.add_column(col, justify="right")
    t.add_row(
        str(report.produced), str(c.events_in), str(c.events_out),
        str(sum(c.rejected.values())), f"{c.events_in / elapsed:,.0f}",
        f"{p50:.1f}", f"{p99:.1f}", str(sum(c.lag.values())),
    )  # fmt: skip
    return t


def _count(
    bootstrap: Connection, registry: RegistryConnection, topic: str, n: int
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with RecordConsumer(bootstrap, registry, topic) as consumer:
        while len(out) < n:
            batch = consumer.poll_batch(2000, timeout_s=5.0)
            if not batch:
                break
            out.extend(rec for _, rec in batch)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--rate", type=float, default=3_000.0)
    ap.add_argument("--malformed", type=float, default=0.02)
    ap.add_argument("--shift", type=float, default=1.5, help="drift in the last third (sigmas)")
    ap.add_argument("--config", default=str(ROOT / "deploy" / "pipelines" / "fraud.yaml"))
    ap.add_argument("--keep", action="store_true", help="leave the local stack running")
    ap.add_argument("--payments", action="store_true",
                    help="raw payments, windowed features computed by the processor "
                    "(deploy/pipelines/payments.yaml)")  # fmt: skip
    ap.add_argument("--days", type=float, default=14.0,
                    help="--payments: days of event time the payments span")  # fmt: skip
    args = ap.parse_args(argv)
    if args.payments and args.config == ap.get_default("config"):
        args.config = str(ROOT / "deploy" / "pipelines" / "payments.yaml")
    logging.basicConfig(level=logging.WARNING)

    stack = LocalStack()
    info = from_environment()
    started_stack = False
    if info is None:
        running = stack.status()
        what = (
            "starting the local Kafka broker and schema registry"
            if running is None
            else ("reusing the running local stack")
        )
        console.print(f"[bold]1.[/] {what}")
        t0 = time.monotonic()
        info = stack.up()
        started_stack = running is None
        console.print(f"   ready in {time.monotonic() - t0:.1f}s: {info.public()}")
    if args.payments:
        from streamproc.demo_payments import run_payments

        ok = run_payments(args, info, console)
        if started_stack and not args.keep:
            stack.down()
            console.print("stopped the local stack (pass --keep to leave it running)")
        return 0 if ok else 1
    cfg = load_config(args.config)
    cfg = cfg.with_overrides(
        kafka=cfg.kafka.model_copy(update={"bootstrap": info.bootstrap}),
        registry=cfg.registry.model_copy(update={"url": info.schema_registry}),
        metrics=cfg.metrics.model_copy(update={"port": 0}),
    )
    t = cfg.topics
    admin = Admin(cfg.kafka)
    # A clean slate, so the summary accounts for this run alone.
    admin.delete_topics([t.input, t.predictions, t.dlq, t.alerts, t.metrics, t.shadow])
    del admin  # AdminClient has no close(): freeing it stops its reconnects to the broker
    console.print("[bold]2.[/] applying schemas")
    apply_schemas(Registry(registry_config(cfg.registry)), cfg)
    console.print("[bold]3.[/] starting the fraud processor")
    proc = build_processor(cfg)
    console.print(f"   metrics on http://127.0.0.1:{proc.metrics_port}/metrics")
    runner = threading.Thread(target=proc.run, daemon=True)
    runner.start()

    console.print(f"[bold]4.[/] producing {args.events:,} events at {args.rate:,.0f}/s "
                  f"({args.malformed:.0%} malformed)")  # fmt: skip
    producer = EventProducer(cfg.kafka, cfg.registry, t.input)
    report = ProduceReport()
    started = time.monotonic()
    with Live(_progress(report, proc, started), console=console, refresh_per_second=4) as live:
        done_before = 0  # events of the earlier phase, for the live count

        def show(r: ProduceReport) -> None:
            live.update(_progress(ProduceReport(produced=done_before + r.produced), proc, started))

        # Two thirds as trained, then a shift in amount and distance (drift alerts follow).
        calm = args.events * 2 // 3
        first = produce_synthetic(producer, calm, rate=args.rate, malformed=args.malformed,
                                  seed=42, on_progress=show)  # fmt: skip
        done_before = first.produced
        second = produce_synthetic(producer, args.events - calm, rate=args.rate,
                                   malformed=args.malformed, seed=42, offset=calm,
                                   shift=args.shift, on_progress=show)  # fmt: skip
        report = ProduceReport(
            produced=first.produced + second.produced,
            good=first.good + second.good,
            malformed=first.malformed + second.malformed,
            seconds=first.seconds + second.seconds,
        )
        deadline = time.monotonic() + 60
        c = proc.counters
        while c.events_in < report.produced and time.monotonic() < deadline:
            live.update(_progress(report, proc, started))
            time.sleep(0.25)  # refreshing the live view
        live.update(_progress(report, proc, started))
    proc.stop()
    runner.join(60)

    console.print("[bold]5.[/] reading back the output topics (read_committed)")
    preds = _count(cfg.kafka, cfg.registry, t.predictions, report.good)
    dead = _count(cfg.kafka, cfg.registry, t.dlq, sum(report.malformed.values()))
    reasons = Counter(d["reason"] for d in dead)
    alerts = _count(cfg.kafka, cfg.registry, t.alerts, 10_000)
    expected = report.expected_rejects()
    summary = Table(title="summary: every event accounted for")
    summary.add_column("")
    summary.add_column("count", justify="right")
    summary.add_row("events produced", f"{report.produced:,}")
    summary.add_row("  well-formed", f"{report.good:,}")
    for kind, n in sorted(report.malformed.items()):
        summary.add_row(f"  malformed: {kind}", str(n))
    summary.add_row("predictions on " + t.predictions, f"{len(preds):,}")
    summary.add_row("dead letters on " + t.dlq, f"{len(dead):,}")
    for reason, n in sorted(reasons.items()):
        summary.add_row(f"  {reason}", str(n))
    frauds = sum(1 for p in preds if p["label"] == "fraud")
    summary.add_row("flagged as fraud", f"{frauds:,}")
    firing = [a for a in alerts if a["state"] == "FIRING"]
    summary.add_row(f"alerts on {t.alerts}", str(len(firing)))
    for a in firing:
        summary.add_row(f"  {a['type']} {a['feature'] or ''}".rstrip(), a["severity"])
    p50, p99 = proc.counters.latency_quantiles()
    summary.add_row("end-to-end latency p50 / p99", f"{p50:.1f} / {p99:.1f} ms")
    console.print(summary)
    ok = len(preds) == report.good and reasons == expected
    ok = ok and len(preds) + len(dead) == report.produced
    if ok:
        console.print(f"[bold green]OK[/]: {report.produced:,} produced = {len(preds):,} "
                      f"predictions + {len(dead):,} dead letters")  # fmt: skip
    else:
        console.print(f"[bold red]MISMATCH[/]: expected {report.good} predictions and "
                      f"{dict(expected)} dead letters")  # fmt: skip
    producer.close()  # before its broker goes away
    if started_stack and not args.keep:
        stack.down()
        console.print("stopped the local stack (pass --keep to leave it running)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
