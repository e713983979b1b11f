"""Replicas on one input: the partitions' balance, each replica's throughput on a backlog,
and the time until a leaving replica's partitions are consumed again.

For each replica count k (``--replicas 1,2,3``), on a fresh pipeline (the shape of
deploy/pipelines/fraud.yaml, unique topics, ``--partitions`` input partitions,
at-least-once):

1. k ``python -m streamproc run`` processes start on the empty input; the run waits until
   their last "assigned [...]" log lines split the partitions between them, disjoint and
   balanced, and stay so.
2. After a warm-up (50 events per partition, until their predictions are written: each
   replica's first batch looks the schema up and compiles its decoder), a backlog of
   ``--events`` synthetic events (encoded before the clock starts, event i to
   partition i % P) is produced at full speed; the drain is from the first send to the
   moment the predictions topic holds N records (its end offsets, polled). Each replica's
   share is its ``streamproc_events_in_total`` (its Prometheus endpoint, ``--metrics-port
   0``), read after the drain.
3. With k >= 2, events flow at a paced rate (event_time = the send time); one replica is
   stopped with SIGTERM (a clean stop) and the rebalance time is from the signal to the
   earliest processing time of a prediction of an event sent after it and made after one
   of the others logged an assignment that includes the partition (a clean stop finishes
   its batch first), per partition the stopped replica held (the largest of those). With
   k >= 3 a second replica is then killed with SIGKILL and measured the same way. At the
   end every event sent is checked for a prediction (at-least-once: duplicates allowed,
   none missing).

Method and figures: benchmarks/README.md ("Scaling: replicas on one input") and
benchmarks/RESULTS.md ("Scaling (replicas on one input)").

Run: ``PYTHONPATH=$PWD python benchmarks/scaling.py [--quick] [--results]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "deploy" / "models" / "fraud" / "1.0.0"
SEED = 41
WARMUP_PER_PARTITION = 50

# The runner's log line on each assignment (streamproc/kafka/runner.py, KafkaRunner._on_assign),
# as `streamproc run` formats it: "<asctime> INFO streamproc.kafka.runner assigned [0, 3] ...".
_ASSIGNED = re.compile(
    r"^(\S+ \S+) INFO streamproc\.kafka\.runner assigned \[([0-9, ]*)\]", re.MULTILINE
)
_STOPPED = re.compile(r"stopped: (\d+) in, (\d+) predictions")
_METRICS = re.compile(r"metrics: (http://\S+/metrics)")
_EVENTS_IN = re.compile(r"^streamproc_events_in_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


# -- pure parts (benchmarks/tests/test_scaling.py) -------------------------------------------


def assignments(log: str) -> list[tuple[float, list[int]]]:
    """Every assignment a replica logged: (when, epoch seconds in local time; partitions).

    >>> text = ("2026-11-28 04:10:00,250 INFO streamproc.kafka.runner assigned [0, 3] "
    ...         "(added [0, 3])\\n"
    ...         "2026-11-28 04:10:02,500 INFO streamproc.kafka.runner assigned [] (added [])\\n")
    >>> [(round(t % 60, 2), p) for t, p in assignments(text)]
    [(0.25, [0, 3]), (2.5, [])]
    """
    out = []
    for stamp, parts in _ASSIGNED.findall(log):
        when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.append((when, [int(x) for x in parts.split(",") if x.strip()]))
    return out


def last_assignment(log: str) -> list[int] | None:
    """The partitions of the replica's last logged assignment (None: none logged yet).

    >>> last_assignment("x INFO streamproc.kafka.runner assigned [1]"), last_assignment("")
    (None, None)
    >>> last_assignment("2026-11-28 04:10:00,250 INFO streamproc.kafka.runner assigned [2, 5]")
    [2, 5]
    """
    found = assignments(log)
    return found[-1][1] if found else None


def stopped_count(log: str) -> int | None:
    """Events consumed, from `streamproc run`'s last line after a clean stop.

    >>> stopped_count("...\\nstopped: 1200 in, 1200 predictions, 0 dead letters\\n")
    1200
    >>> stopped_count("killed") is None
    True
    """
    found = _STOPPED.findall(log)
    return int(found[-1][0]) if found else None


def events_in(metrics_text: str) -> int:
    """``streamproc_events_in_total`` summed over its samples (0 before the first batch).

    >>> events_in('# HELP x\\nstreamproc_events_in_total{pipeline="p"} 1536.0\\n')
    1536
    """
    return int(sum(float(v) for v in _EVENTS_IN.findall(metrics_text)))


def split_ok(held: Mapping[str, Sequence[int] | None], partitions: int) -> bool:
    """True when every replica holds partitions, no two hold the same one, all are held,
    and the replicas' shares differ by at most one partition.

    >>> split_ok({"r1": [0, 2, 4], "r2": [1, 3, 5]}, 6)
    True
    >>> split_ok({"r1": [0, 1, 2, 3], "r2": [4, 5]}, 6)  # covers, but 4 against 2
    False
    >>> split_ok({"r1": [0, 1, 2], "r2": [2, 3, 4, 5]}, 6)  # 2 held twice (mid-rebalance)
    False
    >>> split_ok({"r1": [0, 1, 2, 3, 4, 5], "r2": None}, 6)  # r2 not in the group yet
    False
    >>> split_ok({"r1": [0, 1], "r2": [2, 3], "r3": [4, 5]}, 6)
    True
    """
    shares = list(held.values())
    if any(not s for s in shares):
        return False
    flat = [p for s in shares for p in s or ()]
    sizes = [len(s or ()) for s in shares]
    return sorted(flat) == list(range(partitions)) and max(sizes) - min(sizes) <= 1


def balanced(counts: Mapping[str, int], per_partition: float) -> bool:
    """The replicas' event counts differ by at most one partition's worth.

    >>> balanced({"r1": 100_000, "r2": 100_000}, 33_333.3)
    True
    >>> balanced({"r1": 133_334, "r2": 66_666}, 33_333.3)  # four partitions against two
    False
    """
    return max(counts.values()) - min(counts.values()) <= per_partition


def taken_at(logs: Sequence[str], held: Sequence[int]) -> dict[int, int]:
    """Per partition in ``held``: when (epoch ms) one of the others first logged an
    assignment that includes it, in their log text written after the stop.

    >>> r2 = ("2026-11-28 04:10:02,000 INFO streamproc.kafka.runner assigned [3]\\n"
    ...       "2026-11-28 04:10:02,500 INFO streamproc.kafka.runner assigned [0, 3]\\n")
    >>> r3 = "2026-11-28 04:10:02,250 INFO streamproc.kafka.runner assigned [0, 1, 2]\\n"
    >>> {p: t % 60_000 for p, t in taken_at([r2, r3], [0, 1]).items()}
    {0: 2250, 1: 2250}
    """
    out: dict[int, int] = {}
    for text in logs:
        for when, parts in assignments(text):
            ms = round(when * 1000)
            for p in set(parts) & set(held):
                out[p] = min(out.get(p, ms), ms)
    return out


def rebalance_s(first_after: Mapping[int, int], since_ms: int, held: Sequence[int]) -> float:
    """Seconds from ``since_ms`` until every partition in ``held`` had a prediction again:
    the largest of the per-partition gaps.

    >>> rebalance_s({0: 11_900, 1: 10_050, 3: 10_100}, 10_000, [0, 3])
    1.9
    """
    return max(first_after[p] - since_ms for p in held) / 1000


# -- the stack, the pipeline and the replicas -----------------------------------------------


def _ms() -> int:
    return int(time.time() * 1000)


def _wait(cond: Callable[[], bool], deadline_s: float, what: str, step: float = 0.05) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(step)


def stack_up(home: Path) -> tuple[Any, Any, bool]:
    """The services (from the environment, else a LocalStack under ``home``), and whether
    this run started it (then it is stopped at the end unless --keep-stack)."""
    from streamproc.local import LocalStack, from_environment

    external = from_environment()
    if external is not None:
        return external, None, False
    stack = LocalStack(home=home)
    was_up = stack.status() is not None
    return stack.up(), stack, not was_up


def make_pipeline(
    info: Any, partitions: int, workdir: Path, kafka: Mapping[str, Any] | None = None
) -> tuple[Any, Path]:
    """A fresh pipeline shaped like deploy/pipelines/fraud.yaml: its topics, schemas and
    a config file for `streamproc run`."""
    import yaml

    from streamproc.config import PipelineConfig
    from streamproc.kafka.registry import Registry
    from streamproc.pipeline.app import apply_schemas, ensure_topics

    run = uuid.uuid4().hex[:8]
    raw: dict[str, Any] = {
        "name": f"scaling-{run}",
        "model": str(MODEL),
        "kafka": {"bootstrap": info.bootstrap, "client_id": f"streamproc-scaling-{run}",
                  **(kafka or {})},
        "registry": {"url": info.schema_registry},
        "topics": {"input": f"scaling-{run}", "predictions": f"scaling-{run}.predictions",
                   "dlq": f"scaling-{run}.dlq", "metrics": f"scaling-{run}.metrics",
                   "alerts": f"scaling-{run}.alerts", "feedback": f"scaling-{run}.labels",
                   "control": f"scaling-{run}.control", "partitions": partitions},
        "batching": {"max_batch_size": 4096, "max_wait_ms": 5, "max_event_age_ms": 1000},
        "delivery": {"guarantee": "at-least-once"},
        "metrics": {"port": 0, "snapshot_interval_s": 5},
    }  # fmt: skip
    cfg = PipelineConfig.model_validate(raw)
    ensure_topics(cfg)
    apply_schemas(Registry(info.schema_registry), cfg)
    path = workdir / f"{cfg.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return cfg, path


class Replica:
    """One `python -m streamproc run` process and its log."""

    def __init__(self, config: Path, instance: str, workdir: Path) -> None:
        self.instance = instance
        self.log = workdir / f"{config.stem}-{instance}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamproc", "run", "-c", str(config),
                 "--instance", instance, "--metrics-port", "0"],
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
            )  # fmt: skip

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def held(self) -> list[int] | None:
        return last_assignment(self.text())

    def events_in(self) -> int:
        found = _METRICS.findall(self.text())
        if not found:
            raise RuntimeError(f"{self.instance} printed no metrics address ({self.log})")
        with urllib.request.urlopen(found[-1], timeout=10) as resp:
            return events_in(resp.read().decode())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        if self.alive():
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def encode_backlog(count: int, seed: int) -> list[bytes]:
    """Avro bodies of events ``0 .. count-1`` (the schema-id frame is added per topic)."""
    import fastavro

    from streamproc import schemas, synth

    parsed = schemas.parsed("Transaction")
    bodies = []
    for start in range(0, count, 50_000):
        records, _ = synth.generate(min(50_000, count - start), seed=seed, offset=start)
        for r in records:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, r)
            bodies.append(buf.getvalue())
    return bodies


def schema_frame(info: Any, topic: str) -> bytes:
    from streamproc import schemas
    from streamproc.kafka.registry import Registry

    sid = Registry(info.schema_registry).register(
        schemas.subject_for(topic), schemas.schema_text("Transaction")
    )
    return b"\x00" + sid.to_bytes(4, "big")


def produce_backlog(info: Any, topic: str, bodies: list[bytes], partitions: int) -> float:
    """Send every body (event i to partition i % P) as fast as the client takes them;
    returns the seconds until all were acknowledged."""
    from confluent_kafka import Producer

    head = schema_frame(info, topic)
    p = Producer({"bootstrap.servers": info.bootstrap, "linger.ms": 20,
                  "batch.num.messages": 10_000, "compression.type": "lz4",
                  "queue.buffering.max.messages": 2_000_000})  # fmt: skip
    t0 = time.monotonic()
    for i, body in enumerate(bodies):
        while True:
            try:
                p.produce(topic, head + body, partition=i % partitions)
                break
            except BufferError:
                p.poll(0.01)
    if p.flush(120) != 0:
        raise RuntimeError("the backlog was not all delivered")
    return time.monotonic() - t0


def end_offsets(info: Any, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": info.bootstrap, "group.id": "scaling-offsets"})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)]  # fmt: skip
    finally:
        c.close()


class Flow:
    """Events sent from a thread at ``rate``/s: event i to partition i % P, its event_time
    the moment it is sent; ids continue after the backlog's."""

    def __init__(self, info: Any, topic: str, partitions: int, rate: float, offset: int) -> None:
        from streamproc.kafka.clients import EventProducer

        self.producer = EventProducer(info.bootstrap, info.schema_registry, topic)
        self.partitions, self.rate, self.offset = partitions, rate, offset
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="flow")
        self._thread.start()

    def _run(self) -> None:
        from streamproc import synth

        start = time.monotonic()
        p = self.producer
        while not self._stop.is_set():
            due = int((time.monotonic() - start) * self.rate)
            if due > self.sent:
                first = self.offset + self.sent
                records, _ = synth.generate(due - self.sent, seed=SEED, offset=first)
                for i, rec in enumerate(records, first):
                    rec["event_time"] = _ms()
                    p.producer.produce(p.topic, p.encode(rec), partition=i % self.partitions)
                self.sent = due
            p.producer.poll(0)
            self._stop.wait(0.01)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        if self.producer.producer.flush(30) != 0:
            raise RuntimeError("the paced events were not all delivered")
        return self.sent


