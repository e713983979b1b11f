"""OAUTHBEARER on the real broker: the secure stack's SASL_SSL listener checks the tokens of
a local OpenID Connect issuer (tests/security/oidc.py) with Kafka's own validator against
the issuer's JWKS, ACLs enforced as for SCRAM users; the clients get their tokens from the
issuer's token endpoint (client credentials), configured through the connection profile
(a properties file and the environment), as an operator would.

- a subject holding the ACLs of ``streamproc acls plan`` runs the processor, and a reader
  with the consumer role's ACLs reads its predictions, all over OAUTHBEARER;
- a subject without ACLs is stopped within 15 s with an authorization error that names
  it and the topic;
- a token that is expired, signed with another key or made for another audience stops the
  process within 15 s with one line naming ``User:<sub>`` and the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamproc import aclplan, synth
from streamproc.cli.resolve import resolve_pipeline
from streamproc.config import PipelineConfig
from streamproc.errors import StreamprocError
from streamproc.kafka.acls import create_acls
from streamproc.kafka.clients import EventProducer, RecordConsumer
from streamproc.kafka.configuration import registry_config
from streamproc.kafka.registry import Registry
from streamproc.local.stack import StackInfo
from streamproc.pipeline.app import apply_schemas, ensure_topics
from tests.security.oidc import Issuer, Kind
from tests.security.running import predictions_under

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "deploy" / "models" / "fraud" / "1.0.0"
RUN = uuid.uuid4().hex[:8]
SECRET_ENV = "STREAMPROC_KAFKA_OAUTH_CLIENT_SECRET"
# A subject per client: what the broker's ACLs name (User:<sub>).
CLIENTS: dict[str, Kind] = {"proc": "valid", "reader": "valid", "nobody": "valid",
                            "describer": "valid",
                            "expired": "expired", "forged": "wrong-key",
                            "elsewhere": "wrong-audience"}  # fmt: skip


def _sub(name: str) -> str:
    return f"oauth-{name}-{RUN}"


def _secret(name: str) -> str:
    return f"secret-{name}-{RUN}"


@pytest.fixture(scope="module")
def oauth(
    secure_stack: tuple[StackInfo, Path],
    oidc_issuer: Issuer,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """The pipeline (topics and schemas made by the admin) and a properties file per OAuth
    client: the admin's registry lines, OAUTHBEARER with the issuer's token endpoint, the
    client secret left to the environment."""
    info, _ = secure_stack
    assert info.client_properties and info.secure_bootstrap
    admin_props = Path(info.client_properties)
    d = tmp_path_factory.mktemp("oauth")
    pipeline = d / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": f"fraud-{RUN}", "model": str(MODEL),
        "topics": {"input": f"tx-{RUN}", "alerts": f"alerts-{RUN}", "metrics": f"metrics-{RUN}",
                   "control": f"control-{RUN}", "feedback": f"labels-{RUN}", "partitions": 1},
        "batching": {"max_batch_size": 64, "max_wait_ms": 5},
        "delivery": {"flush_timeout_s": 20},
        "metrics": {"snapshot_interval_s": 1},
    }))  # fmt: skip
    admin = resolve_pipeline(pipeline, kafka_config=admin_props, env={},
                             stack=lambda: info).config  # fmt: skip
    ensure_topics(admin)
    apply_schemas(Registry(registry_config(admin.registry)), admin)
    lines = admin_props.read_text().splitlines()
    keep = [ln for ln in lines if ln.startswith(("schema.registry.", "ssl.ca.location="))]
    props: dict[str, Path] = {}
    for name, kind in CLIENTS.items():
        client_id = f"{name}-{RUN}"
        oidc_issuer.add_client(client_id, _secret(name), _sub(name), kind)
        path = d / f"{name}.properties"
        path.write_text("\n".join([
            f"bootstrap.servers={info.secure_bootstrap}", "security.protocol=SASL_SSL",
            "sasl.mechanism=OAUTHBEARER", "sasl.oauthbearer.method=oidc",
            f"sasl.oauthbearer.client.id={client_id}",
            f"sasl.oauthbearer.token.endpoint.url={oidc_issuer.token_url}",
            "sasl.oauthbearer.scope=kafka", *keep, "",
        ]))  # fmt: skip
        props[name] = path
    return {"info": info, "home": secure_stack[1], "pipeline": pipeline, "admin": admin,
            "admin_props": admin_props, "props": props}  # fmt: skip


def _as(oauth: dict[str, Any], name: str) -> PipelineConfig:
    """The pipeline with client ``name``'s OAUTHBEARER profile (as the CLI resolves it)."""
    cfg = resolve_pipeline(oauth["pipeline"], kafka_config=oauth["props"][name],
                           env={SECRET_ENV: _secret(name)},
                           stack=lambda: oauth["info"]).config  # fmt: skip
    k = cfg.kafka
    assert (k.sasl_mechanism, k.sasl_oauthbearer_method, k.sasl_username) == (
        "OAUTHBEARER", "oidc", None)  # fmt: skip
    return cfg


