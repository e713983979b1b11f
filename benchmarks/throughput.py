#!/usr/bin/env python
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

``python benchmarks/throughput.py --quick`` (under 3 minutes on 2 cores) or without
``--quick`` for the full run, which also writes ``benchmarks/RESULTS.md``. The last line
printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import psutil
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from systems.shared import COMPARED_BATCH, WorkerConfig, to_ms  # noqa: E402
from systems.streamproc_run import pipeline_yaml  # noqa: E402

from streamproc import schemas, synth  # noqa: E402
from streamproc.codecs.encoder import zigzag_varint  # noqa: E402
from streamproc.config import BatchSettings  # noqa: E402
from streamproc.kafka.admin import Admin  # noqa: E402
from streamproc.kafka.registry import Registry  # noqa: E402

BATCH = BatchSettings()  # the pipeline defaults: every system gets the same window
LATENCY_SWEEP = (2_000.0, 10_000.0, 25_000.0, 50_000.0)  # streamproc's extra phases, events/s
from streamproc.local import LocalStack, from_environment  # noqa: E402

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
    budget_s: float | None = None  # stop starting systems when the whole run nears this
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


# -- the machine ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("confluent-kafka", "fastavro", "onnxruntime", "numpy", "faust-streaming",
                 "aiokafka"):  # fmt: skip
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    quix = _quix_version()
    if quix:
        versions["quixstreams"] = quix
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "git": git_state(),
        "versions": versions,
    }


def git_state() -> dict[str, Any]:
    """The commit measured and whether the working tree differed from it."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    import hashlib

    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "streamproc").splitlines()]
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip() or "unknown",
        "streamproc_changes": len(dirty),
        "streamproc_diff_sha256": hashlib.sha256(
            git("diff", "HEAD", "--", "streamproc").encode()
        ).hexdigest()[:12],
    }


def _quix_version() -> str | None:
    if importlib.util.find_spec("quixstreams") is not None:
        return importlib.metadata.version("quixstreams")
    for d in QUIX_SITE.glob("quixstreams-*.dist-info"):
        return d.name.removeprefix("quixstreams-").removesuffix(".dist-info") + " (isolated)"
    return None


# -- the services ----------------------------------------------------------------------------


@dataclass
class Services:
    bootstrap: str
    registry_url: str
    broker_pids: list[int] = field(default_factory=list)


@contextlib.contextmanager
def services(home: Path) -> Iterator[Services]:
    external = from_environment()
    if external is not None:
        log(f"using the services named in the environment: {external.public()}")
        yield Services(external.bootstrap, external.schema_registry)
        return
    stack = LocalStack(home=home / "stack")
    t0 = time.monotonic()
    info = stack.up()
    log(f"local broker + registry up in {time.monotonic() - t0:.1f}s: {info.public()}")
    try:
        pids = [p for p in (info.kafka_pid, info.registry_pid) if p]
        yield Services(info.bootstrap, info.schema_registry, pids)
    finally:
        stack.down()
        log("local broker + registry stopped")


# -- the workload ----------------------------------------------------------------------------


# The latency phases' producer: the client's defaults (librdkafka's, like the Java client's
# since Kafka 4.0: linger 5 ms, acks=all), what a user's producer sends with. Until
# 2026-11-26 it had linger.ms=0: every few records went out as a request of their own, which
# cost the 2-core machine ~0.4 cores more at 94,000 events/s and put the input side's p99 at
# 46-159 ms against 8-21 ms (benchmarks/README.md, "The load generator's linger").
PACED_PRODUCER: dict[str, Any] = {"linger.ms": 5, "acks": "all"}


class Workload:
    """The same ``warmup + n`` events for every system: Avro bodies encoded once."""

    def __init__(self, svc: Services, count: int, seed: int = 3) -> None:
        self.svc = svc
        records, _ = synth.generate(count, seed=seed)
        parsed = schemas.parsed("Transaction")
        self.bodies: list[bytes] = []
        for r in records:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, r)
            self.bodies.append(buf.getvalue())
        self.keys = [r["account_id"].encode() for r in records]
        self.registry = Registry(svc.registry_url)
        self.producer = Producer({"bootstrap.servers": svc.bootstrap, "linger.ms": 20,
                                  "batch.num.messages": 10_000, "compression.type": "lz4",
                                  "queue.buffering.max.messages": 2_000_000})  # fmt: skip

    def schema_id(self, topic: str) -> int:
        return self.registry.register(
            schemas.subject_for(topic), schemas.schema_text("Transaction")
        )

    def prefill(self, topic: str, count: int | None = None) -> int:
        """Produce the first ``count`` events (all when None) to ``topic``."""
        head = b"\x00" + self.schema_id(topic).to_bytes(4, "big")
        produce, poll = self.producer.produce, self.producer.poll
        count = len(self.bodies) if count is None else min(count, len(self.bodies))
        for body, key in zip(self.bodies[:count], self.keys[:count], strict=True):
            while True:
                try:
                    produce(topic, head + body, key)
                    break
                except BufferError:
                    poll(0.05)
        if self.producer.flush(60):
            raise RuntimeError(f"prefill of {topic} not acknowledged")
        return count

    def close(self) -> None:
        """Destroy the client before the broker stops (no reconnect noise)."""
        self.producer.flush(10)
        del self.producer

    def paced(self, topic: str, count: int, rate: float, seed: int = 5) -> tuple[int, float]:
        """Produce ``count`` events at ``rate``/s, ``event_time`` = the wall clock at send.

        Events are encoded once (a pool of up to 20,000, reused in turn); at send time only
        the varint of ``event_time`` is written between each event's two fixed parts, so
        the harness keeps up with rates of 100k events/s.
        """
        head = b"\x00" + self.schema_id(topic).to_bytes(4, "big")
        parts = _time_split_events(min(count, 20_000), seed)
        p = Producer({"bootstrap.servers": self.svc.bootstrap, **PACED_PRODUCER,
                      "queue.buffering.max.messages": 2_000_000})  # fmt: skip
        produce, poll = p.produce, p.poll
        tick = 0.005
        per_tick = max(1, round(rate * tick))
        pool = len(parts)
        start = time.monotonic()
        sent = 0
        while sent < count:
            stamp = zigzag_varint(int(time.time() * 1000))
            for i in range(sent, min(sent + per_tick, count)):
                before, after, key = parts[i % pool]
                produce(topic, head + before + stamp + after, key)
            sent = min(sent + per_tick, count)
            poll(0)
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        elapsed = time.monotonic() - start
        left = p.flush(30)
        del p
        if left:
            raise RuntimeError(f"latency events to {topic} not acknowledged")
        return sent, elapsed


def _time_split_events(count: int, seed: int) -> list[tuple[bytes, bytes, bytes]]:
    """Transaction bodies split around their ``event_time`` varint: (before, after, key).

    Every millisecond time of this era zigzag-encodes to the same number of bytes, so any
    current time fits between the two parts; checked against fastavro below.
    """
    records, _ = synth.generate(count, seed=seed)
    parsed = schemas.parsed("Transaction")
    now = int(time.time() * 1000)
    width = len(zigzag_varint(now))
    assert width == len(zigzag_varint(now + 86_400_000))  # no width change within a day
    out = []
    for r in records:
        bodies = []
        for t in (now, now + 1):
            r["event_time"] = t
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, r)
            bodies.append(buf.getvalue())
        at = next(i for i, (a, b) in enumerate(zip(*bodies, strict=True)) if a != b)
        out.append((bodies[0][:at], bodies[0][at + width :], r["account_id"].encode()))
    before, after, _ = out[0]
    check = fastavro.schemaless_reader(io.BytesIO(before + zigzag_varint(now + 5) + after), parsed)
    assert to_ms(check["event_time"]) == now + 5, "event_time split misplaced"
    return out


# -- watching a worker -----------------------------------------------------------------------


class Sampler(threading.Thread):
    """Samples a process's CPU seconds and RSS, and the machine's busy CPU, every period."""

    def __init__(self, pid: int, others: list[int], period_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.others = [psutil.Process(p) for p in others if psutil.pid_exists(p)]
        self.period_s = period_s
        self.samples: list[tuple[float, float, int, float, float]] = []
        self.hwm = 0  # VmHWM: the process's own peak RSS (bytes), read every 10th sample
        self._halt = threading.Event()

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        c = p.cpu_times()
        return c.user + c.system

    def run(self) -> None:
        me = psutil.Process()
        while not self._halt.is_set():
            try:
                t = time.time()
                cpu = self._cpu(self.proc)
                rss = self.proc.memory_info().rss
                sys_t = psutil.cpu_times()
                busy = sys_t.user + sys_t.nice + sys_t.system + sys_t.irq + sys_t.softirq
                known = sum(self._cpu(o) for o in self.others) + self._cpu(me)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                break
            self.samples.append((t, cpu, rss, busy, known))
            if len(self.samples) % 10 == 1:
                self.hwm = max(self.hwm, _vm_hwm(self.proc.pid))
            self._halt.wait(self.period_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def at(self, t: float, column: int) -> float:
        """A sampled column linearly interpolated at wall time ``t``."""
        if not self.samples:
            return float("nan")
        ts = np.array([s[0] for s in self.samples])
        vs = np.array([s[column] for s in self.samples], dtype=np.float64)
        return float(np.interp(t, ts, vs))

    def peak_rss(self) -> int:
        """The worker's own peak RSS: VmHWM (last read) or the largest sample."""
        return max(self.hwm, max((s[2] for s in self.samples), default=0))


