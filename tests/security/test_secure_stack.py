"""Every Kafka client path over the secure local stack's SASL_SSL listener (SCRAM-SHA-512,
a generated CA, KRaft's StandardAuthorizer with allow.everyone.if.no.acl.found=false), as
its admin super user, configured only by the client properties file `local up --secure`
prints: the processor (runner, admin, label reader, control topic watcher and replica
reporter), the CLI (produce, tail, deploy, status) and the Python clients. A wrong
password fails within seconds, naming the principal; no password shows in any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamproc.cli.resolve import resolve_pipeline
from streamproc.kafka.admin import Admin
from streamproc.kafka.clients import EventProducer, RecordConsumer
from streamproc.kafka.configuration import read_properties
from streamproc.loadgen import produce_synthetic
from streamproc.local.stack import StackInfo
from streamproc.pipeline.app import build_processor

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "deploy" / "models" / "fraud" / "1.0.0"


@pytest.fixture(scope="module")
def props(secure_stack: tuple[StackInfo, Path]) -> Path:
    info, _ = secure_stack
    assert info.client_properties and info.secure_bootstrap
    assert info.public()["client_properties"] == info.client_properties
    path = Path(info.client_properties)
    assert path.stat().st_mode & 0o077 == 0, "the properties file holds the password"
    return path


@pytest.fixture(scope="module")
def password(props: Path) -> str:
    return str(read_properties(props)["sasl_password"])


def _cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMPROC_HOME": str(home)}
    for var in ("STREAMPROC_KAFKA_BOOTSTRAP", "STREAMPROC_SCHEMA_REGISTRY_URL"):
        env.pop(var, None)  # the stack under test gives the registry's address
    return subprocess.run([sys.executable, "-m", "streamproc", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)  # fmt: skip


def test_the_pipeline_and_every_client_over_sasl_ssl(
    secure_stack: tuple[StackInfo, Path], props: Path, password: str, tmp_path: Path
) -> None:
    info, home = secure_stack
    run = uuid.uuid4().hex[:8]
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": "fraud", "model": str(MODEL),
        "topics": {"input": f"tx-{run}", "alerts": f"alerts-{run}", "metrics": f"metrics-{run}",
                   "control": f"control-{run}", "feedback": f"labels-{run}", "partitions": 2},
        "batching": {"max_batch_size": 64, "max_wait_ms": 5},
        "delivery": {"flush_timeout_s": 20},
        "metrics": {"snapshot_interval_s": 1},
    }))  # fmt: skip
    # The pipeline file names no Kafka address: it comes from the properties file alone.
    resolved = resolve_pipeline(pipeline, kafka_config=props, env={}, stack=lambda: info)
    cfg = resolved.config.with_overrides(instance_id="secure-1")
    assert cfg.kafka.bootstrap == info.secure_bootstrap != info.bootstrap
    assert cfg.kafka.security_protocol == "SASL_SSL"
    assert resolved.sources["kafka.sasl_password"] == f"file {props}"
    # The registry too: over TLS with basic auth (nginx in front of it), from the same file.
    assert cfg.registry.url == info.secure_schema_registry
    assert cfg.registry.url.startswith("https://") and cfg.registry.username
    assert resolved.sources["registry.password"] == f"file {props}"
    t = cfg.topics
    applied = _cli(home, "schemas", "apply", "-c", str(pipeline), "--kafka-config", str(props))
    assert applied.returncode == 0, applied.stderr

    proc = build_processor(cfg)  # admin, registry, label reader, control watcher, reporter
    errors: list[BaseException] = []

    def target() -> None:
        try:
            proc.run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True, name="secure-processor")
    thread.start()
    outputs: list[str] = [applied.stdout, applied.stderr]
    try:
        # produce (CLI): events with malformed ones among them, over SASL_SSL
        produced = _cli(home, "produce", "-n", "400", "--malformed", "0.1", "-c", str(pipeline),
                        "--kafka-config", str(props))  # fmt: skip
        outputs += [produced.stdout, produced.stderr]
        assert produced.returncode == 0, produced.stderr
        report = json.loads(produced.stdout)
        assert report["produced"] == 400 and sum(report["malformed"].values()) > 0

        # The label reader: labels that are not the model's become dead letters, written
        # with the processor's next batch; the Python producer sends events until they are.
        with EventProducer(cfg.kafka, cfg.registry, t.feedback or "", schema="Label") as p:
            for i in range(7):
                p.send({"event_id": f"e{i}", "label": "not-a-label", "time": 0})
        total = report["produced"]
        preds: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        with (
            RecordConsumer(cfg.kafka, cfg.registry, t.predictions) as pc,
            RecordConsumer(cfg.kafka, cfg.registry, t.dlq) as dc,
            EventProducer(cfg.kafka, cfg.registry, t.input) as events,
        ):
            deadline = time.monotonic() + 90
            while True:
                preds += [r for _, r in pc.poll_batch(500, 0.2)]
                dead += [r for _, r in dc.poll_batch(500, 0.2)]
                from_input = [d for d in dead if d["source_topic"] == t.input]
                from_labels = [d for d in dead if d["source_topic"] == t.feedback]
                if len(from_labels) >= 7 and len(preds) + len(from_input) >= total:
                    break
                assert time.monotonic() < deadline, (len(preds), len(from_input), total)
                if len(from_labels) < 7 and len(preds) + len(from_input) >= total:
                    total += produce_synthetic(events, 10).produced
                    events.flush()
        assert len(preds) + len(from_input) == total  # produced == predictions + dead letters
        assert len(from_input) >= sum(report["malformed"].values()) > 0
        assert len(from_labels) == 7

        # tail (CLI)
        tailed = _cli(home, "tail", t.predictions, "-n", "5", "-c", str(pipeline),
                      "--kafka-config", str(props))  # fmt: skip
        outputs += [tailed.stdout, tailed.stderr]
        assert tailed.returncode == 0, tailed.stderr
        assert len([json.loads(line) for line in tailed.stdout.splitlines()]) == 5

        # deploy and status (CLI) over the control topic the processor follows
        deployed = _cli(home, "deploy", "fraud", "1.1.0", "--percent", "10", "-c",
                        str(pipeline), "--kafka-config", str(props))  # fmt: skip
        outputs += [deployed.stdout, deployed.stderr]
        assert deployed.returncode == 0, deployed.stderr
        deadline = time.monotonic() + 60
        while True:  # the processor's replica report names the candidate once it applies it
            status = _cli(home, "status", "fraud", "-o", "json", "-c", str(pipeline),
                          "--kafka-config", str(props))  # fmt: skip
            assert status.returncode == 0, status.stderr
            [doc] = json.loads(status.stdout)
            if doc["candidate"] == "1.1.0" and "1.1.0" in json.dumps(doc["replicas"]):
                break
            assert time.monotonic() < deadline, status.stdout
            time.sleep(0.5)
        outputs += [status.stdout, status.stderr]
        config_show = _cli(home, "config", "show", "-c", str(pipeline),
                           "--kafka-config", str(props))  # fmt: skip
        outputs += [config_show.stdout, config_show.stderr]
        assert "kafka.sasl_password" in config_show.stdout
    finally:
        proc.stop()
        thread.join(60)
    assert not thread.is_alive() and not errors, errors
    assert all(password not in out for out in outputs)


def test_a_wrong_password_fails_within_seconds_naming_the_principal(
    secure_stack: tuple[StackInfo, Path], props: Path, password: str, tmp_path: Path
) -> None:
    _, home = secure_stack
    wrong = "wrong-" + uuid.uuid4().hex
    bad = tmp_path / "bad.properties"
    bad.write_text(props.read_text().replace(password, wrong))
    for args in (["status", "fraud"], ["produce", "-n", "1"], ["tail", "transactions"]):
        t0 = time.monotonic()
        res = _cli(home, *args, "--kafka-config", str(bad), timeout=60)
        took = time.monotonic() - t0  # includes the interpreter's start
        assert res.returncode != 0, (args, res.stdout)
        assert took < 15, (args, took)
        text = " ".join(res.stderr.split())
        assert "authentication failed for User:admin" in text, (args, res.stderr)
        assert wrong not in res.stdout + res.stderr and password not in res.stderr


def test_the_secure_listener_refuses_a_client_without_credentials(
    secure_stack: tuple[StackInfo, Path],
) -> None:
    info, _ = secure_stack
    # The PLAINTEXT protocol against the SASL_SSL port never gets an answer.
    admin = Admin(info.secure_bootstrap or "")
    t0 = time.monotonic()
    with pytest.raises(Exception, match="no answer from Kafka"):
        admin.list_topics(timeout_s=3)
    assert time.monotonic() - t0 < 15


def test_the_asyncio_client_over_sasl_ssl(
    secure_stack: tuple[StackInfo, Path], props: Path
) -> None:
    import asyncio

    from streamproc.kafka.aio import AsyncRecordConsumer

    info, _ = secure_stack
    cfg = resolve_pipeline(None, kafka_config=props, env={}, stack=lambda: info).config
    topic = f"aio-{uuid.uuid4().hex[:8]}"
    Admin(cfg.kafka).ensure_topics([topic])
    with EventProducer(cfg.kafka, cfg.registry, topic) as p:
        sent = produce_synthetic(p, 5).produced

    async def read() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with AsyncRecordConsumer(cfg.kafka, cfg.registry, topic) as c:
            async for _, rec in c:
                got.append(rec)
                if len(got) == sent:
                    return got
        return got

    assert len(asyncio.run(asyncio.wait_for(read(), 60))) == sent == 5


def test_a_wrong_registry_password_fails_within_seconds(
    secure_stack: tuple[StackInfo, Path], props: Path, tmp_path: Path
) -> None:
    _, home = secure_stack
    run = uuid.uuid4().hex[:8]
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "fraud", "model": str(MODEL),
                                        "topics": {"input": f"tx-{run}"}}))  # fmt: skip
    for args in (["topics", "apply"], ["schemas", "apply"], ["produce", "-n", "3"]):
        res = _cli(home, *args, "-c", str(pipeline), "--kafka-config", str(props))
        assert res.returncode == 0, (args, res.stderr)
    [line] = [x for x in props.read_text().splitlines() if "basic.auth.user.info" in x]
    registry_password = line.partition(":")[2]
    wrong = "wrong-" + uuid.uuid4().hex
    bad = tmp_path / "bad.properties"
    bad.write_text(props.read_text().replace(line, f"{line.partition(':')[0]}:{wrong}"))
    for args in (["schemas", "apply"], ["produce", "-n", "1"], ["tail", f"tx-{run}", "-n", "1"]):
        t0 = time.monotonic()
        res = _cli(home, *args, "-c", str(pipeline), "--kafka-config", str(bad), timeout=60)
        took = time.monotonic() - t0  # includes the interpreter's start
        assert res.returncode != 0, (args, res.stdout)
        assert took < 15, (args, took)
        text = " ".join(res.stderr.split())
        assert "refused user registry (HTTP 401); check the registry username" in text, (
            args, res.stderr)  # fmt: skip
        out = res.stdout + res.stderr
        assert wrong not in out and registry_password not in out
