#!/usr/bin/env python
"""What the accuracy join costs per event: predictions recorded, then labels joined.

``AccuracyMonitor`` with the default ``label_retention`` (100,000), fed like the pipeline
feeds it with a feedback topic: each batch of 4096 predictions is recorded and, in the
default *prompt* case, the labels of the batch before it come back and are joined, so
few predictions wait. With ``--no-labels`` no label comes back: the retention fills and
every batch evicts as many predictions as it records (labels that come days later, or
for a few events only, look like this). UUID-like event ids, made once. Pinned to one
CPU; the median of ``--rounds`` runs of ``--batches`` batches each.

``python benchmarks/accuracy_cost.py [--no-labels] [--batches 60] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from streamproc.drift.accuracy import AccuracyMonitor

BATCH = 4096


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-labels", action="store_true", help="no label ever comes back")
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    n = args.batches * BATCH
    ids = [f"{i:08x}-7c1e-4b7a-9c3d-{i:012x}" for i in range(n)]
    predicted = ["fraud" if i % 10 == 0 else "legit" for i in range(n)]
    truth = ["fraud" if i % 9 == 0 else "legit" for i in range(n)]
    record, join = [], []
    for _ in range(args.rounds):
        am = AccuracyMonitor(reference_error_rate=0.1)
        t_rec = t_join = 0.0
        for b in range(args.batches):
            lo, hi = b * BATCH, (b + 1) * BATCH
            t = time.perf_counter()
            am.record_predictions(ids[lo:hi], predicted[lo:hi])
            t_rec += time.perf_counter() - t
            if b and not args.no_labels:
                t = time.perf_counter()
                am.record_labels(ids[lo - BATCH : lo], truth[lo - BATCH : lo])
                t_join += time.perf_counter() - t
        record.append(t_rec / n * 1e6)
        join.append(t_join / (n - BATCH) * 1e6 if not args.no_labels else 0.0)
    print(json.dumps({
        "record_us_per_event": round(statistics.median(record), 3),
        "join_us_per_label": None if args.no_labels else round(statistics.median(join), 3),
        "waiting_at_end": am.pending,
        "batch": BATCH,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