def _vm_hwm(pid: int) -> int:
    """``VmHWM`` from /proc/<pid>/status in bytes (0 when unreadable).

    Not ``ru_maxrss`` from ``wait4``: Linux carries the high-water mark across ``execve``,
    and a child started by vfork/fork inherits the harness's own peak that way.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Outputs:
    """Counts and reads an output topic (4 partitions)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        group = f"w-{uuid.uuid4().hex[:8]}"
        self.watch = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self.parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self._last = 0

    def count(self) -> int:
        """Records in the topic (high watermarks); the last count on a transient error
        (a new topic's leadership may not have propagated yet)."""
        total = 0
        try:
            for tp in self.parts:
                _, high = self.watch.get_watermark_offsets(tp, timeout=5, cached=False)
                total += max(high, 0)
        except KafkaException:
            return self._last
        self._last = total
        return total

    def read(self, expected: int) -> list[tuple[int, int, bytes]]:
        """Every record as (append time ms, timestamp type, value)."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                      "enable.auto.commit": False, "fetch.wait.max.ms": 10})  # fmt: skip
        c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        out: list[tuple[int, int, bytes]] = []
        idle = 0
        try:
            while len(out) < expected and idle < 3:
                msgs = c.consume(10_000, timeout=1.0)
                if not msgs:
                    idle += 1
                    continue
                idle = 0
                for m in msgs:
                    if m.error() is None:
                        kind, ts = m.timestamp()
                        out.append((ts, kind, m.value() or b""))
        finally:
            c.close()
        return out

    def close(self) -> None:
        self.watch.close()


def wait_for(outputs: Outputs, target: int, deadline: float, proc: subprocess.Popen[bytes]) -> str:
    """'ok' when the topic holds ``target`` records, 'timeout', or 'exited'."""
    while True:
        if outputs.count() >= target:
            return "ok"
        if proc.poll() is not None:
            return "exited"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> tuple[str, int]:
    """SIGTERM, then SIGKILL after ``grace_s``; returns (how it ended, ru_maxrss in KiB).

    ``ru_maxrss`` is kept for reference only: it includes the harness's RSS (see _vm_hwm).
    """
    how = "exited"
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        how = "sigterm"
    deadline = time.monotonic() + grace_s
    while True:
        try:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # already reaped by Popen.poll
            return how, 0
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return how, int(ru.ru_maxrss)
        if time.monotonic() > deadline and how != "sigkill":
            proc.kill()
            how = "sigkill"
        time.sleep(0.05)


# -- one system ------------------------------------------------------------------------------


def _command(name: str, cfg: WorkerConfig, work: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    path = [str(BENCH)]
    if name == "streamproc":
        yaml_path = pipeline_yaml(cfg, work / f"{cfg.group_id}.yaml")
        cmd = [sys.executable, "-m", "streamproc", "run", "-c", str(yaml_path),
               "--log-level", "WARNING"]  # fmt: skip
        env.pop("STREAMPROC_KAFKA_BOOTSTRAP", None)  # the yaml names the services
        env.pop("STREAMPROC_SCHEMA_REGISTRY_URL", None)
        return cmd, env
    module = {"passthrough": "passthrough", "naive": "naive", "faust": "faust_agent",
              "quix": "quix_app", PROFILED: "streamproc_run"}[name]  # fmt: skip
    if name == "quix" and importlib.util.find_spec("quixstreams") is None:
        if not QUIX_SITE.is_dir():
            raise RuntimeError(
                "quixstreams is not installed: pip install quixstreams (or into an isolated "
                f"directory with: pip install --target {QUIX_SITE} quixstreams)"
            )
        path.append(str(QUIX_SITE))  # its confluent-kafka / pydantic shadow the venv's
    env["PYTHONPATH"] = os.pathsep.join([*path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cfg_path = work / f"{cfg.group_id}.json"
    cfg.save(cfg_path)
    return [sys.executable, "-m", f"systems.{module}", str(cfg_path)], env


def run_system(
    name: str,
    p: Params,
    svc: Services,
    load: Workload,
    work: Path,
    drain_timeout_s: float,
    latency: bool = True,
    extra_rates: tuple[float, ...] = (),
    batch_size: int = BATCH.max_batch_size,
    max_wait_ms: float = BATCH.max_wait_ms,
    only_rate: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Drain the prefilled input, then (``latency``) the latency phases: at ``latency_share``
    of this system's drain rate, at ``extra_rates`` (another system's rate, for a like-for-like
    comparison) and, for streamproc, at the fixed ``LATENCY_SWEEP`` rates below it; with
    ``only_rate``, one phase at that rate alone (the main one). ``overrides`` set streamproc
    pipeline config keys by dotted path (``systems.streamproc_run.pipeline_dict``)."""
    if overrides and name not in ("streamproc", PROFILED):
        raise ValueError(f"config overrides apply to streamproc only, not {name}")
    run = uuid.uuid4().hex[:6]
    in_t, out_t = f"bench-{name}-{run}", f"bench-{name}-{run}.out"
    admin = Admin(svc.bootstrap)
    # Both topics stamp records with the broker's append time: the input's splits each
    # latency into the input side (harness producer + broker) and the processor side.
    admin.ensure_topics([in_t, out_t], partitions=PARTITIONS,
                        config={"message.timestamp.type": "LogAppendTime"})  # fmt: skip
    total = load.prefill(in_t, p.warmup + p.drain_n(name))
    profiled = name == PROFILED
    cfg = WorkerConfig(
        system=name, bootstrap=svc.bootstrap, registry_url=svc.registry_url,
        input_topic=in_t, output_topic=out_t, group_id=f"bench-{name}-{run}",
        model_dir=str(MODEL), batch_size=batch_size, max_wait_ms=max_wait_ms,
        state_dir=str(work / f"state-{name}-{run}"),
        report_path=str(work / f"report-{name}-{run}.json"),
        stop_after=total if profiled else 0, overrides=overrides or {},
    )  # fmt: skip
    result: dict[str, Any] = {"input_topic": in_t, "output_topic": out_t}
    try:
        cmd, env = _command(name, cfg, work)
    except RuntimeError as exc:
        log(f"{name}: not run: {exc}")
        return {"error": str(exc)}
    log_path = work / f"{name}-{run}.log"
    outputs = Outputs(svc.bootstrap, out_t)
    log(f"{name}: {total} events in {in_t}; starting {' '.join(cmd[1:4])} ...")
    t_spawn = time.time()
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    sampler = Sampler(proc.pid, svc.broker_pids)
    sampler.start()
    status = "ok"
    phases: list[dict[str, Any]] = []
    lat_sent = 0
    try:
        t_start = time.monotonic()
        status = wait_for(outputs, total, t_start + drain_timeout_s, proc)
        if status == "ok" and not profiled and latency:
            # The latency phase runs at a share of this system's own drain rate; streamproc
            # also at a few fixed rates below it, lowest first (latency against load).
            drained = outputs.read(total)
            rate = _drain_rate(p, sorted(ts for ts, _, _ in drained), total) or 1_000.0
            del drained
            main_rate = p.latency_share * rate if only_rate is None else only_rate
            rates = sorted({main_rate, *extra_rates})
            if name == "streamproc" and only_rate is None:
                rates = sorted({*[r for r in LATENCY_SWEEP if r < 0.9 * main_rate], *rates})
            for i, r in enumerate(rates):
                start_ms = int(time.time() * 1000)
                sent, elapsed = load.paced(in_t, int(r * p.latency_s), r, seed=5 + i)
                lat_sent += sent
                phases.append({
                    "main": r == main_rate, "target_rate": round(r, 1),
                    "achieved_rate": round(sent / elapsed, 1), "sent": sent,
                    "start_ms": start_ms, "end_ms": int(time.time() * 1000),
                })  # fmt: skip
                catch_up = 15.0 + lat_sent / rate
                status = wait_for(outputs, total + lat_sent, time.monotonic() + catch_up, proc)
                if status != "ok":
                    status = f"latency phase at {r:,.0f}/s {status}"
                    break
        elif profiled and status == "ok":
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)  # it stops itself after `total` events
        elif status != "ok":  # (ok and not latency: a repeated drain, no latency phase)
            status = f"drain {status}"
    finally:
        sampler.hwm = max(sampler.hwm, _vm_hwm(proc.pid))  # the peak before shutdown
        how, maxrss_kib = stop_process(proc)
        sampler.stop()
    result["status"] = status
    result["stopped_by"] = how
    result["exit_code"] = proc.returncode
    if status != "ok":
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        result["log_tail"] = tail
        log(f"{name}: {status}; log tail:\n  " + "\n  ".join(tail))
    records = outputs.read(total + lat_sent)
    outputs.close()
    inputs: list[tuple[int, int, bytes]] = []
    if phases:
        reader = Outputs(svc.bootstrap, in_t)
        inputs = [r for r in reader.read(total + lat_sent) if r[0] >= phases[0]["start_ms"]]
        reader.close()
    result.update(_figures(p, records, total, phases, lat_sent, sampler, t_spawn, inputs))
    result["peak_rss_mb"] = round(sampler.peak_rss() / 2**20, 1)
    result["ru_maxrss_mb"] = round(maxrss_kib / 1024, 1)  # includes the harness (vfork)
    report = Path(cfg.report_path)
    if report.exists():
        result["worker_report"] = json.loads(report.read_text())
    log(f"{name}: {status}, " + ", ".join(
        f"{k}={result.get(k)}" for k in ("events_per_s", "p50_ms", "p99_ms",
                                          "cpu_s_per_million", "peak_rss_mb")))  # fmt: skip
    return result


