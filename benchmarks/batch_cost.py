#!/usr/bin/env python
"""What a batch costs streamproc's core besides its events: microseconds per batch by stage.

The core of ``throughput.py`` (``systems/core.py``: framed payloads in memory ->
``BatchHandler`` with the default drift monitor -> framed Prediction bytes, one core, no
Kafka) at several batch sizes. Per batch, each stage costs about ``a + b * size``; the
smallest sizes show ``a``, the fixed cost that a short batch window pays more often.

``python benchmarks/batch_cost.py 16 64 256 1024 4096``
"""

from __future__ import annotations

import argparse
import json
import sys

from systems.core import measure


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sizes", nargs="+", type=int, help="batch sizes")
    ap.add_argument("--batches", type=int, default=400, help="batches per pass (at least)")
    args = ap.parse_args(argv)
    rows = []
    for size in args.sizes:
        r = measure(max(size * args.batches, 65_536), batch_size=size, repeats=3)
        per_batch = {k: v * size for k, v in r["stage_us_per_event"].items()}
        per_batch["other"] = r["other_us_per_event"] * size
        rows.append({
            "batch_size": size,
            "events_per_s": round(r["events_per_s"]),
            "us_per_batch": round(1e6 / r["events_per_s"] * size, 1),
            "stage_us_per_batch": {k: round(v, 1) for k, v in per_batch.items()},
        })  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
