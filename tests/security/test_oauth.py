"""OAUTHBEARER in the connection profile: the OIDC client credentials settings mapped to
librdkafka (which takes them as they are) and to aiokafka (a token provider), from the
pipeline, a properties file or the environment; the client secret never shown."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from confluent_kafka import Producer
from pydantic import SecretStr, ValidationError

from streamproc.cli.resolve import resolve_pipeline
from streamproc.config import KafkaSettings
from streamproc.errors import KafkaError
from streamproc.kafka.configuration import aiokafka_config, client_config, fetch_token

SECRET = "s3cret-value"


@pytest.fixture
def token_endpoint() -> Iterator[str]:
    """A token endpoint that grants client credentials for client ``svc`` only."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            auth = base64.b64decode(self.headers.get("Authorization", "x x").split()[1] or b"")
            ok = auth == f"svc:{SECRET}".encode() and body["grant_type"] == ["client_credentials"]
            doc = {"access_token": f"tok-{body.get('scope', [''])[0]}", "expires_in": 60}
            payload = json.dumps(doc if ok else {"error": "invalid_client"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/token"
    finally:
        server.shutdown()


def _oidc(url: str, secret: str = SECRET) -> KafkaSettings:
    return KafkaSettings(bootstrap="127.0.0.1:1", security_protocol="SASL_SSL",
                         sasl_mechanism="OAUTHBEARER", sasl_oauthbearer_method="oidc",
                         sasl_oauthbearer_client_id="svc",
                         sasl_oauthbearer_client_secret=SecretStr(secret),
                         sasl_oauthbearer_token_endpoint_url=url,
                         sasl_oauthbearer_scope="kafka")  # fmt: skip


def test_the_librdkafka_map_and_librdkafka_takes_it() -> None:
    conf = client_config(_oidc("https://idp.example.com/token"))
    assert {k: v for k, v in conf.items() if k.startswith("sasl.")} == {
        "sasl.mechanism": "OAUTHBEARER",
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.client.id": "svc",
        "sasl.oauthbearer.client.secret": SECRET,
        "sasl.oauthbearer.token.endpoint.url": "https://idp.example.com/token",
        "sasl.oauthbearer.scope": "kafka",
    }
    Producer(conf).flush(0)  # an unknown or misspelt property fails here


def test_oidc_needs_the_client_and_the_endpoint() -> None:
    with pytest.raises(ValidationError, match="needs sasl_oauthbearer_client_secret"):
        KafkaSettings(sasl_mechanism="OAUTHBEARER", sasl_oauthbearer_method="oidc",
                      sasl_oauthbearer_client_id="svc",
                      sasl_oauthbearer_token_endpoint_url="https://x/token")  # fmt: skip


def test_from_a_properties_file_and_the_environment_never_shown(tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text("bootstrap.servers=b:9093\nsecurity.protocol=SASL_SSL\n"
                     "sasl.mechanism=OAUTHBEARER\nsasl.oauthbearer.method=oidc\n"
                     "sasl.oauthbearer.client.id=svc\n"
                     "sasl.oauthbearer.token.endpoint.url=https://idp/token\n")  # fmt: skip
    env = {"STREAMPROC_KAFKA_OAUTH_CLIENT_SECRET": SECRET, "STREAMPROC_SCHEMA_REGISTRY_URL": "x"}
    resolved = resolve_pipeline(None, kafka_config=props, env=env, stack=lambda: None)
    k = resolved.config.kafka
    assert k.sasl_oauthbearer_method == "oidc" and k.sasl_oauthbearer_client_id == "svc"
    assert client_config(k)["sasl.oauthbearer.client.secret"] == SECRET
    assert resolved.sources["kafka.sasl_oauthbearer_client_secret"] == (
        "env STREAMPROC_KAFKA_OAUTH_CLIENT_SECRET")  # fmt: skip
    shown = dict((key, value) for key, value, _ in resolved.settings())
    assert shown["kafka.sasl_oauthbearer_client_secret"] == "**********"
    assert SECRET not in json.dumps(shown) and SECRET not in repr(k)


def test_the_token_endpoint_grants_and_refuses(token_endpoint: str) -> None:
    token, expires = fetch_token(_oidc(token_endpoint))
    assert token == "tok-kafka" and expires > 0
    with pytest.raises(KafkaError, match=r"refused client svc \(HTTP 401\); check sasl"):
        fetch_token(_oidc(token_endpoint, secret="wrong"))
    # aiokafka (the asyncio client, quotas) gets the same tokens from a provider
    provider = aiokafka_config(_oidc(token_endpoint))["sasl_oauth_token_provider"]
    assert asyncio.run(provider.token()) == "tok-kafka"


def test_unsecured_test_tokens_map_to_librdkafka_s_own() -> None:
    k = KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER",
                      sasl_oauthbearer_config="principal=alice")  # fmt: skip
    conf = client_config(k)
    assert conf["sasl.oauthbearer.config"] == "principal=alice"
    assert conf["enable.sasl.oauthbearer.unsecure.jwt"] is True
    Producer(conf).flush(0)


def test_an_expired_token_fails_clearly_within_seconds() -> None:
    """A token callback that has only an expired token: librdkafka will not use it, and the
    first client call fails naming the OAuth client and the fix, not a bare timeout."""
    import time

    from streamproc.kafka.admin import Admin

    def b64(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    def expired(_config: str) -> tuple[str, float]:
        now = time.time()
        claims = {"sub": "svc", "iat": int(now - 120), "exp": int(now - 60)}
        return f"{b64({'alg': 'none'})}.{b64(claims)}.", now - 60

    k = KafkaSettings(bootstrap="127.0.0.1:1", security_protocol="SASL_PLAINTEXT",
                      sasl_mechanism="OAUTHBEARER", sasl_oauthbearer_client_id="svc")  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(KafkaError) as caught:
        Admin(k, extra={"oauth_cb": expired}).list_topics(timeout_s=15)
    assert time.monotonic() - t0 < 15
    text = str(caught.value)
    assert text.startswith("Kafka authentication failed for OAuth client svc (SASL OAUTHBEARER)")
    assert "token" in text and "check the token endpoint" in text, text


def test_the_broker_s_oauthbearer_settings_check_signatures(tmp_path: Path) -> None:
    """What the secure broker's listener gets (test_oauth_broker.py checks it works): Kafka
    4.1's default validator, as its callback handler makes it, checks no signature; the
    JWKS settings count only without the mechanism's prefix."""
    from streamproc.local.broker import OAuthValidation, _secure_properties
    from streamproc.local.tls import ensure_broker_tls

    tls = ensure_broker_tls(tmp_path / "tls")
    assert "OAUTHBEARER" not in _secure_properties(tls)
    props = _secure_properties(tls, OAuthValidation("http://127.0.0.1:1/jwks", "kafka", "iss"))
    lines = dict(line.split("=", 1) for line in props.splitlines() if "=" in line)
    p = "listener.name.sasl_ssl."
    assert lines[f"{p}sasl.enabled.mechanisms"] == "SCRAM-SHA-512,OAUTHBEARER"
    assert lines[f"{p}sasl.oauthbearer.jwt.validator.class"].endswith(".BrokerJwtValidator")
    assert lines[f"{p}oauthbearer.sasl.server.callback.handler.class"].endswith(
        ".OAuthBearerValidatorCallbackHandler")  # fmt: skip
    assert lines[f"{p}sasl.oauthbearer.jwks.endpoint.url"] == "http://127.0.0.1:1/jwks"
    assert lines[f"{p}sasl.oauthbearer.expected.audience"] == "kafka"
    assert lines[f"{p}sasl.oauthbearer.expected.issuer"] == "iss"
    assert lines["allow.everyone.if.no.acl.found"] == "false"


# --- `streamproc local up --secure --oauth-jwks-url URL`, as typed --------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--oauth-jwks-url", "http://127.0.0.1:1/jwks"],
      "error: --oauth-jwks-url needs --secure (OAUTHBEARER is on the SASL_SSL listener)"),
     (["--secure", "--oauth-audience", "kafka"],
      "error: --oauth-audience needs --oauth-jwks-url (the tokens' checks go with the "
      "issuer's keys)"),
     (["--secure", "--oauth-issuer", "http://127.0.0.1:1"],
      "error: --oauth-issuer needs --oauth-jwks-url (the tokens' checks go with the "
      "issuer's keys)")],
)  # fmt: skip
def test_local_up_oauth_flags_without_what_they_need_are_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """Refused before anything starts: exit 2, one line, nothing under the stack's home."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "STREAMPROC_HOME": str(tmp_path / "home"), "COLUMNS": "2000"}
    res = subprocess.run([sys.executable, "-m", "streamproc", "local", "up", *args],
                         capture_output=True, text=True, timeout=60, env=env,
                         check=False)  # fmt: skip
    assert (res.returncode, res.stderr.strip(), res.stdout) == (2, message, "")
    assert not (tmp_path / "home").exists()


def test_local_up_oauth_flags_reach_the_broker_s_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`local up --secure --oauth-jwks-url U --oauth-audience A --oauth-issuer I` up to the
    broker's JVM (not started): the server.properties it would read has the SASL_SSL
    listener take OAUTHBEARER, checked by Kafka's BrokerJwtValidator against U for A and I,
    and the JVM is allowed to fetch U. (test_oauth_broker.py runs such a broker.)"""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from streamproc.cli import Deps, app
    from streamproc.local import broker

    class JvmStart(Exception):
        pass

    commands: list[list[str]] = []

    def run(cmd: list[str], **_: object) -> None:  # the storage format: the first JVM
        commands.append(cmd)
        raise JvmStart

    home = tmp_path / "home"
    monkeypatch.setenv("STREAMPROC_HOME", str(home))
    monkeypatch.setattr(broker, "broker_java", lambda env: "java")
    monkeypatch.setattr(broker, "java_major", lambda java: 21)
    monkeypatch.setattr(broker.artifacts, "kafka_libs", lambda: tmp_path / "libs")
    monkeypatch.setattr(broker, "subprocess", SimpleNamespace(run=run))
    jwks, issuer = "http://127.0.0.1:1/oidc/jwks", "http://127.0.0.1:1/oidc"
    res = CliRunner().invoke(app, ["local", "up", "--secure", "--oauth-jwks-url", jwks,
                                   "--oauth-audience", "kafka-test", "--oauth-issuer", issuer],
                             obj=Deps())  # fmt: skip
    assert isinstance(res.exception, JvmStart), res.output
    text = (home / "stack" / "kafka" / "server.properties").read_text()
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    p = "listener.name.sasl_ssl."
    pkg = "org.apache.kafka.common.security.oauthbearer."
    assert "SASL_SSL://127.0.0.1:" in props["listeners"]
    assert props[f"{p}sasl.enabled.mechanisms"] == "SCRAM-SHA-512,OAUTHBEARER"
    assert props[f"{p}sasl.oauthbearer.jwt.validator.class"] == f"{pkg}BrokerJwtValidator"
    assert props[f"{p}oauthbearer.sasl.server.callback.handler.class"] == (
        f"{pkg}OAuthBearerValidatorCallbackHandler")  # fmt: skip
    assert props[f"{p}sasl.oauthbearer.jwks.endpoint.url"] == jwks
    assert props[f"{p}sasl.oauthbearer.expected.audience"] == "kafka-test"
    assert props[f"{p}sasl.oauthbearer.expected.issuer"] == issuer
    assert props[f"{p}sasl.oauthbearer.sub.claim.name"] == "sub"
    (cmd,) = commands
    assert f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={jwks}" in cmd