def repeat_drains(
    p: Params,
    names: list[str],
    svc: Services,
    load: Workload,
    work: Path,
    results: dict[str, dict[str, Any]],
) -> None:
    """Drain each system ``p.rounds - 1`` more times, in rotated order, and make its
    events/s the median of all its drains (the first round's stays under
    ``events_per_s_first``; every other figure is the first round's).

    Each drain of a system in ``LATENCY_ROUND_SYSTEMS`` is followed by one latency phase at
    streamproc's main latency-phase rate of the first round; with the first round's phases
    at that rate they make ``latency_rounds`` (one row per round)."""
    rates: dict[str, list[float]] = {
        n: [results[n]["events_per_s"]] for n in names if results[n].get("events_per_s")
    }
    sp_rate = _main_rate(results)
    for name in LATENCY_ROUND_SYSTEMS:
        first = _phase_at(results.get(name, {}), sp_rate)
        if name in names and first is not None:
            results[name]["latency_rounds"] = [_round_row(1, first)]
    for r in range(1, p.rounds):
        order = names[r % len(names) :] + names[: r % len(names)] if names else []
        for name in order:
            if name not in rates:
                continue
            fixed = sp_rate if name in LATENCY_ROUND_SYSTEMS else None
            again = run_system(name, p, svc, load, work, p.drain_timeout_s,
                               latency=fixed is not None, only_rate=fixed)  # fmt: skip
            if again.get("status") == "ok" and again.get("events_per_s"):
                rates[name].append(again["events_per_s"])
            else:
                log(f"{name}: round {r + 1} {again.get('status')}; left out of the median")
            ph = _phase_at(again, fixed)
            if ph is not None and again.get("status") == "ok":
                results[name].setdefault("latency_rounds", []).append(_round_row(r + 1, ph))
    for name, vals in rates.items():
        if len(vals) > 1:
            results[name]["events_per_s_first"] = vals[0]
            results[name]["events_per_s_rounds"] = vals
            results[name]["events_per_s"] = round(statistics.median(vals), 1)


ROUND_KEYS = ("achieved_rate", "p50_ms", "p99_ms", "input_p99_ms", "processor_p50_ms",
              "processor_p99_ms", "worker_cores", "machine_cores")  # fmt: skip


def _main_rate(results: dict[str, dict[str, Any]]) -> float | None:
    """streamproc's main latency-phase rate in the first round (None if it had none)."""
    return next((float(ph["target_rate"]) for ph in results.get("streamproc", {})
                 .get("latency_phases", []) if ph["main"]), None)  # fmt: skip


