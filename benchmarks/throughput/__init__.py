"""Throughput and latency of streamproc against four other ways to run the same workload.

Reference workload: synthetic Transaction events (Confluent-framed Avro through the schema
registry) on 4 partitions, the demo fraud model (ONNX) on the CPU, batches of at most the
pipeline's default ``max_batch_size`` events or 5 ms, at-least-once, the real local broker
and registry. Systems, each its own OS process, run one after the other with the same
harness:

* ``streamproc``: ``python -m streamproc run -c <generated yaml>``;
* ``passthrough``: confluent-kafka consume(batch) -> produce raw bytes -> flush -> commit;
* ``naive``: the same loop with per-event fastavro decode, ONNX call and fastavro encode;
* ``faust``: a faust-streaming agent with ``stream.take({batch}, within={wait} ms)``;
* ``quix``: a Quix Streams StreamingDataFrame, per-event scoring.

Per system: a fresh input topic is pre-filled with ``warmup + n`` events (``n_long`` for
the two systems of the x-passthrough ratio, :data:`LONG_SYSTEMS`); the worker
starts and drains it (throughput phase), then events are produced at a fixed rate with
``event_time = now`` (latency phase), then the worker gets SIGTERM. Output topics use
``message.timestamp.type=LogAppendTime``, so every output record carries the broker's
append time; see ``benchmarks/README.md`` for the exact definitions.

``python benchmarks/throughput.py --quick`` (a few minutes on 2 cores) or without
``--quick`` for the full run, which also writes ``benchmarks/RESULTS.md``. The last line
printed is one JSON object with the figures.

The package, one module per concern:

* :mod:`.config`: the parameters of quick and full runs, the systems, paths;
* :mod:`.harness`: the machine, the broker and registry, the broker's warm-up run, the
  in-process core measurement;
* :mod:`.workload`: the pre-filled backlog and the paced load generator;
* :mod:`.watch`: sampling a worker's CPU and memory, counting and reading topics, stopping;
* :mod:`.runner`: one system's run (drain, latency phases, stop) and the repeated drains;
* :mod:`.latency`: the latency phases and their rounds;
* :mod:`.figures`: events/s, CPU and latency figures from the topics' append times;
* :mod:`.summary`: the JSON summary, ratios and targets;
* :mod:`.report`: RESULTS.md;
* :mod:`.cli`: the command line and the run's order (``main``).

``benchmarks/throughput.py`` is the script users run; other scripts ``import throughput``
(with ``benchmarks/`` on ``sys.path`` that name is this package) and use the names below.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The workers are started as ``python -m systems.<name>`` and the harness imports
# ``systems.shared``: ``benchmarks/`` must be importable before any submodule loads.
_BENCH = str(Path(__file__).resolve().parent.parent)
if _BENCH not in sys.path:
    sys.path.insert(0, _BENCH)

from streamproc.kafka.registry import Registry  # noqa: E402

from .cli import main  # noqa: E402
from .config import (  # noqa: E402
    BATCH,
    BENCH,
    FULL,
    LATENCY_ROUND_SYSTEMS,
    LATENCY_SWEEP,
    LONG_SYSTEMS,
    PROFILED,
    QUICK,
    ROOT,
    ROUND_SYSTEMS,
    SYSTEMS,
    Params,
    log,
)
from .figures import _REGISTRY  # noqa: E402
from .harness import Services, machine, services, warm_broker  # noqa: E402
from .latency import round_medians  # noqa: E402
from .runner import repeat_drains, run_system  # noqa: E402
from .summary import hot_path_targets, ratios, summarize  # noqa: E402
from .workload import PACED_PRODUCER, Workload  # noqa: E402

__all__ = [
    "BATCH",
    "BENCH",
    "FULL",
    "LATENCY_ROUND_SYSTEMS",
    "LATENCY_SWEEP",
    "LONG_SYSTEMS",
    "PACED_PRODUCER",
    "PROFILED",
    "QUICK",
    "ROOT",
    "ROUND_SYSTEMS",
    "SYSTEMS",
    "_REGISTRY",
    "Params",
    "Registry",
    "Services",
    "Workload",
    "hot_path_targets",
    "log",
    "machine",
    "main",
    "ratios",
    "repeat_drains",
    "round_medians",
    "run_system",
    "services",
    "summarize",
    "warm_broker",
]
