"""The parameters of quick and full runs, the systems compared, and the paths."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from streamproc.config import BatchSettings

BENCH = Path(__file__).resolve().parent.parent  # benchmarks/
ROOT = BENCH.parent

BATCH = BatchSettings()  # the pipeline defaults: every system gets the same window
LATENCY_SWEEP = (2_000.0, 10_000.0, 25_000.0, 50_000.0)  # streamproc's extra phases, events/s

SYSTEMS = ("streamproc", "passthrough", "naive", "faust", "quix")
PROFILED = "streamproc-profiled"
MODEL = ROOT / "deploy" / "models" / "fraud" / "1.0.0"
QUIX_SITE = Path(os.environ.get("STREAMPROC_BENCH_QUIX_SITE", BENCH / "out" / "quix-site"))
RESULTS = BENCH / "RESULTS.md"
BEFORE = BENCH / "profile_before.json"  # the per-stage profile before the hot-path work
PARTITIONS = 4


@dataclass(frozen=True)
class Params:
    n: int  # events per system in the measured drain
    warmup: int  # events drained first, not measured
    latency_share: float  # the latency phase's rate, as a share of the system's drain rate
    latency_s: float  # duration of the latency phase
    drain_timeout_s: float
    core_events: int
    quick: bool
    # The whole run's time budget (None: none). It never skips a system: each one still
    # starts, and its drain is cut short at its share of the time left (at least
    # `min_drain_s`), its events/s measured over what it drained by then (cli.drain_deadline).
    budget_s: float | None = None
    min_drain_s: float = 25.0
    # Drains per system in ROUND_SYSTEMS: the first with the latency phase, the rest drain
    # only, in rotated order; events/s is their median (this VM's speed drifts by run).
    rounds: int = 1
    # Events per drain for LONG_SYSTEMS (None: n). At 500,000 the passthrough's drains took
    # under a second and ran 474k-736k events/s; at 2,000,000 they ran 686k-798k (2.5-3 s),
    # streamproc's about the same at both: short drains understated the ceiling.
    n_long: int | None = None
    # The unreported warm-up run before the measured systems: a passthrough drain of
    # `warm_n` events, then `warm_s` seconds paced at `warm_rate` (None: half its drain
    # rate). It exists for the fresh broker's JIT compiler: in the first two paced phases
    # after a start, C2 compiler threads took 0.32 and then 0.08 of a core on average, and
    # 80% and then 65% of the events slower than 22 ms on the processor side came in while
    # they were busy
    # (benchmarks/README.md, "The broker's JIT compiler").
    warm_n: int = 4_000
    warm_s: float = 1.0
    warm_rate: float | None = None

    def drain_n(self, name: str) -> int:
        """Events per measured drain of system ``name``."""
        return self.n_long if self.n_long and name in LONG_SYSTEMS else self.n


QUICK = Params(n=30_000, warmup=2_000, latency_share=0.5, latency_s=3.0,
               drain_timeout_s=40.0, core_events=51_200, quick=True,
               budget_s=170.0)  # fmt: skip
FULL = Params(n=500_000, warmup=5_000, latency_share=0.5, latency_s=10.0,
              drain_timeout_s=300.0, core_events=102_400, quick=False, rounds=5,
              n_long=2_000_000, warm_n=300_000, warm_s=20.0, warm_rate=200_000.0)  # fmt: skip
# Systems drained `rounds` times (Faust and Quix once: their drains take minutes and their
# ratios are far from the bounds).
ROUND_SYSTEMS = ("streamproc", "passthrough", "naive")
# Systems whose every round also runs a latency phase at streamproc's main latency-phase
# rate: the p99 target is judged on the median over the rounds, beside the passthrough's at
# the same rate in the same rounds (one 10 s phase's p99 spread from 24 to 142 ms on this
# machine for one configuration: benchmarks/README.md, "Latency over rounds").
LATENCY_ROUND_SYSTEMS = ("streamproc", "passthrough")
# The systems of the x-passthrough ratio drain Params.n_long events: long enough to measure a
# steady rate (the others run at under 30,000 events/s: n takes them 18 s or more).
LONG_SYSTEMS = ("streamproc", "passthrough")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