def _phase_at(result: dict[str, Any], rate: float | None) -> dict[str, Any] | None:
    """A result's latency phase at ``rate`` (None if there is none)."""
    if rate is None:
        return None
    phases = result.get("latency_phases", [])
    return next((ph for ph in phases if abs(ph["target_rate"] - rate) < 1.0), None)


def _round_row(round_no: int, ph: dict[str, Any]) -> dict[str, Any]:
    return {"round": round_no, **{k: ph.get(k) for k in ROUND_KEYS}}


def round_medians(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The median over rounds of every figure of ``ROUND_KEYS`` (rounds lacking it left out).

    >>> round_medians([{"p99_ms": 30.0}, {"p99_ms": 76.0}, {"p99_ms": 24.0, "p50_ms": 9.0}])
    {'p50_ms': 9.0, 'p99_ms': 30.0}
    """
    out = {}
    for k in ROUND_KEYS:
        vals = [r[k] for r in rows if r.get(k) is not None]
        if vals:
            out[k] = round(float(statistics.median(vals)), 2)
    return out


def _drain_rate(p: Params, drain: list[int], total: int) -> float | None:
    """events/s between the warm-up's last output and the drain's last, by append time."""
    if len(drain) <= p.warmup + 1:
        return None
    last = min(len(drain), total) - 1
    secs = max((drain[last] - drain[p.warmup - 1]) / 1000.0, 1e-3)
    return (last - (p.warmup - 1)) / secs


def _figures(
    p: Params,
    records: list[tuple[int, int, bytes]],
    total: int,
    phases: list[dict[str, Any]],
    lat_sent: int,
    sampler: Sampler,
    t_spawn: float,
    inputs: list[tuple[int, int, bytes]] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"outputs": len(records)}
    if records and any(kind != TIMESTAMP_LOG_APPEND_TIME for _, kind, _ in records):
        out["warning"] = "output timestamps are not LogAppendTime"
    lat_start_ms = phases[0]["start_ms"] if phases else None
    cut = lat_start_ms if lat_start_ms is not None else 2**62
    drain = sorted(ts for ts, _, _ in records if ts < cut)
    out["drain_outputs"] = len(drain)
    if len(drain) > p.warmup + 1:
        last = min(len(drain), total) - 1
        t_a, t_b = drain[p.warmup - 1] / 1000.0, drain[last] / 1000.0
        events = last - (p.warmup - 1)
        secs = max(t_b - t_a, 1e-3)
        cpu = sampler.at(t_b, 1) - sampler.at(t_a, 1)
        busy = sampler.at(t_b, 3) - sampler.at(t_a, 3)
        known = sampler.at(t_b, 4) - sampler.at(t_a, 4)
        out.update({
            "events_per_s": round(events / secs, 1),
            "measured_events": events,
            "drain_s": round(secs, 3),
            "cpu_s_per_million": round(cpu / events * 1e6, 2),
            "cpu_cores_used": round(cpu / secs, 2),
            # CPU of everything but this worker, the broker/registry and the harness:
            # other users of the shared machine, in cores.
            "others_cores": round(max(busy - cpu - known, 0.0) / secs, 2),
            "startup_s": round(drain[0] / 1000.0 - t_spawn, 2),
            "events_per_s_incl_startup": round(min(len(drain), total) / (t_b - t_spawn), 1),
        })  # fmt: skip
    if lat_start_ms is not None:
        lat_all, sent_all, key_all = _latencies(
            [(ts, v) for ts, _, v in records if ts >= lat_start_ms]
        )
        # The input side of each event (its input record's append time minus event_time)
        # and the processor side (output append time minus input append time), joined on
        # (event_id, event_time).
        in_lat, in_sent, in_key = _latencies([(ts, v) for ts, _, v in inputs or []])
        order = np.argsort(in_key, kind="stable")
        in_key, in_append = in_key[order], (in_lat + in_sent)[order]
        out["latency_events"] = len(lat_all)
        out["latency_sent"] = lat_sent
        for ph in phases:
            sel = (sent_all >= ph["start_ms"]) & (sent_all <= ph["end_ms"])
            lat, sent_ms = lat_all[sel], sent_all[sel]
            ph["events"] = int(sel.sum())
            in_sel = (in_sent >= ph["start_ms"]) & (in_sent <= ph["end_ms"])
            if in_sel.any():
                ph["input_p50_ms"], ph["input_p99_ms"] = (
                    round(float(v), 2) for v in np.percentile(in_lat[in_sel], [50, 99])
                )
            if len(in_key) and len(lat):
                at = np.minimum(np.searchsorted(in_key, key_all[sel]), len(in_key) - 1)
                hit = in_key[at] == key_all[sel]
                proc = (lat + sent_ms)[hit] - in_append[at[hit]]
                ph["joined"] = int(hit.sum())
                if len(proc):
                    ph["processor_p50_ms"], ph["processor_p99_ms"] = (
                        round(float(v), 2) for v in np.percentile(proc, [50, 99])
                    )
            a, b = ph["start_ms"] / 1000.0, ph["end_ms"] / 1000.0
            # whole-machine and worker CPU during the phase, in cores (of os.cpu_count())
            ph["machine_cores"] = round((sampler.at(b, 3) - sampler.at(a, 3)) / (b - a), 2)
            ph["worker_cores"] = round((sampler.at(b, 1) - sampler.at(a, 1)) / (b - a), 2)
            ph["broker_harness_cores"] = round((sampler.at(b, 4) - sampler.at(a, 4)) / (b - a), 2)
            if len(lat):
                p50, p99 = np.percentile(lat, [50, 99])
                ph.update({"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2),
                           "max_ms": round(float(lat.max()), 2)})  # fmt: skip
                # p50 per second of the phase (by event_time): shows stalls and trends
                second = (sent_ms - ph["start_ms"]) // 1000
                ph["p50_ms_by_second"] = [
                    round(float(np.median(lat[second == k])), 1) for k in np.unique(second).tolist()
                ]
            if ph["main"]:
                out["latency_phase_rate"] = ph["achieved_rate"]
                for k in ("p50_ms", "p99_ms", "max_ms", "p50_ms_by_second"):
                    if k in ph:
                        out[k] = ph[k]
        out["latency_phases"] = phases
    return out


_WRITERS: dict[int, Any] = {}
_REGISTRY: list[Registry] = []


def _latencies(records: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Append time minus the input event_time carried in the record, those event times,
    and a key per record: the hash of (event_id, event_time), the same for an input
    event and its Prediction (unique within a run: a reused pool event carries a later
    event_time)."""
    out, sent, keys = [], [], []
    for ts, value in records:
        if len(value) < 5 or value[0] != 0:
            continue
        sid = int.from_bytes(value[1:5], "big")
        schema = _WRITERS.get(sid)
        if schema is None:
            raw = _REGISTRY[0].schema(sid)
            schema = _WRITERS[sid] = fastavro.parse_schema(raw)
        rec = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None)
        t = to_ms(rec["event_time"])  # type: ignore[index,call-overload]
        out.append(ts - t)
        sent.append(t)
        keys.append(hash((rec["event_id"], t)))  # type: ignore[index]
    return (np.asarray(out, dtype=np.float64), np.asarray(sent, dtype=np.int64),
            np.asarray(keys, dtype=np.int64))  # fmt: skip


# -- core ------------------------------------------------------------------------------------


