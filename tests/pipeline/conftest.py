"""Factories for pipelines on the real local stack: configs, processors, producers, readers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer

from streamproc.config import PipelineConfig
from streamproc.kafka.clients import EventProducer, FramedDecoder
from streamproc.kafka.registry import Registry
from streamproc.pipeline.app import Processor, apply_schemas, build_processor, ensure_topics

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "deploy" / "models" / "fraud" / "1.0.0"


# A Faust worker entry point (test_faust.py runs it in a subprocess, configured by its
# environment): not a test module, and importing it without that environment fails.
collect_ignore = ["faust_app.py"]


@pytest.fixture
def pipeline_config_factory(kafka, schema_registry) -> Callable[..., PipelineConfig]:
    def make(guarantee: str = "at-least-once", partitions: int = 2, **over: Any) -> PipelineConfig:
        run = uuid.uuid4().hex[:8]
        raw: dict[str, Any] = {
            "name": f"test-{run}",
            "model": str(MODEL),
            "kafka": {"bootstrap": kafka},
            "registry": {"url": schema_registry, "retry_initial_ms": 50, "retry_max_ms": 500},
            "topics": {"input": f"tx-{run}", "alerts": f"alerts-{run}",
                       "metrics": f"metrics-{run}", "control": f"control-{run}",
                       "feedback": f"labels-{run}", "partitions": partitions},
            "batching": {"max_batch_size": 64, "max_wait_ms": 5},
            "delivery": {"guarantee": guarantee, "flush_timeout_s": 20},
            "metrics": {"snapshot_interval_s": 1},
        }  # fmt: skip
        for k, v in over.items():
            raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
        cfg = PipelineConfig.model_validate(raw)
        ensure_topics(cfg)
        apply_schemas(Registry(schema_registry), cfg)
        return cfg

    return make


@dataclass
class Running:
    processor: Processor
    thread: threading.Thread
    errors: list[BaseException]

    def stop(self, timeout: float = 60) -> None:
        self.processor.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "processor did not stop"
        if self.errors:
            raise self.errors[0]


@pytest.fixture
def processor_factory() -> Iterator[Callable[..., Running]]:
    """Processors running in threads of this test process; stopped after the test."""
    made: list[Running] = []

    def start(cfg: PipelineConfig, **kwargs: Any) -> Running:
        proc = build_processor(cfg, **kwargs)
        errors: list[BaseException] = []

        def target() -> None:
            try:
                proc.run()
            except BaseException as exc:  # surfaced by stop()
                errors.append(exc)

        t = threading.Thread(target=target, daemon=True, name=f"proc-{cfg.instance_id}")
        t.start()
        r = Running(proc, t, errors)
        made.append(r)
        return r

    yield start
    for r in made:
        if r.thread.is_alive():
            r.processor.stop()
            r.thread.join(60)


@pytest.fixture
def subprocess_factory(tmp_path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Processors as separate OS processes (`python -m streamproc run`), for kill -9."""
    made: list[subprocess.Popen[bytes]] = []

    def start(cfg: PipelineConfig, instance: str) -> subprocess.Popen[bytes]:
        path = tmp_path / f"{cfg.name}-{instance}.yaml"
        raw = cfg.model_dump(mode="json")
        raw["instance_id"] = instance
        path.write_text(yaml.safe_dump(raw))
        log = (tmp_path / f"{instance}.log").open("ab")
        p = subprocess.Popen(
            [sys.executable, "-m", "streamproc", "run", "-c", str(path)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
        )  # fmt: skip
        made.append(p)
        return p

    yield start
    for p in made:
        if p.poll() is None:
            p.kill()
            p.wait(30)


@pytest.fixture
def event_producer_factory(kafka, schema_registry) -> Iterator[Callable[..., EventProducer]]:
    """Avro event producers; their clients are closed after the test."""
    made: list[EventProducer] = []

    def make(topic: str, schema: str | dict[str, Any] = "Transaction") -> EventProducer:
        p = EventProducer(kafka, schema_registry, topic, schema=schema)
        made.append(p)
        return p

    yield make
    for p in made:
        p.producer.close()  # not EventProducer.close: a test's failed records are its own


@dataclass
class Record:
    partition: int
    offset: int
    key: bytes | None
    headers: dict[str, bytes]
    value: dict[str, Any]
    timestamp_ms: int = -1  # the broker's (CreateTime or LogAppendTime, per the topic)


@pytest.fixture
def read_topic(kafka, schema_registry) -> Callable[..., list[Record]]:
    """Read a topic from the beginning (read_committed) until `n` records or idle."""
    decoder = FramedDecoder(Registry(schema_registry))

    def read(topic: str, n: int, idle_s: float = 10.0, committed: bool = True) -> list[Record]:
        c = Consumer({
            "bootstrap.servers": kafka, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed else "read_uncommitted",
        })  # fmt: skip
        c.subscribe([topic])
        out: list[Record] = []
        try:
            while len(out) < n:
                msgs = c.consume(min(500, n - len(out)), timeout=idle_s)
                if not msgs:
                    break
                for m in msgs:
                    if m.error() is not None:
                        continue
                    _, value = decoder.decode(m.value())
                    out.append(Record(m.partition(), m.offset(), m.key(),
                                      dict(m.headers() or []), value,
                                      m.timestamp()[1]))  # fmt: skip
        finally:
            c.close()
        return out

    return read
