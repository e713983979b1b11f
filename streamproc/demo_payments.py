"""``python -m streamproc.demo --payments``: raw payments, windowed features computed by the
processor (model fraud 2.0.0, ``deploy/pipelines/payments.yaml``).

The payments of a few hundred accounts over ``--days`` days of event time (ending now) go
to the input topic keyed by account, in event-time order, paced to ``--rate``, some of them
malformed; their labels go to the feedback topic. The summary accounts for every event,
scores the predictions against the generator's labels, shows one compromised account's
burst with the features the model saw, and, where the predictions carry their features
(``outputs.include_features``), checks them against ``features backfill`` over the same
topic: online == offline.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streamproc.config import load_config
from streamproc.features.offline import backfill_rows
from streamproc.kafka.admin import Admin
from streamproc.kafka.clients import EventProducer
from streamproc.kafka.configuration import registry_config
from streamproc.kafka.history import TopicHistory
from streamproc.kafka.registry import Registry
from streamproc.loadgen import ProduceReport, produce_payments
from streamproc.local import StackInfo
from streamproc.models.spec import load_model_spec
from streamproc.pipeline.app import apply_schemas, build_processor, ensure_topics

# Features shown for the burst, with their column headings.
_SHOWN = {"txn_count_1h": "n 1h", "distinct_merchants_24h": "merch 24h",
          "avg_amount_7d": "avg 7d", "minutes_since_last_txn": "min since"}  # fmt: skip


def _auc(scores: list[float], labels: list[int]) -> float:
    """Area under the ROC curve (ranks, ties averaged); NaN without both classes."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, np.int8).astype(bool)
    if y.all() or not y.any():
        return math.nan
    order = np.argsort(s, kind="mergesort")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1.0, counts)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _progress(report: ProduceReport, proc: Any, started: float) -> Table:
    c = proc.counters
    elapsed = max(time.monotonic() - started, 1e-6)
    t = Table(title="streamproc payments demo: live", show_header=True)
    for col in ("produced", "consumed", "predictions", "dead letters", "events/s", "lag"):
        t.add_column(col, justify="right")
    t.add_row(str(report.produced), str(c.events_in), str(c.events_out),
              str(sum(c.rejected.values())), f"{c.events_in / elapsed:,.0f}",
              str(sum(c.lag.values())))  # fmt: skip
    return t


def _read(cfg: Any, topic: str) -> list[dict[str, Any]]:
    """Every decodable record of a topic (read_committed), to its current end."""
    with TopicHistory(cfg.kafka, cfg.registry, topic) as history:
        return [e.record for e in history if e.record is not None]


