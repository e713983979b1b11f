#!/usr/bin/env python
"""What routing costs the rollout scorer per event, apart from inference.

``RolloutScorer.score`` on batches of 4096 keyed events (``acct-NNNNNNNN``) with a backend
that returns zeros at once, so the figure is the scorer's own work: the key hash, the
per-version row selection and the assembling of scores. Three states: stable only (no
rollout in progress), a 10% canary, and the canary with one keyless event in the batch.
Pinned to one CPU; the median of ``--rounds`` timed runs of ``--reps`` batches each.

``python benchmarks/rollout_cost.py [--reps 200] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from streamproc.backends.base import Backend
from streamproc.backends.onnx import DEMO_MODEL
from streamproc.models.spec import ModelSpec, load_model_spec
from streamproc.pipeline.rollout import RolloutScorer
from streamproc.rollout.state import Deploy, Strategy, StrategyParams, apply

BATCH = 4096


class Zeros(Backend):
    name = "zeros"

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), 2), np.float32)

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    spec = load_model_spec(DEMO_MODEL)

    def load(version: str) -> tuple[ModelSpec, Zeros]:
        return spec.model_copy(update={"version": version}), Zeros()

    stable = apply(None, Deploy("fraud", "1.0.0", at_ms=0))
    canary = apply(stable, Deploy("fraud", "1.1.0", Strategy.CANARY,
                                  StrategyParams(percent=10), at_ms=1))  # fmt: skip
    x = np.zeros((BATCH, len(spec.columns)), np.float32)
    keys: list[bytes | None] = [f"acct-{i:08d}".encode() for i in range(BATCH)]
    keyless = list(keys)
    keyless[5] = None
    out = {}
    for label, state, batch in (("stable only", stable, keys), ("canary 10%", canary, keys),
                                ("canary 10%, one keyless event", canary, keyless)):  # fmt: skip
        scorer = RolloutScorer(state, load)
        scorer.score(x, batch)  # compiles the hash kernel (or loads it from the cache)
        runs = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            for _ in range(args.reps):
                scorer.score(x, batch)
            runs.append((time.perf_counter() - t) / args.reps / BATCH * 1e6)
        out[label] = round(statistics.median(runs), 4)
    print(json.dumps({"us_per_event": out, "batch": BATCH}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
