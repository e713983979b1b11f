"""The local stack survives its own restarts: same addresses, same schemas, same ids.

These tests kill services, so they run a stack of their own in a temporary home (never the
session's). Each starts with ``up()``, so each finds the stack running whatever ran before.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from streamproc import synth
from streamproc.config import PipelineConfig
from streamproc.errors import LocalStackError
from streamproc.kafka.clients import EventProducer, FramedDecoder
from streamproc.kafka.registry import Registry
from streamproc.local import LocalStack, StackInfo
from streamproc.local.process import pid_alive
from streamproc.pipeline.app import apply_schemas, build_processor, ensure_topics

pytestmark = pytest.mark.kafka

MODEL = Path(__file__).resolve().parents[2] / "deploy" / "models" / "fraud" / "1.0.0"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack(home=tmp_path_factory.mktemp("restart"))
    s.up()
    try:
        yield s
    finally:
        gc.collect()  # destroy leftover clients first, so they don't log a vanished broker
        s.down()


def _kill9(pid: int | None) -> None:
    assert pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} survived SIGKILL"
        time.sleep(0.05)


def _register(url: str, n: int) -> dict[str, tuple[int, str]]:
    """``n`` new subjects, each with one schema: subject -> (id, schema text)."""
    client = SchemaRegistryClient({"url": url, "timeout": 10})
    out = {}
    for i in range(n):
        name = f"R{uuid.uuid4().hex[:8]}"
        text = json.dumps({"type": "record", "name": name,
                           "fields": [{"name": f"f{i}", "type": "long"}]})  # fmt: skip
        subject = f"{name}-value"
        out[subject] = (client.register_schema(subject, Schema(text, "AVRO")), text)
    return out


def _lookup(url: str, subjects: dict[str, tuple[int, str]]) -> dict[str, tuple[int, str]]:
    """What a new client (no cache) gets for each subject's latest version, and by its id."""
    client = SchemaRegistryClient({"url": url, "timeout": 10})
    out = {}
    for subject in subjects:
        latest = client.get_latest_version(subject)
        by_id = client.get_schema(latest.schema_id)
        assert json.loads(by_id.schema_str) == json.loads(latest.schema.schema_str)
        out[subject] = (latest.schema_id, subjects[subject][1])
        assert json.loads(latest.schema.schema_str) == json.loads(subjects[subject][1])
    return out


def test_a_killed_broker_comes_back_on_its_address_beside_the_same_registry(stack):
    before = stack.up()
    registered = _register(before.schema_registry, 3)
    _kill9(before.kafka_pid)
    assert stack.status() is None  # not all of it runs
    after = stack.up()
    assert after.public() == before.public()
    assert after.registry_pid == before.registry_pid  # only the broker was started
    assert after.kafka_pid != before.kafka_pid and pid_alive(after.kafka_pid or 0)
    assert _lookup(after.schema_registry, registered) == registered
    # The registry's own Kafka clients found the broker again: it still takes new schemas.
    more = _register(after.schema_registry, 1)
    assert _lookup(after.schema_registry, more) == more


def test_a_killed_registry_comes_back_with_every_schema_and_id(stack):
    before = stack.up()
    registered = _register(before.schema_registry, 3)
    _kill9(before.registry_pid)
    after = stack.up()
    assert after.public() == before.public()
    assert after.kafka_pid == before.kafka_pid
    assert after.registry_pid != before.registry_pid
    assert _lookup(after.schema_registry, registered) == registered


def test_down_then_up_serves_the_same_addresses_and_schemas(stack):
    before = stack.up()
    registered = _register(before.schema_registry, 2)
    assert stack.down()
    assert not pid_alive(before.kafka_pid or 0) and not pid_alive(before.registry_pid or 0)
    after = stack.up()
    assert after.public() == before.public()
    assert _lookup(after.schema_registry, registered) == registered