def run_core(p: Params, work: Path) -> dict[str, Any]:
    report = work / "core.json"
    env = {**os.environ, "PYTHONPATH": str(BENCH)}
    cmd = [sys.executable, "-m", "systems.core", str(p.core_events), str(report)]
    t0 = time.monotonic()
    try:
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=120,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        out = getattr(exc, "output", b"") or b""
        log(f"core: failed: {exc}\n{out.decode(errors='replace')[-2000:]}")
        return {"error": str(exc)}
    result: dict[str, Any] = json.loads(report.read_text())
    log(f"core: {result['events_per_s']:.0f} events/s on one core "
        f"({time.monotonic() - t0:.1f}s)")  # fmt: skip
    return result


def combine_cores(first: dict[str, Any], again: dict[str, Any]) -> dict[str, Any]:
    """Full runs measure the core twice, before the broker starts and after the last
    drain; events/s is the median of both runs' passes (the VM's speed drifts)."""
    if "error" in first or "error" in again:
        return first if "error" in again else again
    passes = first["events_per_s_passes"] + again["events_per_s_passes"]
    out = {**first, "events_per_s": float(np.median(passes)), "events_per_s_passes": passes,
           "runs_events_per_s": [first["events_per_s"], again["events_per_s"]]}  # fmt: skip
    key = f"batch_{COMPARED_BATCH}"
    if key in first and key in again:
        b1, b2 = first[key], again[key]
        both = b1["events_per_s_passes"] + b2["events_per_s_passes"]
        out[key] = {**b1, "events_per_s": float(np.median(both)),
                    "events_per_s_passes": both}  # fmt: skip
    log(f"core: median of both runs' passes {out['events_per_s']:.0f} events/s")
    return out


# -- summary ---------------------------------------------------------------------------------

KEYS = ("events_per_s", "p50_ms", "p99_ms", "cpu_s_per_million", "peak_rss_mb")


