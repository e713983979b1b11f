"""Tenants: `streamproc quotas apply` sets Kafka's client quotas of the tenants a pipeline
lists, and the broker throttles a tenant above its quota while another tenant's throughput
holds (secure stack: one SCRAM user per tenant); the processor counts events per tenant when
the pipeline names a tenant field."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import fastavro
import pytest
import yaml
from confluent_kafka import Producer
from pydantic import SecretStr
from typer.testing import CliRunner

from streamproc import schemas
from streamproc.aclplan import AclEntry
from streamproc.cli import app
from streamproc.cli.deps import Deps
from streamproc.cli.resolve import resolve_pipeline
from streamproc.config import PipelineConfig, TenantSettings
from streamproc.kafka.acls import create_acls
from streamproc.kafka.admin import Admin
from streamproc.kafka.clients import EventProducer, RecordConsumer
from streamproc.kafka.configuration import client_config
from streamproc.kafka.quotas import changes
from streamproc.kafka.registry import Registry
from streamproc.loadgen import produce_synthetic
from streamproc.local.stack import StackInfo
from streamproc.pipeline.app import apply_schemas, build_processor
from streamproc.pipeline.tenants import UNKNOWN, TenantCounter

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "deploy" / "models" / "fraud" / "1.0.0"
QUOTA = 100_000  # bytes/s of the throttled tenant
SEND = 600_000  # bytes each tenant sends: six seconds' worth of the quota


def _produce(conf: dict[str, Any], topic: str, out: dict[str, Any]) -> None:
    """Send SEND bytes as fast as the broker lets this client; note the rate and the
    largest throttle time the broker reported (librdkafka's statistics)."""
    throttle: list[int] = []

    def stats(raw: str) -> None:
        doc = json.loads(raw)
        throttle.extend(b["throttle"]["max"] for b in doc["brokers"].values() if b["nodeid"] >= 0)

    # Requests of at most 20 kB: the broker throttles a client between its requests, so
    # one request holding everything would be taken whole before any throttling.
    p = Producer({**conf, "acks": 1, "linger.ms": 5, "batch.size": 20_000,
                  "enable.idempotence": False, "statistics.interval.ms": 200,
                  "stats_cb": stats})  # fmt: skip
    value = b"x" * 1000
    p.produce(topic, value)  # connected and logged in (TLS, SCRAM) before the clock starts
    assert p.flush(30) == 0
    t0 = time.monotonic()
    for _ in range(SEND // len(value)):
        while True:
            try:
                p.produce(topic, value)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(120) == 0
    out["rate"] = SEND / (time.monotonic() - t0)
    deadline = time.monotonic() + 5  # statistics cover the last interval: one more report
    seen = len(throttle)
    while len(throttle) <= seen + 1 and time.monotonic() < deadline:
        p.poll(0.1)
    out["throttle_ms"] = max(throttle, default=0)


def test_a_tenant_above_its_quota_is_throttled_and_the_other_is_not(
    secure_stack: tuple[StackInfo, Path], tmp_path: Path
) -> None:
    info, _ = secure_stack
    assert info.client_properties
    props = Path(info.client_properties)
    run = uuid.uuid4().hex[:8]
    topic = f"tenants-{run}"
    users = {"slow": f"slow-{run}", "fast": f"fast-{run}"}
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": "fraud", "model": str(MODEL), "topics": {"input": topic},
        "tenants": [
            {"name": "slow", "principal": f"User:{users['slow']}", "producer_byte_rate": QUOTA},
            {"name": "fast", "principal": f"User:{users['fast']}",
             "producer_byte_rate": 1_000 * QUOTA, "consumer_byte_rate": 1_000 * QUOTA},
        ],
    }))  # fmt: skip
    admin_cfg = resolve_pipeline(pipeline, kafka_config=props, env={}, stack=lambda: info).config
    Admin(admin_cfg.kafka).ensure_topics([topic])
    confs = {}
    for tenant, user in users.items():
        password = uuid.uuid4().hex
        Admin(admin_cfg.kafka).upsert_scram_user(user, password)
        create_acls(admin_cfg.kafka, [AclEntry("TOPIC", topic, "LITERAL", op, f"User:{user}")
                                      for op in ("WRITE", "DESCRIBE")])  # fmt: skip
        secret = {"sasl_username": user, "sasl_password": SecretStr(password)}
        kafka = admin_cfg.kafka.model_copy(update=secret)
        confs[tenant] = client_config(kafka)

    deps = Deps(env={}, stack=lambda: info)
    runner = CliRunner()
    applied = runner.invoke(app, ["quotas", "apply", "-c", str(pipeline), "--kafka-config",
                                  str(props), "-o", "json"], obj=deps)  # fmt: skip
    assert applied.exit_code == 0, (applied.output, applied.exception)
    assert [c["entity"] for c in json.loads(applied.output)] == [
        {"user": users["slow"]}, {"user": users["fast"]}]  # fmt: skip
    shown = runner.invoke(app, ["quotas", "show", "-c", str(pipeline), "--kafka-config",
                                str(props), "-o", "json"], obj=deps)  # fmt: skip
    assert shown.exit_code == 0, (shown.output, shown.exception)
    quotas = {q["entity"].get("user"): q["values"] for q in json.loads(shown.output)}
    assert quotas[users["slow"]] == {"producer_byte_rate": QUOTA}
    assert quotas[users["fast"]]["consumer_byte_rate"] == 1_000 * QUOTA

    results: dict[str, dict[str, Any]] = {t: {} for t in users}
    threads = [threading.Thread(target=_produce, args=(confs[t], topic, results[t]))
               for t in users]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    slow, fast = results["slow"], results["fast"]
    assert "rate" in slow and "rate" in fast, results
    # The broker holds the slow tenant near its quota (after a burst of about a second's
    # worth), and reports the throttling; the other tenant, sending at the same time, is
    # not held back by it.
    assert slow["rate"] < 2 * QUOTA, results
    assert slow["throttle_ms"] > 0 and fast["throttle_ms"] == 0, results
    assert fast["rate"] > 4 * slow["rate"], results


