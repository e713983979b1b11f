"""Every client path fails clearly and fast on the secure stack: with a wrong password, and as
a principal that has no ACL on what it touches (StandardAuthorizer, no ACL: no access). The
message names the principal or the resource, arrives within 15 s (the interpreter's start
included), and never holds the password."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from streamproc.cli.resolve import resolve_pipeline
from streamproc.errors import StreamprocError
from streamproc.kafka.admin import Admin
from streamproc.kafka.clients import EventProducer
from streamproc.kafka.configuration import read_properties
from streamproc.loadgen import produce_synthetic
from streamproc.local.stack import StackInfo
from streamproc.pipeline.app import apply_schemas, ensure_topics

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "deploy" / "models" / "fraud" / "1.0.0"
RUN = uuid.uuid4().hex[:8]
INPUT = f"tx-{RUN}"
CONTROL = f"control-{RUN}"
ALERTS = f"alerts-{RUN}"


@pytest.fixture(scope="module")
def setup(secure_stack: tuple[StackInfo, Path], tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, Path]:  # fmt: skip
    """The pipeline (its topics made, some events in), and three properties files: the
    admin's, one with a wrong password, one for a user with no ACL."""
    info, _ = secure_stack
    assert info.client_properties
    props = Path(info.client_properties)
    d = tmp_path_factory.mktemp("client-errors")
    pipeline = d / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": "fraud", "model": str(MODEL),
        "topics": {"input": INPUT, "alerts": ALERTS, "metrics": f"metrics-{RUN}",
                   "control": CONTROL, "partitions": 1},
    }))  # fmt: skip
    from streamproc.kafka.configuration import registry_config
    from streamproc.kafka.registry import Registry

    cfg = resolve_pipeline(pipeline, kafka_config=props, env={}, stack=lambda: info).config
    ensure_topics(cfg)
    apply_schemas(Registry(registry_config(cfg.registry)), cfg)
    with EventProducer(cfg.kafka, cfg.registry, INPUT) as p:
        produce_synthetic(p, 3)
    password = str(read_properties(props)["sasl_password"])
    wrong = d / "wrong.properties"
    wrong.write_text(props.read_text().replace(password, "wrong-" + uuid.uuid4().hex))
    nobody_password = uuid.uuid4().hex
    Admin(cfg.kafka).upsert_scram_user(f"nobody-{RUN}", nobody_password)
    nobody = d / "nobody.properties"
    text = props.read_text().replace("sasl.username=admin", f"sasl.username=nobody-{RUN}")
    nobody.write_text(text.replace(password, nobody_password))
    return {"pipeline": pipeline, "admin": props, "wrong": wrong, "nobody": nobody}


COMMANDS = {
    "produce": ["produce", "-n", "1"],
    "tail": ["tail", INPUT, "-n", "1"],
    "deploy": ["deploy", "fraud", "1.0.0"],
    "status": ["status", "fraud"],
    "history": ["history", "fraud"],
    "alerts tail": ["alerts", "tail", "-n", "1"],
}


def _cli(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "STREAMPROC_HOME": str(home)}
    for var in ("STREAMPROC_KAFKA_BOOTSTRAP", "STREAMPROC_SCHEMA_REGISTRY_URL"):
        env.pop(var, None)
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "streamproc", *args], capture_output=True,
                         text=True, timeout=60, env=env, check=False)  # fmt: skip
    return res, time.monotonic() - t0


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_wrong_password(secure_stack: tuple[StackInfo, Path], setup: dict[str, Path],
                          command: str) -> None:  # fmt: skip
    res, took = _cli(secure_stack[1], *COMMANDS[command], "-c", str(setup["pipeline"]),
                     "--kafka-config", str(setup["wrong"]))  # fmt: skip
    text = " ".join(res.stderr.split())
    assert res.returncode != 0 and took < 15, (command, took, res.stdout, text)
    assert "authentication failed for User:admin" in text, (command, text)
    assert "wrong-" not in res.stdout + res.stderr


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_acl(secure_stack: tuple[StackInfo, Path], setup: dict[str, Path],
                command: str) -> None:  # fmt: skip
    res, took = _cli(secure_stack[1], *COMMANDS[command], "-c", str(setup["pipeline"]),
                     "--kafka-config", str(setup["nobody"]))  # fmt: skip
    text = " ".join(res.stderr.split())
    assert res.returncode != 0 and took < 15, (command, took, res.stdout, text)
    assert "authoriz" in text.lower(), (command, text)
    topic = {"produce": INPUT, "tail": INPUT, "alerts tail": ALERTS}.get(command, CONTROL)
    assert topic in text, (command, text)


@pytest.mark.parametrize("who", ["wrong", "nobody"])
def test_the_asyncio_client(secure_stack: tuple[StackInfo, Path], setup: dict[str, Path],
                            who: str) -> None:  # fmt: skip
    from streamproc.kafka.aio import AsyncRecordConsumer

    info, _ = secure_stack
    cfg = resolve_pipeline(setup["pipeline"], kafka_config=setup[who], env={},
                           stack=lambda: info).config  # fmt: skip

    async def read() -> None:
        async with AsyncRecordConsumer(cfg.kafka, cfg.registry, INPUT) as c:
            async for _ in c:
                return

    t0 = time.monotonic()
    with pytest.raises(StreamprocError) as caught:
        asyncio.run(asyncio.wait_for(read(), 60))
    assert time.monotonic() - t0 < 15
    text = " ".join(str(caught.value).split())
    if who == "wrong":
        assert "authentication failed for User:admin" in text, text
    else:
        assert f"User:nobody-{RUN} may not read {INPUT}" in text, text