def test_a_failed_up_leaves_the_running_broker_running(stack):
    before = stack.up()
    _kill9(before.registry_pid)
    port = before.registry_port
    assert port
    with socket.socket() as squatter:  # another server took the registry's port meanwhile
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(LocalStackError, match=f"port {port} for the schema registry"):
            stack.up()
        assert pid_alive(before.kafka_pid or 0)
        state = json.loads(stack.state_file.read_text())
        assert state["kafka_pid"] == before.kafka_pid
        assert state["registry_port"] == port  # still remembered: the address is kept
    after = stack.up()
    assert after.public() == before.public()
    assert after.kafka_pid == before.kafka_pid


def test_fresh_forgets_the_schemas(stack):
    before = stack.up()
    _register(before.schema_registry, 1)
    after = stack.up(fresh=True)
    client = SchemaRegistryClient({"url": after.schema_registry, "timeout": 10})
    assert client.get_subjects() == []


# --- a processor across a broker restart ------------------------------------------------


def _config(info: StackInfo) -> PipelineConfig:
    run = uuid.uuid4().hex[:8]
    cfg = PipelineConfig.model_validate({
        "name": f"restart-{run}",
        "model": str(MODEL),
        "kafka": {"bootstrap": info.bootstrap},
        "registry": {"url": info.schema_registry, "retry_initial_ms": 50, "retry_max_ms": 500},
        "topics": {"input": f"tx-{run}", "alerts": f"alerts-{run}", "metrics": f"metrics-{run}",
                   "control": f"control-{run}", "feedback": f"labels-{run}", "partitions": 2},
        "batching": {"max_batch_size": 64, "max_wait_ms": 5},
        "delivery": {"flush_timeout_s": 20},
        "metrics": {"snapshot_interval_s": 1, "port": 0},
    })  # fmt: skip
    ensure_topics(cfg)
    apply_schemas(Registry(info.schema_registry), cfg)
    return cfg


def _event_ids(info: StackInfo, topic: str, n: int, deadline_s: float) -> set[str]:
    """The event ids of the topic's predictions, read until ``n`` distinct or the deadline."""
    decoder = FramedDecoder(Registry(info.schema_registry))
    c = Consumer({"bootstrap.servers": info.bootstrap, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    c.subscribe([topic])
    seen: set[str] = set()
    deadline = time.monotonic() + deadline_s
    try:
        while len(seen) < n and time.monotonic() < deadline:
            for m in c.consume(500, timeout=1.0):
                if m.error() is None:
                    seen.add(decoder.decode(m.value())[1]["event_id"])
    finally:
        c.close()
    return seen


def _records_in(info: StackInfo, topic: str, partitions: int) -> int:
    c = Consumer({"bootstrap.servers": info.bootstrap, "group.id": f"w-{uuid.uuid4().hex[:8]}"})
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(partitions)
        )
    finally:
        c.close()


def test_a_processor_keeps_running_across_a_broker_kill_and_up(stack):
    info = stack.up()
    cfg = _config(info)
    proc = build_processor(cfg)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            proc.run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="restart-proc")
    thread.start()
    producer = EventProducer(info.bootstrap, info.schema_registry, cfg.topics.input)
    try:
        first, _ = synth.generate(200, seed=11)
        second, _ = synth.generate(200, seed=12, offset=200)
        ids = [r["event_id"] for r in first + second]
        assert len(set(ids)) == 400
        for r in first:
            producer.send(r, key=r["account_id"])
        producer.flush()
        got = _event_ids(info, cfg.topics.predictions, 200, deadline_s=120)
        assert got == {r["event_id"] for r in first}

        _kill9(info.kafka_pid)
        after = stack.up()
        assert after.bootstrap == info.bootstrap
        # The same producer and processor: their clients reconnect to the same address.
        for r in second:
            producer.send(r, key=r["account_id"])
        producer.flush(120)
        got = _event_ids(info, cfg.topics.predictions, 400, deadline_s=180)
        assert got == set(ids)
        assert thread.is_alive() and not errors
        assert _records_in(info, cfg.topics.dlq, 2) == 0
    finally:
        producer.producer.close()
        proc.stop()
        thread.join(60)
    assert not thread.is_alive(), "processor did not stop"
    if errors:
        raise errors[0]
