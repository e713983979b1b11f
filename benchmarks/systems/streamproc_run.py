"""streamproc's side of the benchmark: the pipeline YAML for (a), and a profiled in-process run.

(a) itself is ``python -m streamproc run -c <yaml>`` with the YAML from :func:`pipeline_yaml`.

``python -m systems.streamproc_run <worker-config.json>`` is the *profiled* run: the same
``build_processor(cfg)`` in this process, with timers around KafkaRunner's pieces and a
sensor summing ``BatchStats.stage_s``; it stops itself after ``stop_after`` events and
writes the per-stage profile (microseconds per event) to ``report_path``:

* ``decode``, ``inference``, ``encode``, ``monitor``: ``BatchStats.stage_s`` summed;
* ``handler_other``: the rest of ``BatchHandler.__call__`` (dead letters, BatchStats,
  metrics snapshots);
* ``batching``: ``KafkaRunner._step`` minus ``_process`` (``consumer.consume``, the
  MicroBatcher, lag reports) plus ``to_raw_batch`` (the columnar RawBatch);
* ``produce``: ``KafkaRunner._commit`` plus any ``_flush_and_commit`` called outside it
  (idle steps, revoke, shutdown) = ``producer.produce`` per record (``produce_calls``) +
  serving failed records' reports, flushing and committing offsets (``flush_commit``);
* ``telemetry``: the sensors' ``on_batch`` (Prometheus, counters, this profiler).

The first batch is not counted (consumer group join, first fetch, warm caches).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from systems.shared import WorkerConfig, config_from_argv, write_report


def pipeline_dict(cfg: WorkerConfig) -> dict[str, Any]:
    """The reference workload as a streamproc pipeline config (JSON/YAML-ready), with
    ``cfg.overrides`` set over it by dotted path."""
    out = _reference(cfg)
    for dotted, value in cfg.overrides.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def _reference(cfg: WorkerConfig) -> dict[str, Any]:
    t = cfg.input_topic
    return {
        "name": cfg.group_id,
        "model": cfg.model_dir,
        "group_id": cfg.group_id,
        "instance_id": f"{cfg.system}-0",
        "kafka": {"bootstrap": cfg.bootstrap, "client_id": cfg.system},
        "registry": {"url": cfg.registry_url},
        "topics": {
            "input": t,
            "predictions": cfg.output_topic,
            "dlq": f"{t}.dlq",
            "shadow": f"{t}.shadow",
            "metrics": f"{t}.metrics",
            "alerts": f"{t}.alerts",
            "control": f"{t}.control",
            "partitions": 4,
        },
        # No max_event_age_ms: the synthetic backlog's event times are in the past, and an
        # age deadline would cut every batch short.
        "batching": {"max_batch_size": cfg.batch_size, "max_wait_ms": cfg.max_wait_ms},
        "delivery": {"guarantee": "at-least-once"},
        "metrics": {"port": None},
    }


def pipeline_yaml(cfg: WorkerConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(pipeline_dict(cfg), sort_keys=False))
    return path


class _Profile:
    def __init__(self, stop_after: int, on_done: Callable[[], None]) -> None:
        self.stop_after = stop_after
        self.on_done = on_done
        self.active = False
        self.finished = False
        self.seen = 0  # events handled, the uncounted first batch included
        self.events = 0  # events in the counted window
        self.batches = 0  # batches in the counted window
        self.t: defaultdict[str, float] = defaultdict(float)
        self.stage: defaultdict[str, float] = defaultdict(float)
        self.window = [0.0, 0.0]

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.perf_counter
        t = self.t

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return fn(*args, **kwargs)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                t[name] += clock() - t0

        return wrapper

    def on_batch(self, stats: Any) -> None:
        self.seen += stats.size
        if self.active:
            self.events += stats.size
            self.batches += 1
            for k, v in stats.stage_s.items():
                self.stage[k] += v

    def after_process(self) -> None:
        """Called after each batch: opens the window after the first, closes it at the end."""
        if self.finished:
            return
        if not self.active:
            self.active = True
            self.window[0] = time.perf_counter()
        elif self.seen >= self.stop_after > 0:
            self.window[1] = time.perf_counter()
            self.active = False
            self.finished = True
            self.on_done()

    def report(self) -> dict[str, Any]:
        n = max(self.events, 1)
        us = 1e6 / n
        t, st = self.t, self.stage
        produce = t["commit"] + t["flush_outside_commit"]
        stages = st["decode"] + st["infer"] + st["encode"] + st["monitor"]
        end = self.window[1] or time.perf_counter()
        wall = end - self.window[0] if self.window[0] else 0.0
        profile = {
            "decode": st["decode"] * us,
            "batching": (t["step"] - t["process"] - t["flush_outside_commit"] + t["to_raw_batch"])
            * us,
            "inference": st["infer"] * us,
            "encode": st["encode"] * us,
            "produce": produce * us,
            "produce_calls": t["produce_all"] * us,
            "flush_commit": (produce - t["produce_all"]) * us,
            "monitor": st["monitor"] * us,
            "handler_other": (t["handler"] - stages) * us,
            "telemetry": t["on_batch"] * us,
            "total_wall": wall * us,
        }
        return {
            "events": self.events,
            "wall_s": wall,
            "events_per_s": self.events / wall if wall else 0.0,
            "batches": self.batches,
            "mean_batch": round(self.events / max(self.batches, 1), 1),
            "profile_us_per_event": {k: round(v, 3) for k, v in profile.items()},
        }


def run_profiled(cfg: WorkerConfig) -> None:
    import streamproc.kafka.runner as runner_mod
    from streamproc.config import PipelineConfig
    from streamproc.pipeline.app import build_processor, settle_collector
    from streamproc.telemetry import Sensor
    from systems.shared import stop_on_signals

    stop = stop_on_signals()
    pcfg = PipelineConfig.model_validate(pipeline_dict(cfg))
    holder: dict[str, Any] = {}

    def stop_processor() -> None:
        holder["proc"].stop()

    prof = _Profile(cfg.stop_after, stop_processor)

    class StageSensor(Sensor):
        def on_batch(self, stats: Any) -> None:
            prof.on_batch(stats)

    proc = build_processor(pcfg, extra_sensor=StageSensor())
    holder["proc"] = proc
    # As `streamproc run` does (cli.py): the profile has the shipped worker's collections.
    settle_collector()
    runner = proc.runner
    # Instance attributes shadow the class's methods: KafkaRunner calls self._step() etc.
    runner._step = prof.timed("step", runner._step)  # type: ignore[method-assign]
    inner_process = prof.timed("process", runner._process)

    def process(rel: Any) -> None:
        inner_process(rel)
        prof.after_process()

    runner._process = process  # type: ignore[method-assign]
    runner._handle_with_retry = prof.timed("handler", runner._handle_with_retry)  # type: ignore[method-assign]
    inner_commit = prof.timed("commit", runner._commit)
    in_commit = [False]

    def commit(*args: Any, **kwargs: Any) -> Any:
        in_commit[0] = True
        try:
            return inner_commit(*args, **kwargs)
        finally:
            in_commit[0] = False

    runner._commit = commit  # type: ignore[method-assign]
    # Flushes and commits called outside _commit (idle steps, revoke, shutdown) count under
    # produce.
    flush_and_commit = runner._flush_and_commit
    timed_flush = prof.timed("flush_outside_commit", flush_and_commit)

    def outside(*args: Any, **kwargs: Any) -> Any:
        if in_commit[0]:  # already inside the _commit timer
            return flush_and_commit(*args, **kwargs)
        return timed_flush(*args, **kwargs)

    runner._flush_and_commit = outside  # type: ignore[method-assign]
    runner._produce_all = prof.timed("produce_all", runner._produce_all)  # type: ignore[method-assign]
    runner.sensor.on_batch = prof.timed("on_batch", runner.sensor.on_batch)  # type: ignore[method-assign]
    runner_mod.to_raw_batch = prof.timed("to_raw_batch", runner_mod.to_raw_batch)  # type: ignore[assignment]

    import threading

    def watch() -> None:
        stop.wait()
        proc.stop()

    threading.Thread(target=watch, daemon=True).start()
    try:
        proc.run()
    finally:
        write_report(cfg, prof.report())


if __name__ == "__main__":
    run_profiled(config_from_argv())
