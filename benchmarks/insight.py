#!/usr/bin/env python
"""Insight: explanations, outliers, probing and seasonality, measured in one run.

``python benchmarks/insight.py --quick`` prints ONE JSON object (the last line) with:

* ``throughput_ratio``: the in-process handler (``systems/core.py``'s build: decoder, ONNX
  Runtime scorer, Prediction encoder, default drift monitor; no Kafka) with explanations
  at 1% (the default settings: method auto, which is DeepSHAP for the demo model, 16
  background rows, in a child process at nice 19 using at most a quarter of a core,
  requests sent every 50 ms), outlier scores and probing on, over the same handler with
  all three off, on the same events, passes alternating in one process; with the
  explanations explained / dropped and their cost per explained event. Beside it
  ``throughput_ratio_explanations_only`` (the issue's budget: within 5% of none at a 1%
  sample), ``throughput_ratio_explanations_thread`` (the same on a thread of the
  pipeline's process, ``isolation: thread``) and ``throughput_ratio_outliers_probing_only``.

  What is pinned and measured: no CPU is pinned, so every build's threads (the pipeline's
  one; in the builds with explanations on, the worker's too) may use all of the machine's
  CPUs, the same ones for every build. The ratio is of wall-clock events per second: per
  round (one pass of each build, in turn), the build's over all-off's, and the median over
  the rounds (11 rounds of 131,072 events with ``--quick``, 9 of 262,144 without; 15 of
  65,536 with ``--quick`` until the explanations' linger, which a pass should outlast
  several times; before commit "benchmarks/insight.py: paired ratios" the ratio of the
  median passes, and 5 rounds with ``--quick``: too few, on a loaded machine, for the same
  code to give the same figure twice). A worker that runs on CPU time the pipeline's
  thread leaves (an idle CPU) costs it little there (less where its work is light in
  floating point: benchmarks/RESULTS.md), and at nice 19 it gets little else, so where the
  CPUs are contended it explains few of the sampled events (the explained / dropped
  counts say how many). ``throughput_ratio_cpu`` is the process's CPU time per event (all
  threads, median pass), off over on: the ratio on one CPU that every thread must share.
  Each build's worker explains during that build's passes only: after each of them its
  backlog is dropped (counted as dropped) and the batch in hand finished outside the timed
  pass (until commit 328dd36 the backlog ran on through the other builds' passes,
  all-off included, which charged them its CPU and flattered the ratio);
* ``shap_rank_correlation``: the median per-event Spearman correlation of the default
  method's (DeepSHAP's) attributions with ``shap.KernelExplainer`` (2048 samples, same
  background) on the demo model 1.1.0, and ``kernel_shap_rank_correlation`` Kernel SHAP's
  (512 coalitions); ``deep_shap_logit_max_error_vs_shap_deep``: DeepSHAP against
  ``shap.DeepExplainer`` on the logits (shap's rule for the softmax is not additive);
  without ``--quick``, also both against ``shap``'s ExactExplainer;
* ``outlier_auc`` / ``pyod_auc`` (PyOD ECOD, trained on the reference rows) and
  ``pyod_iforest_auc``, ``robust_z_auc`` on the same events with injected outliers;
* ``probing_detected_within`` (requests of a probing client until its alert) and
  ``probing_false_alerts_per_million`` (normal traffic, the same key distribution);
* ``seasonal_alerts`` (7 simulated days with a strong daily cycle, seasonality on, no
  shift), ``seasonal_shift_detected`` (a 0.5 sigma shift on top) and
  ``default_detector_alerts`` (the default detector on the no-shift stream).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamproc import schemas, synth
from streamproc.backends.onnx import OnnxRuntimeBackend
from streamproc.config import DriftConfig, InsightSettings
from streamproc.drift import DriftMonitor
from streamproc.drift.profile import ReferenceProfile
from streamproc.drift.seasonal import (
    DAY_MS,
    SeasonalDriftMonitor,
    SeasonalReference,
    hour_of_day,
)
from streamproc.insight.explain import (
    ExplanationWorker,
    KernelShap,
    background_from_profile,
)
from streamproc.insight.outliers import OutlierScorer
from streamproc.insight.probing import ProbingDetector
from streamproc.insight.process import ExplanationProcess, Explanations, discarding_sink
from streamproc.models.spec import load_model_spec

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "deploy" / "models" / "fraud" / "1.1.0"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for u in np.unique(v):
            r[v == u] = r[v == u].mean()
        return r

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


# ------------------------------------------------------------------------ throughput


def throughput(n: int, passes: int) -> dict[str, Any]:
    from systems.core import WRITER_ID, raw_batches

    from streamproc.backends.select import load_backend
    from streamproc.codecs.decoder import BatchDecoder
    from streamproc.codecs.kernel_cache import Specialiser
    from streamproc.codecs.source import DictSchemaSource
    from streamproc.pipeline.app import reader_schema
    from streamproc.pipeline.handler import BatchHandler, OutputTopics, SchemaIds
    from streamproc.pipeline.insight import InsightMonitor, KeyTap, explainer_factory, row_scores
    from streamproc.pipeline.monitoring import build_monitor
    from streamproc.pipeline.scoring import SingleScorer

    spec = load_model_spec(DEMO)
    settings = InsightSettings.model_validate({
        "outliers": {"enabled": True}, "probing": {"enabled": True},
        "explanations": {"enabled": True, "share": 0.01},
    })  # fmt: skip

    def handler(
        on: bool, explain: bool = True, monitors: bool = True, thread: bool = False
    ) -> tuple[BatchHandler, Explanations | None]:
        decoder = BatchDecoder(spec, reader_schema(spec),
                               DictSchemaSource({WRITER_ID: schemas.schema_text("Transaction")}),
                               specialiser=Specialiser())  # fmt: skip
        if not decoder.prepare(WRITER_ID):
            raise RuntimeError("the Transaction schema's kernel did not compile")
        scorer: Any = SingleScorer(spec, load_backend(spec, prefer=["onnxruntime"]))
        monitor: Any = build_monitor(spec, {})
        worker = None
        if on and not explain:
            scorer = KeyTap(scorer)
            plain = settings.model_copy(update={"explanations": type(settings.explanations)()})
            monitor = InsightMonitor(monitor, scorer, plain)
        elif on:
            chosen = settings
            if not monitors:
                chosen = settings.model_copy(update={
                    "outliers": type(settings.outliers)(), "probing": type(settings.probing)()
                })  # fmt: skip
            e = settings.explanations
            if thread:  # the explainer on a thread of this process (isolation: thread)
                worker = ExplanationWorker(
                    explainer_factory(settings, {spec.version: spec}), spec.columns,
                    lambda records: None, queue_size=e.queue_size, batch=e.batch,
                    max_cpu_share=e.max_cpu_share, nice=e.nice,
                ).start()  # fmt: skip
            else:  # the default: a child process (isolation: process)
                worker = ExplanationProcess(
                    functools.partial(explainer_factory, settings), {spec.version: spec},
                    spec.columns, discarding_sink, queue_size=e.queue_size, batch=e.batch,
                    max_cpu_share=e.max_cpu_share, nice=e.nice, linger_ms=e.linger_ms,
                ).start()  # fmt: skip
            scorer = KeyTap(scorer)
            monitor = InsightMonitor(monitor, scorer, chosen, worker=worker)
        h = BatchHandler(
            decoder=decoder, scorer=scorer,
            topics=OutputTopics("b.p", "b.dlq", "b.alerts", "b.metrics", "b.s"),
            schema_ids=SchemaIds(prediction=2, dead_letter=3, alert=4, metrics=5),
            processor_id="insight", pipeline="insight", monitor=monitor,
            snapshot_interval_s=3600.0,
            row_scores=row_scores(monitor) if on else None,  # outlier_score on predictions
        )  # fmt: skip
        return h, worker

    batches = raw_batches(n, 4096)
    off, _ = handler(False)
    on, worker = handler(True)
    monitors, _ = handler(True, explain=False)
    explain_only, worker2 = handler(True, monitors=False)
    explain_thread, worker3 = handler(True, monitors=False, thread=True)
    assert worker is not None and worker2 is not None and worker3 is not None
    for b in batches:  # warm-up: kernels, the explainer's model
        off(b)
        on(b)
        monitors(b)
        explain_only(b)
        explain_thread(b)
    for w in (worker, worker2, worker3):
        w.wait_idle(120)
    names = ("off", "on", "monitors", "explain", "thread")
    rates: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    own = {"on": worker, "explain": worker2, "thread": worker3}
    for w in own.values():  # start every pass with idle workers (see below)
        w.discard_queued()
        w.wait_idle(60)
    c0 = (worker.counts.explained, worker.counts.dropped, worker.counts.busy_s)
    for _ in range(passes):  # alternating, so that other load on the machine hits all alike
        for name, h in zip(names, (off, on, monitors, explain_only, explain_thread),
                           strict=True):  # fmt: skip
            t, c = time.perf_counter(), time.process_time()
            for b in batches:
                h(b)
            rates[name].append(n / (time.perf_counter() - t))
            cpu[name].append((time.process_time() - c) / n * 1e6)
            w = own.get(name)
            if w is not None:
                # The worker's backlog would go on explaining through the other builds'
                # passes (its queue is full: it explains fewer than are sampled), charging
                # them its CPU: drop it (counted as dropped) and let the batch in hand
                # finish, outside the timed pass.
                w.discard_queued()
                w.wait_idle(60)
    worker.wait_idle(120)
    explained = worker.counts.explained - c0[0]
    dropped = worker.counts.dropped - c0[1]
    busy = worker.counts.busy_s - c0[2]
    worker.close()
    for w in (worker2, worker3):
        w.wait_idle(120)
        w.close()
    r_off, r_on = statistics.median(rates["off"]), statistics.median(rates["on"])

    def paired(name: str) -> float:
        """The median over rounds of the build's rate over all-off's in the same round
        (adjacent passes: load that changes slower than a round cancels)."""
        pairs = zip(rates[name], rates["off"], strict=True)
        return round(statistics.median(a / b for a, b in pairs), 4)

    return {
        "throughput_ratio": paired("on"),
        # CPU time of the process (every thread: the explanation worker's too) per event,
        # off over on: the ratio where the builds had one CPU to share among their threads.
        "throughput_ratio_cpu": round(
            statistics.median(cpu["off"]) / statistics.median(cpu["on"]), 4
        ),
        "throughput_ratio_cpu_outliers_probing_only": round(
            statistics.median(cpu["off"]) / statistics.median(cpu["monitors"]), 4
        ),
        "throughput_ratio_outliers_probing_only": paired("monitors"),
        "throughput_ratio_explanations_only": paired("explain"),
        # The same with the explainer on a thread of the pipeline's process.
        "throughput_ratio_explanations_thread": paired("thread"),
        "events_per_s_off": round(r_off),
        "events_per_s_on": round(r_on),
        "cpu_us_per_event_off": round(statistics.median(cpu["off"]), 3),
        "cpu_us_per_event_on": round(statistics.median(cpu["on"]), 3),  # the worker's too
        "cpu_us_per_event_outliers_probing_only": round(statistics.median(cpu["monitors"]), 3),
        "explanations_requested": explained + dropped,
        "explanations_explained": explained,
        "explanations_dropped": dropped,
        "explain_ms_per_event_in_worker": round(1000 * busy / max(explained, 1), 3),
    }


# ------------------------------------------------------------------------ explanations


def explanations(exact: bool) -> dict[str, Any]:
    import shap

    spec = load_model_spec(DEMO)
    prof = ReferenceProfile.load(DEMO / "reference_profile.json")
    backend = OnnxRuntimeBackend.from_spec(spec)
    x = synth.feature_matrix(synth.generate_columns(2_000, seed=9), spec)
    s = backend.infer(x)[:, 1]
    events = x[np.concatenate([np.arange(10), np.argsort(-s)[:10]])]
    bg = background_from_profile(prof, k=16)
    ks = KernelShap(backend.infer, bg, 1, samples=512)
    ks.explain(events[:2])  # warm
    t = time.perf_counter()
    reps = 5
    for _ in range(reps):
        phi, base, fx = ks.explain(events)
    ms = 1000 * (time.perf_counter() - t) / (reps * len(events))

    def f(a: np.ndarray) -> np.ndarray:
        return backend.infer(np.ascontiguousarray(a, dtype=np.float32))[:, 1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ke = shap.KernelExplainer(f, bg)
        t = time.perf_counter()
        ref = ke.shap_values(events, nsamples=2048, silent=True)
        shap_ms = 1000 * (time.perf_counter() - t) / len(events)
    rho = [spearman(phi[i], ref[i]) for i in range(len(events))]
    # DeepSHAP, the default where the model is a chain network (the demo model is).
    import torch

    from streamproc.backends.torch_backend import chain_layers, load_module
    from streamproc.insight.explain import DeepShap

    module = load_module(spec)
    layers = chain_layers(module)
    ds = DeepShap(layers, bg, 1)
    ds.explain(events[:2])  # warm
    t = time.perf_counter()
    reps = 50
    for _ in range(reps):
        dphi, dbase, dfx = ds.explain(events)
    deep_us = 1e6 * (time.perf_counter() - t) / (reps * len(events))
    rho_d = [spearman(dphi[i], ref[i]) for i in range(len(events))]
    # shap.DeepExplainer on the logits (its rule for a softmax output is not additive, so
    # the comparison is before it): the same rescale rule must give the same attributions.
    logit = torch.nn.Sequential(*list(module)[:-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = shap.DeepExplainer(logit, torch.from_numpy(bg))
        sdv = np.asarray(sd.shap_values(torch.from_numpy(events), check_additivity=False))[..., 1]
    lphi = DeepShap(layers[:-1], bg, 1).explain(events)[0]
    out: dict[str, Any] = {
        # the default method (DeepSHAP) against shap's KernelExplainer
        "shap_rank_correlation": round(float(np.median(rho_d)), 4),
        "shap_rank_correlation_min": round(float(np.min(rho_d)), 4),
        "deep_shap_us_per_event": round(deep_us, 1),
        "deep_shap_additivity_max_error": float(np.abs(dphi.sum(axis=1) + dbase - dfx).max()),
        "deep_shap_logit_max_error_vs_shap_deep": float(np.abs(lphi - sdv).max()),
        # the model-agnostic method (Kernel SHAP, 512 coalitions) against the same
        "kernel_shap_rank_correlation": round(float(np.median(rho)), 4),
        "kernel_shap_rank_correlation_min": round(float(np.min(rho)), 4),
        "additivity_max_error": float(np.abs(phi.sum(axis=1) + base - fx).max()),
        "explain_ms_per_event": round(ms, 3),
        "shap_kernel_ms_per_event": round(shap_ms, 1),
        "kernel_shap_model_rows_per_event": ks.rows_per_event,
    }
    if exact:
        ex = shap.explainers.Exact(f, shap.maskers.Independent(bg, max_samples=16))
        ev = ex(events, silent=True).values
        rho_x = [spearman(phi[i], ev[i]) for i in range(len(events))]
        rho_k = [spearman(ref[i], ev[i]) for i in range(len(events))]
        rho_dx = [spearman(dphi[i], ev[i]) for i in range(len(events))]
        out["shap_exact_rank_correlation"] = round(float(np.median(rho_x)), 4)
        out["deep_shap_exact_rank_correlation"] = round(float(np.median(rho_dx)), 4)
        out["shap_kernel_vs_exact_rank_correlation"] = round(float(np.median(rho_k)), 4)
    backend.close()
    return out


# ------------------------------------------------------------------------ outliers


def outliers() -> dict[str, Any]:
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest

    spec = load_model_spec(DEMO)
    ref_rows = synth.feature_matrix(synth.generate_columns(50_000, seed=0), spec)
    prof = ReferenceProfile.load(DEMO / "reference_profile.json")
    x = synth.feature_matrix(synth.generate_columns(20_000, seed=11), spec).astype(np.float64)
    rng = np.random.default_rng(3)
    n_out = 600
    idx = rng.choice(len(x), n_out, replace=False)
    cols = prof.columns
    cont = [j for j, c in enumerate(cols) if not c.discrete]
    counts = [spec.columns.index(c) for c in ("txn_count_1h", "txn_count_24h",
                                                "failed_logins_24h")]  # fmt: skip
    q = np.quantile(ref_rows, [0.001, 0.5, 0.999], axis=0)
    k = n_out // 3
    for i in idx[:k]:  # two continuous columns past the 99.9th percentile
        for j in rng.choice(cont, 2, replace=False):
            x[i, j] = q[2, j] + rng.uniform(0.2, 1.0) * (q[2, j] - q[1, j])
    for i in idx[k : 2 * k]:  # every continuous column uniform over the 0.1..99.9% box
        for j in cont:
            x[i, j] = rng.uniform(q[0, j], q[2, j])
    for i in idx[2 * k :]:  # two count columns past their 99.9th percentile
        for j in rng.choice(counts, 2, replace=False):
            x[i, j] = np.ceil(q[2, j] + rng.uniform(0.2, 1.0) * (q[2, j] - q[1, j]) + 1)
    y = np.zeros(len(x))
    y[idx] = 1
    scorer = OutlierScorer(prof)
    t = time.perf_counter()
    s = scorer.score(x)
    us = 1e6 * (time.perf_counter() - t) / len(x)
    t = time.perf_counter()
    ecod = ECOD().fit(ref_rows)
    pe = ecod.decision_function(x)
    pyod_s = time.perf_counter() - t
    return {
        "outlier_auc": round(auc(y, s), 4),
        "pyod_auc": round(auc(y, pe), 4),
        "pyod_iforest_auc": round(
            auc(y, IForest(random_state=0).fit(ref_rows).decision_function(x)), 4
        ),
        "robust_z_auc": round(auc(y, OutlierScorer(prof, method="robust_z").score(x)), 4),
        "outlier_us_per_event": round(us, 3),
        "pyod_ecod_fit_and_score_s": round(pyod_s, 3),
        "outlier_share_on_normal": round(float((s[y == 0] > scorer.threshold).mean()), 4),
    }


# ------------------------------------------------------------------------ probing


def probing() -> dict[str, Any]:
    spec = load_model_spec(DEMO)
    prof = ReferenceProfile.load(DEMO / "reference_profile.json")
    backend = OnnxRuntimeBackend.from_spec(spec)

    def det() -> ProbingDetector:
        return ProbingDetector([c.median for c in prof.columns], [c.scale for c in prof.columns],
                               threshold=spec.outputs.threshold)  # fmt: skip

    def keys(n: int, seed: int) -> list[bytes]:
        rng = np.random.default_rng(seed)
        r = rng.zipf(1.3, size=n)
        r = np.where(r > 50_000, rng.integers(1, 50_001, n), r)
        return [b"acct-%d" % v for v in r.tolist()]

    # A client walking one input across the boundary, one request per 60 normal events.
    x = synth.feature_matrix(synth.generate_columns(50_000, seed=0), spec)
    s = backend.infer(x)[:, 1]
    base = x[np.argmin(np.abs(s - 0.5))]
    rng = np.random.default_rng(0)
    probe = np.repeat(base[None], 500, axis=0)
    probe[:, spec.columns.index("amount")] *= 1.0 + np.cumsum(rng.normal(0, 0.003, 500))
    normal = synth.feature_matrix(synth.generate_columns(60 * 500, seed=3), spec)
    nk = keys(len(normal), 3)
    d = det()
    within = None
    for i in range(500):
        xb = np.concatenate([normal[i * 60 : (i + 1) * 60], probe[i : i + 1]])
        kb = [*nk[i * 60 : (i + 1) * 60], b"mallory"]
        if any(a.feature == "key=mallory" for a in d.update(kb, xb, backend.infer(xb)[:, 1])):
            within = i + 1
            break
    n = 1_000_000
    xn = synth.feature_matrix(synth.generate_columns(n, seed=21), spec)
    sn = backend.infer(xn)[:, 1]
    kn = keys(n, 21)
    d = det()
    t = time.perf_counter()
    alerts = 0
    for i in range(0, n, 4096):
        alerts += len(d.update(kn[i : i + 4096], xn[i : i + 4096], sn[i : i + 4096]))
    us = 1e6 * (time.perf_counter() - t) / n
    backend.close()
    return {
        "probing_detected_within": within,
        "probing_false_alerts_per_million": alerts * 1e6 / n,
        "probing_us_per_event": round(us, 3),
        "probing_keys_tracked": d.keys_tracked,
        "probing_state_bytes": d.memory_bytes,
    }


# ------------------------------------------------------------------------ seasonality


def seasonality() -> dict[str, Any]:
    step = 10_000
    t0 = 1_767_225_600_000

    def simulate(days: int, seed: int, start_day: int, shift: float = 0.0, at: int = 0):
        rng = np.random.default_rng(seed)
        t = t0 + start_day * DAY_MS + np.arange(0, days * DAY_MS, step, dtype=np.int64)
        phase = 2 * np.pi * (hour_of_day(t) + (t % 3_600_000) / 3_600_000) / 24
        la = 3.0 + 1.5 * np.sin(phase) + 0.5 * rng.normal(size=t.size)
        la[at:] += 0.5 * shift
        load = 2.0 * np.cos(phase) + (1.5 + 0.5 * np.sin(phase)) * rng.normal(size=t.size)
        return np.column_stack([np.exp(la), load, rng.normal(size=t.size)]), t

    cols = ["amount", "load", "steady"]
    xr, tr = simulate(14, 1, 0)
    ref = SeasonalReference.fit(xr, tr, cols, "daily")

    def run(mon: Any, x: np.ndarray, t: np.ndarray, seasonal: bool) -> list[tuple[int, Any]]:
        out = []
        for i in range(0, len(x), 1_000):
            kw = {"event_time_ms": t[i : i + 1_000]} if seasonal else {}
            out += [(i, a) for a in mon.update(x[i : i + 1_000], None, **kw)
                    if str(a.state) == "FIRING"]  # fmt: skip
        return out

    x, t = simulate(7, 2, 14)
    quiet = run(SeasonalDriftMonitor(ref, DriftConfig()), x, t, True)
    default = run(DriftMonitor(ReferenceProfile.from_matrix(xr, cols), DriftConfig()), x, t, False)
    start = 2 * 8_640 + 1_234
    xs, ts = simulate(7, 3, 14, shift=0.5, at=start)
    shifted = run(SeasonalDriftMonitor(ref, DriftConfig()), xs, ts, True)
    first = next((i for i, a in shifted if a.feature == "amount"), None)
    return {
        "seasonal_alerts": len(quiet),
        "seasonal_shift_detected": first is not None,
        "seasonal_shift_detected_within_events": None if first is None else first + 1_000 - start,
        "default_detector_alerts": len(default),
        "default_detector_first_alert_event": default[0][0] if default else None,
        "seasonal_events": len(x),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer passes; no ExactExplainer")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {}
    for name, fn in (
        ("throughput", lambda: throughput(131_072 if args.quick else 262_144,
                                          11 if args.quick else 9)),
        ("explanations", lambda: explanations(exact=not args.quick)),
        ("outliers", outliers),
        ("probing", probing),
        ("seasonality", seasonality),
    ):  # fmt: skip
        t = time.perf_counter()
        out.update(fn())
        print(f"{name}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