class Watch:
    """Reads the predictions topic from its current end, from a thread: event index ->
    the processing times (ms) of its predictions, and when each event was sent."""

    def __init__(self, info: Any, topic: str, partitions: int) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from streamproc.kafka.clients import FramedDecoder
        from streamproc.kafka.registry import Registry

        self.partitions = partitions
        self.decoder = FramedDecoder(Registry(info.schema_registry))
        self.consumer = Consumer({"bootstrap.servers": info.bootstrap,
                                  "group.id": f"scaling-watch-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False})  # fmt: skip
        ends = end_offsets(info, topic, partitions)
        self.consumer.assign([TopicPartition(topic, p, o) for p, o in enumerate(ends)])
        self.seen: dict[int, list[tuple[int, int]]] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="watch")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for m in self.consumer.consume(500, timeout=0.2):
                    if m.error() is None:
                        v = self.decoder.decode(m.value())[1]  # type: ignore[arg-type]
                        et, pt = (int(v[k].timestamp() * 1000)
                                  for k in ("event_time", "processed_time"))  # fmt: skip
                        i = int(v["event_id"].rsplit("-", 1)[1])
                        with self.lock:
                            self.seen.setdefault(i, []).append((et, pt))
        finally:
            self.consumer.close()

    def first_after(self, t_ms: int, not_before: Mapping[int, int] | None = None) -> dict[int, int]:
        """Per partition: the earliest processing time of an event sent after ``t_ms`` (and,
        for a partition in ``not_before``, processed at or after the time it names)."""
        out: dict[int, int] = {}
        floor = not_before or {}
        with self.lock:
            items = list(self.seen.items())
        for i, preds in items:
            p = i % self.partitions
            for et, pt in preds:
                if et > t_ms and pt >= floor.get(p, 0) and (p not in out or pt < out[p]):
                    out[p] = pt
        return out

    def missing(self, first: int, count: int) -> int:
        with self.lock:
            return sum(1 for i in range(first, first + count) if i not in self.seen)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# -- one replica count ----------------------------------------------------------------------


def settle(replicas: Sequence[Replica], partitions: int, deadline_s: float) -> dict[str, Any]:
    """Wait until the replicas' assignments split the partitions (and hold for 2 s)."""

    def split() -> dict[str, list[int] | None]:
        for r in replicas:
            if not r.alive():
                raise RuntimeError(f"{r.instance} exited: see {r.log}")
        return {r.instance: r.held() for r in replicas}

    while True:
        _wait(lambda: split_ok(split(), partitions), deadline_s, "the partitions to be split")
        held = split()
        time.sleep(2.0)
        if split() == held:
            return held


def leave(
    how: str, gone: Replica, rest: Sequence[Replica], watch: Watch, partitions: int,
    deadline_s: float,
) -> dict[str, Any]:  # fmt: skip
    """Stop ``gone`` (SIGTERM or SIGKILL) while events flow; how long until its partitions
    were consumed again, and until the others logged their new assignments."""
    flowing = _ms()
    _wait(lambda: len(watch.first_after(flowing)) == partitions, deadline_s,
          "every partition to be scored before the stop")  # fmt: skip
    held = gone.held() or []
    sizes = {r.instance: r.log.stat().st_size for r in rest}
    exit_box: dict[str, int] = {}
    reaper = threading.Thread(
        target=lambda: exit_box.update(code=gone.proc.wait(), at=_ms()), daemon=True
    )
    t_stop = _ms()
    gone.proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    reaper.start()

    # A replica stopped cleanly finishes its batch first, maybe with events sent after the
    # signal: a partition counts as consumed again from the first prediction made after
    # one of the others logged an assignment that includes it.
    def taken() -> dict[int, int]:
        return taken_at([r.log.read_bytes()[sizes[r.instance] :].decode(errors="replace")
                         for r in rest], held)  # fmt: skip

    def consumed_again() -> bool:
        floor = taken()
        return set(held) <= floor.keys() and set(held) <= watch.first_after(t_stop, floor).keys()

    _wait(consumed_again, deadline_s, f"the partitions of {gone.instance} to be consumed again")
    first = watch.first_after(t_stop, taken())
    reaper.join(120)
    if not exit_box:
        raise TimeoutError(f"{gone.instance} did not exit within 120 s of its {how}")

    def reassigned() -> float | None:
        # When the last of the others logged an assignment that covers all partitions.
        whens = []
        for r in rest:
            after = assignments(r.log.read_bytes()[sizes[r.instance] :].decode(errors="replace"))
            if not after:
                return None
            whens.append(after[-1][0])
        return round(max(whens) - t_stop / 1000, 2)

    _wait(lambda: split_ok({r.instance: r.held() for r in rest}, partitions), deadline_s,
          "the others to split the partitions")  # fmt: skip
    return {
        "how": how,
        "replica": gone.instance,
        "held": held,
        "rebalance_s": round(rebalance_s(first, t_stop, held), 2),
        "per_partition_s": {p: round((first[p] - t_stop) / 1000, 2) for p in sorted(held)},
        "taken_s": {p: round((t - t_stop) / 1000, 2) for p, t in sorted(taken().items())},
        "others_reassigned_s": reassigned(),
        "exit_code": exit_box.get("code"),
        "stopped_line_events_in": stopped_count(gone.text()),
        "exited_after_s": round((exit_box["at"] - t_stop) / 1000, 2),
    }


def run_k(
    k: int, info: Any, bodies: list[bytes], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    cfg, path = make_pipeline(info, args.partitions, workdir, json.loads(args.kafka or "{}"))
    n, parts = len(bodies), args.partitions
    replicas = [Replica(path, f"r{i}", workdir) for i in range(1, k + 1)]
    out: dict[str, Any] = {"replicas": k, "pipeline": cfg.name, "events": n}
    try:
        t_spawn = time.monotonic()
        held = settle(replicas, parts, args.deadline)
        out["settled_after_spawn_s"] = round(time.monotonic() - t_spawn, 1)
        out["held"] = held
        # A warm-up first: each replica's first batch of a schema looks it up in the registry
        # and compiles its decoder, seconds that belong to its start-up, not to the drain.
        warm = bodies[: parts * WARMUP_PER_PARTITION]
        produce_backlog(info, cfg.topics.input, warm, parts)
        _wait(lambda: sum(end_offsets(info, cfg.topics.predictions, parts)) >= len(warm),
              args.deadline, "the warm-up's predictions")  # fmt: skip
        before = {r.instance: r.events_in() for r in replicas}
        # The drain: from the first send of the backlog to N predictions in the topic.
        t0 = time.monotonic()
        box: dict[str, float] = {}

        def send() -> None:
            box["s"] = produce_backlog(info, cfg.topics.input, bodies, parts)
            # What the replicas had left when the sender was done: from there on they
            # drained alone (a backlog they kept up with leaves nearly nothing).
            box["left"] = len(warm) + n - sum(end_offsets(info, cfg.topics.predictions, parts))
            box["at"] = time.monotonic()

        sender = threading.Thread(target=send)
        sender.start()
        _wait(lambda: sum(end_offsets(info, cfg.topics.predictions, parts)) >= len(warm) + n,
              args.deadline, "every prediction of the backlog")  # fmt: skip
        drain = time.monotonic() - t0
        sender.join()
        counts = {r.instance: r.events_in() - before[r.instance] for r in replicas}
        alone = drain - (box["at"] - t0)
        out.update({
            "produce_s": round(box["s"], 2),
            "left_at_send_end": int(box["left"]),
            "alone_events_per_s": round(box["left"] / alone) if alone > 0.5 else None,
            "drain_s": round(drain, 2),
            "events_per_s": round(n / drain),
            "events_in": counts,
            "events_per_s_per_replica": {r: round(c / drain) for r, c in counts.items()},
            "balanced": balanced(counts, n / parts) and split_ok(held, parts),
        })  # fmt: skip
        if k >= 2 and not args.no_leave:
            watch = Watch(info, cfg.topics.predictions, parts)
            flow = Flow(info, cfg.topics.input, parts, args.rate, offset=n)
            try:
                leaves = [leave("sigterm", replicas[0], replicas[1:], watch, parts, args.deadline)]
                if k >= 3:
                    leaves.append(
                        leave("sigkill", replicas[1], replicas[2:], watch, parts, args.deadline)
                    )
                sent = flow.stop()
                _wait(lambda: watch.missing(n, sent) == 0, args.deadline,
                      "a prediction of every paced event")  # fmt: skip
            finally:
                flow.stop()
                watch.stop()
            out["leave"] = leaves
            out["paced_rate"] = args.rate
            out["paced_sent"] = sent
            out["paced_missing"] = watch.missing(n, sent)
        codes = [r.stop() for r in replicas if r.alive()]
        out["clean_exits"] = all(c == 0 for c in codes)
    finally:
        for r in replicas:
            if r.alive():
                r.proc.kill()
                r.proc.wait(30)
    return out


# -- the report -----------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores ({platform.machine()} VM), Linux {platform.release()}"


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "",
        "## Scaling (replicas on one input)",
        "",
        f"Written by `python benchmarks/scaling.py{summary['argv']}` on {summary['when']} "
        f'(took {summary["took_s"]:.0f} s). Method: benchmarks/README.md, "Scaling: '
        'replicas on one input".',
        "",
        f"* Machine: {summary['machine']}, shared with other work. Load average at start "
        f"{summary['load_start']}, at end {summary['load_end']}.",
        "* **The broker, the registry, the load generator and every replica share those two "
        "cores**, so replicas cannot scale throughput out here (at most they fill the two "
        "cores): these figures show the partitions' balance and the rebalance time, not "
        "scale-out.",
        f"* {summary['events']:,} events backlog per replica count, {summary['partitions']} "
        "input partitions (event i to partition i % P), the demo model "
        "(deploy/models/fraud/1.0.0), at-least-once, the default Kafka settings (classic "
        "group protocol, static membership, session 2 s, heartbeat 0.5 s"
        + (f"; changed: {json.dumps(summary['kafka'])}" if summary.get("kafka") else "")
        + "). *send s*: how "
        "long the backlog took to send (at full speed, while the replicas consume it: it is "
        "inside the drain). *left at send end*: predictions still to come when the sender "
        "was done; *events/s after it*: the rate at which the replicas drained those, alone "
        "with the broker (none when that lasted under 0.5 s).",
        "",
        "| replicas | partitions held | events in per replica | balanced | send s | drain s | "
        "events/s (all) | events/s per replica | left at send end | events/s after it |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["runs"]:
        held = "; ".join(f"{k} {v}" for k, v in r["held"].items())
        counts = ", ".join(f"{c:,}" for c in r["events_in"].values())
        per = ", ".join(f"{c:,}" for c in r["events_per_s_per_replica"].values())
        ok = "yes" if r["balanced"] else "NO"
        alone = f"{r['alone_events_per_s']:,}" if r["alone_events_per_s"] else "-"
        lines.append(f"| {r['replicas']} | {held} | {counts} | {ok} | {r['produce_s']:.2f} "
                     f"| {r['drain_s']:.2f} | {r['events_per_s']:,} | {per} "
                     f"| {r['left_at_send_end']:,} | {alone} |")  # fmt: skip
    leaves = [(r, x) for r in summary["runs"] for x in r.get("leave", [])]
    if leaves:
        lines += [
            "",
            f"One replica leaves while events flow at {summary['runs'][-1]['paced_rate']:.0f} "
            "events/s (rebalance: from the signal to the first prediction, per partition it "
            "held, of an event sent after the signal, made after one of the others was assigned "
            "the partition; the largest of those):",
            "",
            "| replicas | how | it held | its process exited s | rebalance s | per partition s "
            "| others reassigned s | missing after |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r, x in leaves:
            per = ", ".join(f"{p}: {s:.2f}" for p, s in x["per_partition_s"].items())
            lines.append(f"| {r['replicas']} | {x['how']} | {x['held']} | {x['exited_after_s']} "
                         f"| {x['rebalance_s']:.2f} | {per} | {x['others_reassigned_s']} "
                         f"| {r['paced_missing']} |")  # fmt: skip
    lines += ["", *summary.get("notes", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", help="replica counts, comma-separated (default 1,2,3)")
    ap.add_argument("--events", type=int, default=1_000_000, help="backlog per replica count")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--rate", type=float, default=300.0, help="paced events/s for the leave")
    ap.add_argument("--quick", action="store_true", help="20,000 events; replicas 1,2 by default")
    ap.add_argument("--no-leave", action="store_true", help="skip the rebalance measurement")
    ap.add_argument("--kafka", help="other Kafka settings, JSON: '{\"static_membership\": false}'")
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds per wait")
    ap.add_argument("--home", type=Path, default=None,
                    help="stack home (default $STREAMPROC_HOME/stack, else /tmp/streamproc-"
                         "scaling/stack); the stack is reused when running")  # fmt: skip
    ap.add_argument("--keep-stack", action="store_true", help="leave a stack this run started")
    ap.add_argument("--results", action="store_true", help="append to benchmarks/RESULTS.md")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args(argv)
    if args.quick:  # a check that the harness works: too short a drain for its rates
        args.events = min(args.events, 20_000)
    args.replicas = args.replicas or ("1,2" if args.quick else "1,2,3")
    counts = [int(x) for x in args.replicas.split(",")]
    base = Path(os.environ.get("STREAMPROC_HOME", "/tmp/streamproc-scaling"))
    home = args.home or base / "stack"
    workdir = home.parent / "scaling-runs"
    workdir.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    info, stack, ours = stack_up(home)
    try:
        bodies = encode_backlog(args.events, SEED)
        runs = []
        for k in counts:
            print(f"replicas {k} ...", file=sys.stderr, flush=True)
            runs.append(run_k(k, info, bodies, args, workdir))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    finally:
        if stack is not None and ours and not args.keep_stack:
            stack.down()
    shown = " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--results")
    summary = {
        "argv": f" {shown}" if shown else "",
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "took_s": time.monotonic() - started,
        "machine": machine(),
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "events": args.events,
        "partitions": args.partitions,
        "kafka": json.loads(args.kafka or "{}"),
        "runs": runs,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    if args.results:
        with (ROOT / "benchmarks" / "RESULTS.md").open("a") as f:
            f.write(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