def run_payments(args: argparse.Namespace, info: StackInfo, console: Console) -> bool:
    cfg = load_config(args.config)
    cfg = cfg.with_overrides(
        kafka=cfg.kafka.model_copy(update={"bootstrap": info.bootstrap}),
        registry=cfg.registry.model_copy(update={"url": info.schema_registry}),
        metrics=cfg.metrics.model_copy(update={"port": 0}),
    )
    spec = load_model_spec(cfg.model)
    if spec.features is None:
        raise SystemExit(f"{cfg.model}: the payments demo needs a model with features")
    t = cfg.topics
    admin = Admin(cfg.kafka)
    # A clean slate, so the summary accounts for this run alone: the window state of an
    # earlier run (its changelog topics, named after the group) and any repartition topic go
    # too, or the state of the old events would meet the new ones.
    state = [name for name in admin.list_topics().topics
             if (name.startswith(f"{cfg.group_id}.") and name.endswith("changelog"))
             or name.startswith(f"{t.input}.repartition.")]  # fmt: skip
    admin.delete_topics([x for x in (t.input, t.predictions, t.dlq, t.alerts, t.metrics,
                                     t.shadow, t.feedback, *state) if x])  # fmt: skip
    del admin
    console.print("[bold]2.[/] applying schemas (Payment on the input)")
    apply_schemas(Registry(registry_config(cfg.registry)), cfg)
    ensure_topics(cfg)
    console.print(f"[bold]3.[/] starting the payments processor: model {spec.name} "
                  f"{spec.version}, {len(spec.features.definitions)} windowed features per "
                  "account")  # fmt: skip
    proc = build_processor(cfg)
    runner = threading.Thread(target=proc.run, daemon=True)
    runner.start()

    console.print(f"[bold]4.[/] producing {args.events:,} payments over {args.days:g} days of "
                  f"event time at {args.rate:,.0f}/s ({args.malformed:.0%} malformed), keyed "
                  "by account")  # fmt: skip
    started = time.monotonic()
    with (
        EventProducer(cfg.kafka, cfg.registry, t.input, schema="Payment") as producer,
        Live(_progress(ProduceReport(), proc, started), console=console,
             refresh_per_second=4) as live,
    ):  # fmt: skip
        report, records, truth = produce_payments(
            producer, args.events, days=args.days, rate=args.rate, malformed=args.malformed,
            seed=42, on_progress=lambda r: live.update(_progress(r, proc, started)),
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while proc.counters.events_in < report.produced and time.monotonic() < deadline:
            live.update(_progress(report, proc, started))
            time.sleep(0.25)  # refreshing the live view
        live.update(_progress(report, proc, started))
    if t.feedback:
        with EventProducer(cfg.kafka, cfg.registry, t.feedback, schema="Label") as labels:
            now = int(time.time() * 1000)
            for rec in records:
                label = "fraud" if truth[rec["event_id"]] else "legit"
                labels.send({"event_id": rec["event_id"], "label": label, "time": now},
                            rec["account_id"])  # fmt: skip
    proc.stop()
    runner.join(60)

    console.print("[bold]5.[/] reading back the output topics (read_committed)")
    preds = _read(cfg, t.predictions)
    dead = _read(cfg, t.dlq)
    reasons = Counter(d["reason"] for d in dead)
    expected = report.expected_rejects()
    flagged = [p for p in preds if p["label"] == "fraud"]
    scored = [(p["score"], truth[p["event_id"]]) for p in preds if p["event_id"] in truth]
    auc = _auc([s for s, _ in scored], [y for _, y in scored])
    hits = sum(truth.get(p["event_id"], 0) for p in flagged)
    frauds = sum(y for _, y in scored)

    summary = Table(title="summary: every payment accounted for")
    summary.add_column("")
    summary.add_column("count", justify="right")
    summary.add_row("payments produced", f"{report.produced:,}")
    summary.add_row("  well-formed", f"{report.good:,}")
    for kind, n in sorted(report.malformed.items()):
        summary.add_row(f"  malformed: {kind}", str(n))
    summary.add_row("predictions on " + t.predictions, f"{len(preds):,}")
    summary.add_row("dead letters on " + t.dlq, f"{len(dead):,}")
    for reason, n in sorted(reasons.items()):
        summary.add_row(f"  {reason}", str(n))
    summary.add_row("fraud in the scored payments (generator's labels)", f"{frauds:,}")
    summary.add_row("flagged as fraud (of them truly fraud)", f"{len(flagged):,} ({hits:,})")
    summary.add_row("AUC of the scores", f"{auc:.4f}")
    console.print(summary)

    online = {p["event_id"]: p.get("features") for p in preds}
    carried = sum(1 for v in online.values() if v)
    offline = _offline(cfg, spec)
    console.print(_burst(records, truth, online, offline, {p["event_id"]: p for p in preds}))
    ok = len(preds) == report.good and reasons == expected
    ok = ok and len(preds) + len(dead) == report.produced
    if carried:
        same = sum(1 for e, f in online.items() if f and e in offline
                   and _equal(spec, f, offline[e]))  # fmt: skip
        console.print(f"online == offline: {same:,} of the {carried:,} predictions that carry "
                      f"their features equal features backfill over {t.input}")  # fmt: skip
        ok = ok and same == carried
    else:
        console.print("[yellow]the predictions carry no features[/] (outputs.include_features "
                      "is off): the burst shows the values features backfill computes")  # fmt: skip
    if ok:
        console.print(f"[bold green]OK[/]: {report.produced:,} produced = {len(preds):,} "
                      f"predictions + {len(dead):,} dead letters")  # fmt: skip
    else:
        console.print(f"[bold red]MISMATCH[/]: expected {report.good} predictions and "
                      f"{dict(expected)} dead letters")  # fmt: skip
    return ok


def _equal(spec: Any, online: dict[str, Any], offline: dict[str, float]) -> bool:
    """A prediction's features (the model's input columns as scored: float32, a NaN
    imputed as its input says) against the backfilled values."""
    inputs = {f.field: f for f in spec.inputs}
    for name, value in offline.items():
        f = inputs.get(name)
        want = f.impute if f is not None and math.isnan(value) and f.null == "impute" else value
        got = online.get(name)
        if got is None:
            return False
        a, b = np.float32(got), np.float32(want)
        if not (a == b or (np.isnan(a) and np.isnan(b))):
            return False
    return True


def _offline(cfg: Any, spec: Any) -> dict[str, dict[str, float]]:
    """event_id -> features, from features backfill over the input topic."""
    assert spec.reader_schema_path is not None
    reader = json.loads(spec.reader_schema_path.read_text())
    with TopicHistory(cfg.kafka, cfg.registry, cfg.topics.input, reader_schema=reader) as h:
        return {r["event_id"]: {n: r[n] for n in spec.features.names}
                for r in backfill_rows(spec, h)}  # fmt: skip


def _burst(
    records: list[dict[str, Any]],
    truth: dict[str, int],
    online: dict[str, Any],
    offline: dict[str, dict[str, float]],
    preds: dict[str, dict[str, Any]],
) -> Table:
    """The largest burst of a compromised account and the payments just before it."""
    t = Table(title="windowed features at work: a compromised account")
    for col in ("time", "amount", *_SHOWN.values(), "score", "truth"):
        t.add_column(col, justify="right", no_wrap=True)
    bursts = Counter(r["account_id"] for r in records if truth[r["event_id"]])
    if not bursts:
        return t
    acct, n = bursts.most_common(1)[0]
    mine = [r for r in records if r["account_id"] == acct]
    at = next(i for i, r in enumerate(mine) if truth[r["event_id"]])
    for r in mine[max(0, at - 3) : at + n + 2]:
        e = r["event_id"]
        feats = online.get(e) or offline.get(e, {})
        score = preds[e]["score"] if e in preds else math.nan
        when = time.strftime("%d %H:%M", time.gmtime(r["event_time"] / 1000))
        t.add_row(when, f"{r['amount']:,.0f}",
                  *[f"{feats.get(n, math.nan):,.1f}" for n in _SHOWN],
                  f"{score:.3f}", "fraud" if truth[e] else "")  # fmt: skip
    return t