def _cli(oauth: dict[str, Any], name: str, *args: str) -> tuple[str, str, int, float]:
    """Run ``streamproc ARGS -c PIPELINE --kafka-config <name's file>``: its error lines
    (Rich does not wrap them: wide COLUMNS), all of stdout+stderr, exit code, seconds."""
    env = {**os.environ, "STREAMPROC_HOME": str(oauth["home"]), SECRET_ENV: _secret(name),
           "COLUMNS": "2000"}  # fmt: skip
    for var in ("STREAMPROC_KAFKA_BOOTSTRAP", "STREAMPROC_SCHEMA_REGISTRY_URL"):
        env.pop(var, None)
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "streamproc", *args, "-c", str(oauth["pipeline"]),
         "--kafka-config", str(oauth["props"][name])],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    took = time.monotonic() - t0
    errors = "\n".join(ln for ln in res.stderr.splitlines() if ln.startswith("error:"))
    return errors, res.stdout + res.stderr, res.returncode, took


def test_the_planned_acls_run_the_processor_over_oauthbearer(
    oauth: dict[str, Any], oidc_issuer: Issuer
) -> None:
    admin: PipelineConfig = oauth["admin"]
    proc_principal, reader_principal = f"User:{_sub('proc')}", f"User:{_sub('reader')}"
    # The processor's ACLs as the CLI applies them (as the admin, a SCRAM super user).
    env = {**os.environ, "STREAMPROC_HOME": str(oauth["home"])}
    for var in ("STREAMPROC_KAFKA_BOOTSTRAP", "STREAMPROC_SCHEMA_REGISTRY_URL"):
        env.pop(var, None)
    applied = subprocess.run(
        [sys.executable, "-m", "streamproc", "acls", "apply", "-c", str(oauth["pipeline"]),
         "--kafka-config", str(oauth["admin_props"]), "--principal", proc_principal,
         "-o", "json"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert [aclplan.AclEntry(**e) for e in json.loads(applied.stdout)] == aclplan.plan(
        admin, proc_principal
    )
    create_acls(admin.kafka, aclplan.plan(admin, reader_principal, "consumer"))

    issued = oidc_issuer.issued
    proc = _as(oauth, "proc").with_overrides(instance_id="oauth-1")
    predictions_under(proc, admin, _as(oauth, "reader"), 40, seed=7)
    assert oidc_issuer.issued > issued  # the tokens came from the issuer's endpoint


@pytest.mark.parametrize("command", ["tail", "produce"])
def test_a_subject_without_acls_is_refused_naming_the_topic(
    oauth: dict[str, Any], command: str
) -> None:
    topic = oauth["admin"].topics.input
    args = ["tail", topic, "-n", "1"] if command == "tail" else ["produce", "-n", "1"]
    errors, everything, rc, took = _cli(oauth, "nobody", *args)
    assert rc != 0 and took < 15, (took, everything)
    assert errors.count("\n") == 0 and "authoriz" in errors.lower(), everything
    assert topic in errors, errors
    verb = "read" if command == "tail" else "write to"  # naming User:<sub> of its token
    assert f"User:{_sub('nobody')} may not {verb} {topic}" in errors, errors
    assert _secret("nobody") not in everything
    print(errors)  # the message, for -s


def test_a_subject_without_acls_in_process(oauth: dict[str, Any]) -> None:
    cfg = _as(oauth, "nobody")
    topic = cfg.topics.input
    t0 = time.monotonic()
    with (
        pytest.raises(StreamprocError) as caught,
        RecordConsumer(cfg.kafka, cfg.registry, topic) as c,
    ):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            c.poll_batch(10, 0.5)
    assert time.monotonic() - t0 < 15
    assert f"User:{_sub('nobody')} may not read {topic}" in str(caught.value)


def test_a_subject_that_may_write_nothing_is_refused_in_one_line(oauth: dict[str, Any]) -> None:
    """Describe on the topic and no Write anywhere: the topic's metadata comes, the
    idempotent producer's PID does not (Cluster authorization failed), which the client
    takes as fatal; the flush says who may not write where, not a bare exception."""
    admin: PipelineConfig = oauth["admin"]
    topic = admin.topics.input
    describe = aclplan.AclEntry("TOPIC", topic, "LITERAL", "DESCRIBE", f"User:{_sub('describer')}")
    create_acls(admin.kafka, [describe])
    cfg = _as(oauth, "describer")
    t0 = time.monotonic()
    record = synth.generate(1, seed=3)[0][0]
    with (
        pytest.raises(StreamprocError) as caught,
        EventProducer(cfg.kafka, cfg.registry, topic) as events,
    ):
        events.send(record)
    assert time.monotonic() - t0 < 15
    text = str(caught.value)
    assert f"User:{_sub('describer')} may not write to {topic}" in text, text
    assert "authorization failed" in text.lower() and "\n" not in text, text
    print(text)  # the message, for -s


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("expired", "expired at"),
        ("forged", "the broker refused its token"),
        ("elsewhere", "the broker refused its token"),
    ],
)
def test_a_bad_token_stops_the_process_with_one_line(
    oauth: dict[str, Any], name: str, why: str
) -> None:
    topic = oauth["admin"].topics.input
    errors, everything, rc, took = _cli(oauth, name, "tail", topic, "-n", "1")
    assert rc != 0 and took < 15, (took, everything)
    assert errors.count("\n") == 0, errors  # one line
    who = f"User:{_sub(name)} (OAuth client {name}-{RUN}, SASL OAUTHBEARER)"
    assert f"authentication failed for {who}" in errors, errors
    assert why in errors, errors
    fix = "token lifetime" if name == "expired" else "sasl.oauthbearer.jwks.endpoint.url"
    assert fix in errors, errors
    assert _secret(name) not in everything
    print(errors)  # the message, for -s