def test_a_tenant_without_principal_or_client_id_is_refused() -> None:
    with pytest.raises(ValueError, match="give principal"):
        TenantSettings(name="x", producer_byte_rate=1)
    [c] = changes([TenantSettings(name="x", client_id="app-1", consumer_byte_rate=5)])
    assert c.entity == {"client-id": "app-1"} and c.set == {"consumer_byte_rate": 5.0}


def test_the_tenant_of_a_payload() -> None:
    schema = schemas.schema_dict("Transaction")
    from streamproc.synth import generate

    records, _ = generate(3, seed=1)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), records[0])
    payload = b"\x00" + (7).to_bytes(4, "big") + buf.getvalue()
    counter = TenantCounter("channel", {7: schema}.get)
    assert counter.tenant(payload) == records[0]["channel"]
    assert counter.tenant(b"\x00\x00\x00\x00\x09garbage") == UNKNOWN  # no such schema
    assert counter.tenant(payload[:9]) == UNKNOWN  # truncated
    assert counter.tenant(None) == UNKNOWN
    assert TenantCounter("no_such_field", {7: schema}.get).tenant(payload) == UNKNOWN


def test_the_processor_counts_events_per_tenant(kafka: str, schema_registry: str) -> None:
    run = uuid.uuid4().hex[:8]
    cfg = PipelineConfig.model_validate({
        "name": f"tenants-{run}", "model": str(MODEL), "instance_id": "t-1",
        "kafka": {"bootstrap": kafka}, "registry": {"url": schema_registry},
        "topics": {"input": f"tx-{run}", "alerts": f"alerts-{run}", "metrics": f"metrics-{run}",
                   "control": f"control-{run}", "partitions": 2},
        "batching": {"max_batch_size": 64, "max_wait_ms": 5},
        "tenant_field": "channel",
    })  # fmt: skip
    apply_schemas(Registry(schema_registry), cfg)
    proc = build_processor(cfg)
    thread = threading.Thread(target=proc.run, daemon=True)
    thread.start()
    try:
        with EventProducer(cfg.kafka, cfg.registry, cfg.topics.input) as p:
            report = produce_synthetic(p, 300, malformed=0.1)
        total = report.produced
        seen = 0
        with (
            RecordConsumer(cfg.kafka, cfg.registry, cfg.topics.predictions) as pc,
            RecordConsumer(cfg.kafka, cfg.registry, cfg.topics.dlq) as dc,
        ):
            deadline = time.monotonic() + 90
            while seen < total:
                seen += len(pc.poll_batch(500, 0.2)) + len(dc.poll_batch(500, 0.2))
                assert time.monotonic() < deadline, (seen, total)
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + 30  # counted once the batch is finished
        while sum(counts.values()) < total:
            counts = Counter({
                s.labels["tenant"]: s.value
                for m in proc.prometheus.registry.collect() if m.name == "streamproc_tenant_events"
                for s in m.samples if s.name.endswith("_total")
            })  # fmt: skip
            assert time.monotonic() < deadline, counts
            time.sleep(0.05)
    finally:
        proc.stop()
        thread.join(60)
    assert sum(counts.values()) == total
    assert set(counts) - {UNKNOWN} <= {"POS", "ECOM", "ATM", "MOTO"}
    assert len(set(counts) - {UNKNOWN}) >= 3 and counts[UNKNOWN] > 0  # malformed ones