def summarize(results: dict[str, dict[str, Any]], core: dict[str, Any],
              profile: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    summary: dict[str, Any] = {}
    for name in SYSTEMS:
        r = results.get(name)
        if r is None:
            continue
        summary[name] = {k: r.get(k) for k in KEYS}
        if r.get("status") != "ok":
            summary[name]["status"] = r.get("status") or r.get("error")
    summary["core_events_per_s"] = round(core.get("events_per_s", 0.0), 1) or None
    prof = profile.get("worker_report", {}).get("profile_us_per_event", {})
    summary["profile_us_per_event"] = prof or None
    summary["targets"] = hot_path_targets(results, core)
    return summary


def hot_path_targets(results: dict[str, dict[str, Any]], core: dict[str, Any]) -> dict[str, Any]:
    """The compiled-hot-path targets: each measured figure, its bound and whether it is met
    (None where a system did not run)."""
    rat = ratios(results)
    sp = results.get("streamproc", {})

    def target(value: Any, bound: float, at_least: bool) -> dict[str, Any]:
        met = None if value is None else (value >= bound if at_least else value <= bound)
        return {"value": value, ("min" if at_least else "max"): bound, "met": met}

    return {
        "core_events_per_s": target(core.get("events_per_s"), 500_000, True),
        "x_passthrough": target(rat.get("streamproc/passthrough"), 0.6, True),
        "x_naive": target(rat.get("streamproc/naive"), 10.0, True),
        "x_faust": target(rat.get("streamproc/faust"), 10.0, True),
        "x_quix": target(rat.get("streamproc/quix"), 10.0, True),
        # the median over the rounds' phases at that rate where there are rounds (full runs)
        "p99_ms_at_half_max_rate": target(
            round_medians(sp.get("latency_rounds", [])).get("p99_ms", sp.get("p99_ms")),
            25.0,
            False,
        ),
        "peak_rss_mb": target(sp.get("peak_rss_mb"), 500.0, False),
    }


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def eps(name: str) -> float | None:
        v = results.get(name, {}).get("events_per_s")
        return float(v) if v else None

    out: dict[str, Any] = {}
    base = eps("passthrough")
    for name in SYSTEMS:
        v = eps(name)
        if v and base:
            out[f"{name}/passthrough"] = round(v / base, 3)
    sp = eps("streamproc")
    for other in ("naive", "faust", "quix"):
        v = eps(other)
        if sp and v:
            out[f"streamproc/{other}"] = round(sp / v, 2)
    return out


# -- RESULTS.md -------------------------------------------------------------------------------

WHAT = {
    "streamproc": (
        "`python -m streamproc run -c <generated yaml>`: `build_processor(cfg)` as shipped "
        "(KafkaRunner + MicroBatcher, BatchDecoder, ONNX Runtime via `load_backend`, "
        "PredictionEncoder, lineage headers on every record, the default drift monitor, "
        "metrics snapshots), batches of <= {batch} / {wait} ms, at-least-once: {protocol}."
    ),
    "passthrough": (
        "confluent-kafka loop: `consume({batch}, {wait} ms)`, produce each raw value "
        "unchanged; {loop}; streamproc's client settings."
    ),
    "naive": (
        "the same loop and commit cadence; per event: fastavro `schemaless_reader` (writer "
        "schema fetched from the registry once per id), a Python feature row from "
        "model.yaml, one ONNX Runtime `session.run` on a 1-row matrix, a fastavro-encoded "
        "framed Prediction."
    ),
    "faust": (
        "faust-streaming agent, `stream.take({batch}, within={wait} ms)`: fastavro decode "
        "per event, one ONNX Runtime call per batch, fastavro encode and "
        "`await topic.send()` per event; Faust's own acking and periodic commits "
        "(aiokafka), producer linger 2 ms."
    ),
    "quix": (
        "Quix Streams `Application` + `StreamingDataFrame`: registry-aware `AvroDeserializer` "
        "(Confluent wire format), `sdf.apply(score)` with one ONNX Runtime call per event, "
        "`to_topic` with a registry-aware `AvroSerializer`; Quix's at-least-once checkpoints "
        "(commit every 5 s), producer lz4 + linger 2 ms like streamproc."
    ),
}


def _streamproc_protocol() -> str:
    """How this tree's KafkaRunner commits at-least-once (it has changed over time)."""
    from streamproc.kafka.runner import RunnerSettings

    ms = RunnerSettings(topic="t").commit_interval_s * 1000.0
    return (
        "produce each batch and go on (delivery reports for failed records only); at most "
        f"every {ms:.0f} ms (`delivery.commit_interval_ms`) an asynchronous commit of the "
        "offsets of the batches produced so far, once the producer's queue is empty (every "
        "ack), else after another interval with a `flush()`"
    )


def _loop_protocol() -> str:
    from streamproc.kafka.runner import RunnerSettings

    ms = RunnerSettings(topic="t").commit_interval_s * 1000.0
    return (
        f"every {ms:.0f} ms (streamproc's commit interval) and when a consume comes back "
        "empty: `flush()` (every ack) and a synchronous `commit()` of the next offsets"
    )


def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def _split_latency(res: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: streamproc's main latency phase beside the passthrough's phase at the
    same rate, each split into its input and processor sides."""
    sp = next((ph for ph in res.get("streamproc", {}).get("latency_phases", [])
               if ph["main"]), None)  # fmt: skip
    if sp is None:
        return []
    rows = [("streamproc", sp)]
    rows += [
        ("passthrough", ph)
        for ph in res.get("passthrough", {}).get("latency_phases", [])
        if abs(ph["target_rate"] - sp["target_rate"]) < 1.0
    ]
    return [
        f"## Latency at streamproc's latency-phase rate ({_f(sp['target_rate'], 0)} events/s)",
        "",
        "The passthrough runs a phase at streamproc's rate too: what the load generator, "
        "the broker and a consume-produce loop cost in latency at that rate on this machine. "
        "Each end-to-end latency splits into the input side and the processor side "
        "(Definitions).",
        "",
        "| system | achieved events/s | end-to-end p50 ms | end-to-end p99 ms | "
        "input p50 ms | input p99 ms | processor p50 ms | processor p99 ms | "
        "machine cores | joined events |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {n} | {_f(ph.get('achieved_rate'), 0)} | {_f(ph.get('p50_ms'))} | "
            f"{_f(ph.get('p99_ms'))} | {_f(ph.get('input_p50_ms'))} | "
            f"{_f(ph.get('input_p99_ms'))} | {_f(ph.get('processor_p50_ms'))} | "
            f"{_f(ph.get('processor_p99_ms'))} | {_f(ph.get('machine_cores'), 2)} | "
            f"{_f(ph.get('joined'), 0)} |"
            for n, ph in rows
        ],
        "",
    ]


def _latency_rounds(res: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: every round's latency phase at streamproc's rate, streamproc beside the
    passthrough, and the medians over the rounds."""
    sp_rows = res.get("streamproc", {}).get("latency_rounds", [])
    if len(sp_rows) < 2:
        return []
    pt_rows = {r["round"]: r for r in res.get("passthrough", {}).get("latency_rounds", [])}
    rate = _main_rate(res)

    def cells(r: dict[str, Any] | None) -> str:
        if r is None:
            return "- | - | - | -"
        return (f"{_f(r.get('p50_ms'))} | {_f(r.get('p99_ms'))} | "
                f"{_f(r.get('input_p99_ms'))} | {_f(r.get('processor_p99_ms'))}")  # fmt: skip

    rows = [f"| {r['round']} | {cells(r)} | {cells(pt_rows.get(r['round']))} |" for r in sp_rows]
    med_pt = round_medians(list(pt_rows.values())) if pt_rows else None
    rows.append(f"| **median** | {cells(round_medians(sp_rows))} | {cells(med_pt)} |")
    return [
        f"## Latency over rounds, at {_f(rate, 0)} events/s",
        "",
        "Every round's drain of streamproc and of the passthrough is followed by a 10 s phase "
        "at streamproc's first-round latency-phase rate (half its first drain rate); round 1 "
        "is the phase of the tables above. One phase's p99 moves by tens of milliseconds "
        "from run to run on this machine, so the p99 target is judged on the median over "
        "the rounds.",
        "",
        "| round | streamproc p50 ms | p99 ms | input p99 ms | processor p99 ms | "
        "passthrough p50 ms | p99 ms | input p99 ms | processor p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def write_results(path: Path, full: dict[str, Any]) -> None:
    m, prm, res = full["machine"], full["params"], full["systems"]
    warm_rate = "" if prm.get("warm_rate") is None else f" at {prm['warm_rate']:,.0f} events/s"
    core, prof_run, rat = full["core"], full["profiled"], full["ratios"]
    base = res.get("passthrough", {})
    lines = [
        "# Throughput benchmark: results",
        "",
        f"Written by `python benchmarks/throughput.py` on {m['date']} "
        f"(took {m['elapsed_s']} s). Method and definitions: `benchmarks/README.md`.",
        "",
        "## Machine",
        "",
        f"* CPU: {m['cpu_model']}, {m['cores']} cores (x86_64 VM), {m['memory_gb']} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}",
        f"* Packages: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
        f"* Code: commit {m['git']['commit']}"
        + (
            f" plus uncommitted changes in {m['git']['streamproc_changes']} files under "
            f"streamproc/ (diff sha256 {m['git']['streamproc_diff_sha256']}): the working "
            "tree as it was, work in progress of other engineers included."
            if m["git"]["streamproc_changes"]
            else " (clean streamproc/)."
        ),
        f"* Load average at start {m['load_avg_at_start']}, at end {m['load_avg_at_end']}.",
        "* The column *others' cores* is the CPU used by every process other than the "
        "worker, the broker/registry and the harness during each drain (of 2 cores). Figures "
        "taken with others' load high are pessimistic for that system.",
        "",
        "## Workload",
        "",
        f"* {prm['warmup']:,} + {prm['n']:,} synthetic Transaction events per system "
        + (
            f"({prm['warmup']:,} + {prm['n_long']:,} for {' and '.join(LONG_SYSTEMS)}, "
            "whose ratio is a target: at 500,000 the passthrough's drains lasted under a "
            "second) "
            if prm.get("n_long")
            else ""
        )
        + "(streamproc.synth, Confluent-framed Avro registered in the schema registry), "
        "4 partitions, a fresh input topic per system pre-filled before the worker starts; "
        f"the first {prm['warmup']:,} outputs are warm-up and not measured.",
        "* Model deploy/models/fraud/1.0.0 (ONNX, CPU, one intra-op thread everywhere).",
        f"* Latency phase: {prm['latency_s']:g} s at {prm['latency_share']:.0%} of each "
        "system's own drain rate (measured just before, from output append times; column "
        "*latency-phase events/s*), after the backlog is drained; `event_time` = wall clock "
        "at send, written into pre-encoded events.",
        "* Local single broker (Kafka 4.1, KRaft) + Apicurio registry on the same machine.",
        "",
        "## Results",
        "",
        "| system | events/s | p50 ms | p99 ms | latency-phase events/s | CPU s / M events | "
        "peak RSS MB | x passthrough (events/s) | cores used | others' cores | startup s | "
        "events/s incl. start-up | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in SYSTEMS:
        r = res.get(name)
        if r is None:
            continue
        ratio = rat.get(f"{name}/passthrough")
        lines.append(
            f"| {name} | {_f(r.get('events_per_s'), 0)} | {_f(r.get('p50_ms'))} | "
            f"{_f(r.get('p99_ms'))} | {_f(r.get('latency_phase_rate'), 0)} | "
            f"{_f(r.get('cpu_s_per_million'))} | "
            f"{_f(r.get('peak_rss_mb'))} | {_f(ratio, 2)} | {_f(r.get('cpu_cores_used'), 2)} | "
            f"{_f(r.get('others_cores'), 2)} | {_f(r.get('startup_s'))} | "
            f"{_f(r.get('events_per_s_incl_startup'), 0)} | {r.get('status') or r.get('error')} |"
        )
    repeated = [n for n in SYSTEMS if res.get(n, {}).get("events_per_s_rounds")]
    if repeated:
        lines += ["", "*events/s* (and every ratio of events/s) is the median of each system's "
                  "drains in this run: the first, with its latency phase, then "
                  f"{prm['rounds'] - 1} more in rotated order "
                  f"({', '.join(repeated)}; other systems once). Every other column comes "
                  "from the first drain. Drains, events/s:", ""]  # fmt: skip
        for n in repeated:
            vals = ", ".join(f"{v:,.0f}" for v in res[n]["events_per_s_rounds"])
            lines.append(f"* {n}: {vals} (median {res[n]['events_per_s']:,.0f})")
    cpu_base = base.get("cpu_s_per_million")
    lines += ["", "CPU per event relative to passthrough: " + ", ".join(
        f"{n} {res[n]['cpu_s_per_million'] / cpu_base:.1f}x"
        for n in SYSTEMS
        if n in res and res[n].get("cpu_s_per_million") and cpu_base
    ) + "."]  # fmt: skip
    sp = res.get("streamproc", {}).get("events_per_s")
    lines += ["", "## streamproc against the others", ""]
    for other in ("naive", "faust", "quix"):
        v = rat.get(f"streamproc/{other}")
        if v is not None:
            lines.append(f"* streamproc / {other}: **{v:.2f}x** events/s")
    naive_r = rat.get("streamproc/naive")
    ahead = [rat.get(f"streamproc/{o}") for o in ("faust", "quix")]
    lines += [
        "",
        "Targets stated by the issue:",
        "",
        f"* streamproc >= 2x the naive loop: "
        f"**{'met' if naive_r and naive_r >= 2 else 'NOT met'}** "
        f"({_f(naive_r, 2)}x).",
        f"* streamproc ahead of both Faust and Quix Streams: "
        f"**{'met' if all(a and a > 1 for a in ahead) else 'NOT met'}** "
        f"(Faust {_f(ahead[0], 2)}x, Quix {_f(ahead[1], 2)}x).",
        "",
        "Targets of the compiled hot path (`python benchmarks/throughput.py --quick` prints "
        "the same under `targets` in its JSON). With several rounds, the p99 is the median "
        "of streamproc's rounds (see *Latency over rounds*); else the first round's:",
        "",
        "| target | measured | bound | met |",
        "|---|---:|---:|---|",
        *[
            f"| {k} | {_f(t['value'], 2)} | {'>= ' if 'min' in t else '<= '}"
            f"{_f(t.get('min', t.get('max')), 2)} | "
            f"{'-' if t['met'] is None else ('met' if t['met'] else '**NOT met**')} |"
            for k, t in hot_path_targets(res, core).items()
        ],
        "",
        "## streamproc core, in process (no Kafka)",
        "",
        f"Framed payload batches of {core.get('batch_size')} (the pipeline's default "
        "`max_batch_size`) in memory -> `BatchHandler` (BatchDecoder + SingleScorer on ONNX "
        "Runtime + the default drift monitor: input, score and data-quality drift, + "
        "DictSchemaSource) -> framed Prediction bytes, pinned to one core: "
        f"**{_f(core.get('events_per_s'), 0)} events/s** "
        f"({_f(core.get('cpu_s_per_million'))} CPU s per million events; "
        f"{_f(core.get('events'), 0)} events timed per run; "
        + (
            "measured twice, before the broker started and after the last drain, "
            f"{' and '.join(_f(v, 0) for v in core['runs_events_per_s'])} events/s; "
            if core.get("runs_events_per_s")
            else ""
        )
        + "the median of "
        f"{len(core.get('events_per_s_passes', []))} passes: "
        f"{', '.join(_f(v, 0) for v in core.get('events_per_s_passes', []))}). "
        f"With batches of {COMPARED_BATCH}: "
        f"{_f(core.get(f'batch_{COMPARED_BATCH}', {}).get('events_per_s'), 0)} events/s. "
        "Against the "
        "default, the Kafka run reaches "
        f"{_f(sp / core['events_per_s'] * 100 if sp and core.get('events_per_s') else None)}% "
        "of the core's rate.",
        "",
        "## Per-stage profile of streamproc (microseconds per event)",
        "",
    ]
    prof = prof_run.get("worker_report", {}).get("profile_us_per_event", {})
    stages = core.get("stage_us_per_event", {})
    rows = [
        ("decode", "decode", "BatchStats.stage_s['decode']"),
        ("batching", None, "KafkaRunner._step minus _process (consume, MicroBatcher, lag) "
                           "+ to_raw_batch"),
        ("inference", "infer", "BatchStats.stage_s['infer']"),
        ("encode", "encode", "BatchStats.stage_s['encode'] (Predictions + lineage)"),
        ("produce", None, "KafkaRunner._commit (+ _flush_and_commit called outside it): "
                          "produce calls + delivery reports + flushes + offset commits"),
        ("  produce_calls", None, "KafkaRunner._produce_all (producer.produce per record)"),
        ("  flush_commit", None, "serving failed records' reports (poll) + an asynchronous "
                                 "offset commit (and a flush if the queue stayed busy) every "
                                 "commit interval"),
        ("monitor", "monitor", "BatchStats.stage_s['monitor'] (dead letters, input, score "
                               "and data-quality drift)"),
        ("handler_other", None, "rest of BatchHandler.__call__"),
        ("telemetry", None, "sensors' on_batch (Prometheus, counters)"),
        ("total_wall", None, "wall time per event in the profiled window"),
    ]  # fmt: skip
    before = json.loads(BEFORE.read_text()) if BEFORE.exists() else {}
    bk, bc = before.get("kafka", {}), before.get("core", {})
    lines += [
        "| stage | Kafka run: before | Kafka run: now | core: before | core: now | measured as |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, core_key, how in rows:
        kv = prof.get(key.strip())
        cv = stages.get(core_key) if core_key else None
        bcv = bc.get(core_key) if core_key else None
        lines.append(
            f"| {key} | {_f(bk.get(key.strip()), 2)} | {_f(kv, 2)} | {_f(bcv, 2)} | "
            f"{_f(cv, 2)} | {how} |"
        )
    if before:
        lines += ["", f"*Before*: {before['source']}"]
    pr = prof_run.get("worker_report", {})
    series = [
        f"* {n}: {', '.join(_f(v, 0) for v in res[n]['p50_ms_by_second'])}"
        for n in SYSTEMS
        if n in res and res[n].get("p50_ms_by_second")
    ]
    lines += [
        "",
        f"The profiled run is `build_processor(cfg)` in its own process with timers around "
        f"KafkaRunner's methods ({_f(pr.get('events'), 0)} events timed after the first batch, "
        + (
            f"in {_f(pr['batches'], 0)} batches of {_f(pr['mean_batch'], 0)} on average, "
            if pr.get("batches")
            else ""
        )
        + f"{_f(pr.get('events_per_s'), 0)} events/s by its own clock; "
        f"{_f(prof_run.get('events_per_s'), 0)} events/s by the harness). It is not one of the "
        "compared systems.",
        "",
        "## Latency phase, p50 ms per second (by input event_time)",
        "",
        "At each system's main latency-phase rate. A flat series is a steady state; a step "
        "is a stall the system did not recover from within the phase.",
        "",
        *series,
        "",
        *_split_latency(res),
        *_latency_rounds(res),
        "## streamproc: latency against input rate",
        "",
        "Each phase produces at a fixed rate while the worker runs; *input p99* is the input "
        "side alone and *processor p50 / p99* the processor side alone (see Definitions); "
        "*machine cores* is the CPU of everything on the machine during the phase, *worker "
        "cores* the worker's own, *broker + harness* that of the broker, the registry and "
        "this harness (which produces the load), all in cores of the machine's "
        f"{m.get('cores', 2)}.",
        "",
        "| input events/s (target) | achieved | p50 ms | p99 ms | max ms | input p99 ms | "
        "processor p50 ms | processor p99 ms | machine cores | worker cores | "
        "broker + harness cores | events |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {_f(ph['target_rate'], 0)}{' (half the drain rate)' if ph['main'] else ''} | "
            f"{_f(ph.get('achieved_rate'), 0)} | {_f(ph.get('p50_ms'))} | "
            f"{_f(ph.get('p99_ms'))} | {_f(ph.get('max_ms'))} | "
            f"{_f(ph.get('input_p99_ms'))} | {_f(ph.get('processor_p50_ms'))} | "
            f"{_f(ph.get('processor_p99_ms'))} | "
            f"{_f(ph.get('machine_cores'), 2)} | {_f(ph.get('worker_cores'), 2)} | "
            f"{_f(ph.get('broker_harness_cores'), 2)} | {_f(ph.get('events'), 0)} |"
            for ph in res.get("streamproc", {}).get("latency_phases", [])
        ],
        "",
        "## What each system did",
        "",
    ]
    fill = {
        "protocol": _streamproc_protocol(),
        "loop": _loop_protocol(),
        "batch": BATCH.max_batch_size,
        "wait": f"{BATCH.max_wait_ms:g}",
    }
    lines += [f"* **{n}**: {WHAT[n].format(**fill)}" for n in SYSTEMS if n in res]
    lines += [
        "",
        "## Definitions",
        "",
        "* **events/s**: output topics are created with `message.timestamp.type="
        "LogAppendTime`; the drain's outputs sorted by that broker append time; events/s = "
        "n / (append time of output warmup+n - append time of output warmup).",
        "* **p50 / p99 ms**: over the latency phase's outputs, output append time "
        "(LogAppendTime, broker clock) minus the input record's `event_time` (set from the "
        "harness's wall clock when it produced the event, carried into the Prediction; the "
        "passthrough output is the input record itself). Same host, same clock.",
        "* **input side / processor side**: input topics also stamp LogAppendTime. *Input "
        "side* = the input record's append time minus its `event_time` (the harness's "
        "producer and the broker: the same work for every system); *processor side* = the "
        "output's append time minus its input record's append time (fetch, batching, "
        "processing, producing), joined per event on (event_id, event_time).",
        "* **CPU s / M events**: the worker process's user+system CPU (psutil, all threads, "
        "sampled every 20 ms, interpolated) between those two append times, per million.",
        "* **peak RSS**: the worker's `VmHWM` (/proc/<pid>/status, read every 200 ms and "
        "just before SIGTERM) or the largest 20 ms RSS sample, whichever is larger: start, "
        "drain and latency phase. (Not `ru_maxrss`: Linux carries it across `execve`, so a "
        "vfork-started child reports the harness's own peak.)",
        f"* Before the measured systems an unreported warm-up run (the passthrough: a drain "
        f"of {prm.get('warm_n', 4_000):,} events, then {prm.get('warm_s', 1.0):g} s paced"
        f"{warm_rate}) "
        "exercises the fresh broker: the first worker after broker start, whichever it was, "
        "otherwise saw ~0.5 s latencies, and the broker's JIT compiler took up to a third "
        "of a core through the first paced phases.",
        "* **startup s**: from spawning the process to its first output record; "
        "*events/s incl. start-up* = all drained events / (last drain output's append time "
        "- process spawn).",
        "",
    ]
    notes = [f"* {n}: {res[n].get('status')}; last log lines: {res[n].get('log_tail')}"
             for n in SYSTEMS if n in res and res[n].get("status") not in (None, "ok")]  # fmt: skip
    if notes:
        lines += ["## Problems during this run", "", *notes, ""]
    gpu = BENCH / "GPU.md"  # GPU measurements (or the plain statement that none exist yet)
    if gpu.exists():
        lines += ["", gpu.read_text().rstrip()]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N; under 3 minutes")
    ap.add_argument("--n", type=int, help="events per system in every measured drain")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled run")
    ap.add_argument(
        "--results",
        type=Path,
        help="write the Markdown report here (default: RESULTS.md on a full run)",
    )
    ap.add_argument("--json", type=Path, help="also write every figure as JSON here")
    args = ap.parse_args(argv)
    p = QUICK if args.quick else FULL
    if args.n:  # every system drains --n events
        p = Params(**{**p.__dict__, "n": args.n, "n_long": None})
    names = [s for s in args.systems.split(",") if s]
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    started = time.monotonic()
    info = machine()
    info["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    log(f"{info['cpu_model']}, {info['cores']} cores, load {info['load_avg_at_start']}")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="streamproc-bench-") as tmp:
        work = Path(tmp)
        core = run_core(p, work)
        with services(work) as svc:
            _REGISTRY.append(Registry(svc.registry_url))
            # The first worker after the broker starts saw ~0.5 s latencies for seconds
            # (first system only, whichever it was), and the broker's JIT compiler took up
            # to a third of a core for minutes (Params.warm_n): an unreported warm-up run
            # absorbs both.
            warm = Params(**{**p.__dict__, "n": p.warm_n, "n_long": None, "warmup": 1_000,
                             "latency_s": p.warm_s})  # fmt: skip
            warm_load = Workload(svc, warm.warmup + warm.n, seed=4)
            warm_result = run_system("passthrough", warm, svc, warm_load, work,
                                     p.drain_timeout_s, only_rate=p.warm_rate)  # fmt: skip
            warm_load.close()
            log(f"warm-up run (not reported): {warm_result.get('status')}")
            load = Workload(svc, p.warmup + max(p.n, p.n_long or 0))
            todo = [*names, *([] if args.no_profile else [PROFILED])]
            for name in todo:
                timeout = p.drain_timeout_s
                if p.budget_s is not None:
                    left = p.budget_s - (time.monotonic() - started)
                    # start, drain, latency phase and stop need about 20 s beyond the drain
                    timeout = min(timeout, left - 20.0)
                    if timeout < 5.0:
                        log(f"{name}: skipped, the {p.budget_s:.0f} s budget is spent")
                        results[name] = {"status": "skipped (time budget)"}
                        continue
                # The passthrough also runs at streamproc's latency-phase rate: what the
                # broker and the load generator alone cost in latency at that rate.
                sp_rate = _main_rate(results)
                extra = (sp_rate,) if name == "passthrough" and sp_rate is not None else ()
                results[name] = run_system(name, p, svc, load, work, timeout, extra_rates=extra)
            repeat_drains(p, [n for n in names if n in ROUND_SYSTEMS], svc, load, work, results)
            load.close()
            profile = results.pop(PROFILED, {})
        if p.rounds > 1:
            core = combine_cores(core, run_core(p, work))
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["elapsed_s"] = round(time.monotonic() - started, 1)
    summary = summarize(results, core, profile)
    full = {
        "params": {**p.__dict__},
        "machine": info,
        "summary": summary,
        "ratios": ratios(results),
        "systems": results,
        "profiled": profile,
        "core": core,
    }
    if args.json:
        args.json.write_text(json.dumps(full, indent=2, default=str))
    target = args.results or (None if p.quick else RESULTS)
    if target is not None:
        write_results(target, full)
        log(f"wrote {target}")
    log(f"done in {info['elapsed_s']}s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
