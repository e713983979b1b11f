"""The one explicit map from streamproc's settings to librdkafka property names.

>>> from streamproc.config import KafkaSettings
>>> conf = consumer_config(KafkaSettings(bootstrap="b:9092"), group_id="g", eos=True)
>>> conf["bootstrap.servers"], conf["isolation.level"], conf["enable.auto.commit"]
('b:9092', 'read_committed', False)

A replica's instance id names it as a static member of the group; under the consumer
protocol (KIP-848) the broker, not the client, sets the session and heartbeat:

>>> conf = consumer_config(KafkaSettings(), "g", False, instance_id="r1")
>>> conf["group.instance.id"], conf["session.timeout.ms"], conf["heartbeat.interval.ms"]
('r1', 2000, 500)
>>> conf = consumer_config(KafkaSettings(group_protocol="consumer"), "g", False, "r1")
>>> conf["group.protocol"], "session.timeout.ms" in conf, "partition.assignment.strategy" in conf
('consumer', False, False)
>>> "group.instance.id" in consumer_config(KafkaSettings(static_membership=False), "g", False, "r1")
False
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr

from streamproc.config import KafkaSettings, RegistrySettings
from streamproc.errors import ConfigError, KafkaError

# KafkaSettings field -> librdkafka property: the one map, both ways (``client_config``
# writes it, ``read_properties`` reads a properties file with it).
_SECURITY_PROPERTIES = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_username": "sasl.username",
    "sasl_password": "sasl.password",
    "ssl_ca_location": "ssl.ca.location",
    "ssl_certificate_location": "ssl.certificate.location",
    "ssl_key_location": "ssl.key.location",
    "ssl_key_password": "ssl.key.password",
    "sasl_oauthbearer_method": "sasl.oauthbearer.method",
    "sasl_oauthbearer_client_id": "sasl.oauthbearer.client.id",
    "sasl_oauthbearer_client_secret": "sasl.oauthbearer.client.secret",
    "sasl_oauthbearer_token_endpoint_url": "sasl.oauthbearer.token.endpoint.url",
    "sasl_oauthbearer_scope": "sasl.oauthbearer.scope",
    "sasl_oauthbearer_config": "sasl.oauthbearer.config",
}
# Spellings a properties file may use for the same settings (librdkafka's aliases).
_ALIASES = {"sasl.mechanisms": "sasl_mechanism", "bootstrap.servers": "bootstrap",
            "metadata.broker.list": "bootstrap", "client.id": "client_id"}  # fmt: skip

Connection = KafkaSettings | str
"""What every client takes: the pipeline's :class:`KafkaSettings` (the connection
profile), or a bare bootstrap address (a PLAINTEXT cluster)."""


def kafka_settings(conn: Connection) -> KafkaSettings:
    """``conn`` as settings: a bootstrap string becomes PLAINTEXT settings with it.

    >>> kafka_settings("b:1").bootstrap, kafka_settings(KafkaSettings(bootstrap="c:2")).bootstrap
    ('b:1', 'c:2')
    """
    return KafkaSettings(bootstrap=conn) if isinstance(conn, str) else conn


def client_config(conn: Connection) -> dict[str, Any]:
    """The connection profile of every Kafka client the project makes: the bootstrap
    address, the client id, security (SASL, TLS) and ``extra``.

    >>> from pydantic import SecretStr
    >>> k = KafkaSettings(bootstrap="b:9093", security_protocol="SASL_SSL",
    ...     sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password=SecretStr("pw"),
    ...     ssl_ca_location="/ca.pem", ssl_endpoint_identification=False)
    >>> conf = client_config(k)
    >>> conf["security.protocol"], conf["sasl.mechanism"], conf["sasl.password"]
    ('SASL_SSL', 'SCRAM-SHA-512', 'pw')
    >>> conf["ssl.ca.location"], conf["ssl.endpoint.identification.algorithm"]
    ('/ca.pem', 'none')
    >>> client_config("b:9092")
    {'bootstrap.servers': 'b:9092', 'client.id': 'streamproc', 'security.protocol': 'PLAINTEXT'}
    """
    k = kafka_settings(conn)
    conf: dict[str, Any] = {"bootstrap.servers": k.bootstrap, "client.id": k.client_id}
    for field, prop in _SECURITY_PROPERTIES.items():
        value = getattr(k, field)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        conf[prop] = str(value)
    if k.security_protocol in ("SSL", "SASL_SSL"):
        conf["ssl.endpoint.identification.algorithm"] = (
            "https" if k.ssl_endpoint_identification else "none"
        )
    if k.sasl_oauthbearer_method != "oidc" and k.sasl_oauthbearer_config:
        conf["enable.sasl.oauthbearer.unsecure.jwt"] = True  # librdkafka's own test tokens
    conf.update(k.extra)
    return conf


def common_config(k: KafkaSettings) -> dict[str, Any]:
    """:func:`client_config` (kept for the callers that know it by this name)."""
    return client_config(k)


def read_properties(path: Path) -> dict[str, Any]:
    r"""A librdkafka-style properties file (``key=value`` lines, ``#`` comments: the format
    ``kcat -F`` reads) as the ``kafka`` section of a pipeline: the settings
    :class:`KafkaSettings` names, and every other property in ``extra``.

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "client.properties"
    >>> _ = f.write_text("# x\nsecurity.protocol=SASL_SSL\nsasl.mechanisms = SCRAM-SHA-512\n"
    ...                  "ssl.endpoint.identification.algorithm=none\nsocket.timeout.ms=5000\n")
    >>> read_properties(f)  # doctest: +NORMALIZE_WHITESPACE
    {'security_protocol': 'SASL_SSL', 'sasl_mechanism': 'SCRAM-SHA-512',
     'ssl_endpoint_identification': False, 'extra': {'socket.timeout.ms': '5000'}}
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the Kafka properties file {path}: {exc}") from exc
    by_prop = {prop: field for field, prop in _SECURITY_PROPERTIES.items()} | _ALIASES
    out: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{n}: expected key=value")  # the line may hold a secret
        key, value = key.strip(), value.strip()
        if key.startswith(REGISTRY_PREFIX):
            continue  # the registry's (read_registry_properties), not librdkafka's
        if key == "ssl.endpoint.identification.algorithm":
            out["ssl_endpoint_identification"] = value.lower() not in ("", "none")
        elif key in by_prop:
            out[by_prop[key]] = value
        else:
            extra[key] = value
    if extra:
        out["extra"] = extra
    return out


REGISTRY_PREFIX = "schema.registry."


def read_registry_properties(path: Path) -> dict[str, Any]:
    r"""The ``schema.registry.*`` lines of a properties file (as Confluent's clients name
    them) as the ``registry`` section of a pipeline.

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "client.properties"
    >>> _ = f.write_text("security.protocol=SSL\nschema.registry.url=https://r:1/apis\n"
    ...     "schema.registry.basic.auth.credentials.source=USER_INFO\n"
    ...     "schema.registry.basic.auth.user.info=u:p:w\nschema.registry.ssl.ca.location=/ca\n")
    >>> read_registry_properties(f)
    {'url': 'https://r:1/apis', 'username': 'u', 'password': 'p:w', 'ssl_ca_location': '/ca'}
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the Kafka properties file {path}: {exc}") from exc
    out: dict[str, Any] = {}
    for raw in lines:
        key, sep, value = raw.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.startswith(REGISTRY_PREFIX):
            continue
        name = key.removeprefix(REGISTRY_PREFIX)
        if name == "url":
            out["url"] = value
        elif name == "basic.auth.user.info":
            user, _, password = value.partition(":")
            out["username"], out["password"] = user, password
        elif name == "ssl.ca.location":
            out["ssl_ca_location"] = value
        elif name != "basic.auth.credentials.source":
            raise ConfigError(f"{path}: {key} is not a registry setting streamproc knows "
                              "(url, basic.auth.user.info, ssl.ca.location)")  # fmt: skip
    return out


def aiokafka_config(conn: Connection) -> dict[str, Any]:
    """The same profile as :func:`client_config`, in aiokafka's keyword arguments."""
    import ssl

    k = kafka_settings(conn)
    conf: dict[str, Any] = {"bootstrap_servers": k.bootstrap, "client_id": k.client_id,
                            "security_protocol": k.security_protocol}  # fmt: skip
    if k.security_protocol in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(
            cafile=str(k.ssl_ca_location) if k.ssl_ca_location else None
        )
        ctx.check_hostname = k.ssl_endpoint_identification
        if k.ssl_certificate_location:
            ctx.load_cert_chain(
                str(k.ssl_certificate_location),
                str(k.ssl_key_location) if k.ssl_key_location else None,
                k.ssl_key_password.get_secret_value() if k.ssl_key_password else None,
            )
        conf["ssl_context"] = ctx
    if k.sasl_mechanism == "OAUTHBEARER":
        conf["sasl_mechanism"] = k.sasl_mechanism
        conf["sasl_oauth_token_provider"] = _token_provider(k)
    elif k.sasl_mechanism:
        conf["sasl_mechanism"] = k.sasl_mechanism
        conf["sasl_plain_username"] = k.sasl_username
        if k.sasl_password is not None:
            conf["sasl_plain_password"] = k.sasl_password.get_secret_value()
    return conf


def fetch_token(k: KafkaSettings, timeout_s: float = 10.0) -> tuple[str, float]:
    """An OAUTHBEARER token and when it expires (epoch seconds), as librdkafka gets them:
    ``oidc``, the client credentials grant at the token endpoint; else an unsecured token
    (``alg: none``) for the ``principal=`` of ``sasl_oauthbearer_config``, which only a
    broker with Kafka's unsecured validator accepts.

    >>> token, exp = fetch_token(KafkaSettings(sasl_mechanism="OAUTHBEARER",
    ...     sasl_oauthbearer_config="principal=alice lifeSeconds=60"))
    >>> import base64, json
    >>> json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["sub"], token[-1]
    ('alice', '.')
    """
    import base64
    import json
    import time

    if k.sasl_oauthbearer_method != "oidc":
        opts = dict(kv.partition("=")[::2] for kv in (k.sasl_oauthbearer_config or "").split())
        if not opts.get("principal"):
            raise ConfigError("OAUTHBEARER without sasl_oauthbearer_method oidc needs "
                              "sasl_oauthbearer_config 'principal=NAME'")  # fmt: skip
        now = time.time()
        exp = now + float(opts.get("lifeSeconds", 3600))

        def b64(doc: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

        claims = {"sub": opts["principal"], "iat": int(now), "exp": int(exp)}
        return f"{b64({'alg': 'none'})}.{b64(claims)}.", exp
    import httpx

    url = k.sasl_oauthbearer_token_endpoint_url or ""
    secret = k.sasl_oauthbearer_client_secret
    form = {"grant_type": "client_credentials"}
    if k.sasl_oauthbearer_scope:
        form["scope"] = k.sasl_oauthbearer_scope
    who = f"client {k.sasl_oauthbearer_client_id}"
    try:
        r = httpx.post(url, data=form, timeout=timeout_s,
                       auth=(k.sasl_oauthbearer_client_id or "",
                             secret.get_secret_value() if secret else ""))  # fmt: skip
    except httpx.HTTPError as exc:
        raise KafkaError(f"OAUTHBEARER token endpoint {url} unreachable for {who}: "
                         f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
    if r.status_code != 200:
        raise KafkaError(f"OAUTHBEARER token endpoint {url} refused {who} (HTTP "
                         f"{r.status_code}); check sasl.oauthbearer.client.id and "
                         "sasl.oauthbearer.client.secret (--kafka-config)")  # fmt: skip
    doc = r.json()
    return str(doc["access_token"]), time.time() + float(doc.get("expires_in", 300))


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, read without checking its signature: for naming the principal
    and the expiry in an error message, never for trusting it; {} if it is not a JWT.

    >>> token, _ = fetch_token(KafkaSettings(sasl_mechanism="OAUTHBEARER",
    ...     sasl_oauthbearer_config="principal=alice"))
    >>> token_claims(token)["sub"], token_claims("opaque")
    ('alice', {})
    """
    import base64
    import binascii
    import json

    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        doc = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def principal(k: KafkaSettings) -> str | None:
    """The principal the broker's ACLs name for this profile: ``User:<sasl.username>``
    (PLAIN, SCRAM); under OAUTHBEARER ``User:<sub>`` of a token from the profile's token
    endpoint (asked once; None when it gives none); None without SASL.

    >>> principal(KafkaSettings(sasl_mechanism="SCRAM-SHA-512", sasl_username="u"))
    'User:u'
    >>> principal(KafkaSettings(sasl_mechanism="OAUTHBEARER",
    ...     sasl_oauthbearer_config="principal=alice"))
    'User:alice'
    """
    from streamproc.errors import StreamprocError

    if k.sasl_mechanism == "OAUTHBEARER":
        try:
            token, _ = fetch_token(k, timeout_s=5.0)
        except StreamprocError:
            return None
        sub = token_claims(token).get("sub")
        return f"User:{sub}" if sub else None
    return f"User:{k.sasl_username}" if k.sasl_mechanism and k.sasl_username else None


def oauth_failure(k: KafkaSettings, reason: str) -> str:
    """One line for a refused OAUTHBEARER login (librdkafka's ``reason``): the principal
    (``User:<sub>`` of a fresh token from the same endpoint), what is wrong with the token
    and the fix; the token endpoint's own refusal as it is."""
    import datetime as dt
    import time

    from streamproc.errors import StreamprocError

    client = f"OAuth client {k.sasl_oauthbearer_client_id or '?'}"
    at = f"SASL OAUTHBEARER) at {k.bootstrap}"
    fix = "check the token endpoint and sasl.oauthbearer.client.id/secret (--kafka-config)"
    try:
        token, _ = fetch_token(k, timeout_s=5.0)
    except KafkaError as exc:  # the endpoint refused the client, or is unreachable
        return f"Kafka authentication failed for {client} ({at}: {exc}"
    except StreamprocError:  # no way to get a token here (a token callback of the caller's)
        return f"Kafka authentication failed for {client} ({at}: {reason}; {fix}"
    claims = token_claims(token)
    sub = claims.get("sub")
    who = f"User:{sub} ({client}," if sub else f"{client} ("
    url = k.sasl_oauthbearer_token_endpoint_url or "sasl_oauthbearer_config"
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp <= time.time():
        when = dt.datetime.fromtimestamp(exp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f"Kafka authentication failed for {who} {at}: the token from {url} expired "
                f"at {when} ({time.time() - exp:.0f}s ago) when it was issued; fix the token "
                "endpoint's token lifetime or clock (an expired token is never sent)")  # fmt: skip
    return (f"Kafka authentication failed for {who} {at}: the broker refused its token "
            f"({reason}); check that the broker trusts the issuer of {url} (its "
            "sasl.oauthbearer.jwks.endpoint.url, expected audience and issuer) and that "
            "sasl.oauthbearer.client.id/secret and scope are the ones it expects")  # fmt: skip


def _token_provider(k: KafkaSettings) -> Any:
    """aiokafka's OAUTHBEARER token provider: :func:`fetch_token`, renewed before expiry."""
    import asyncio
    import time

    from aiokafka.abc import AbstractTokenProvider

    class Tokens(AbstractTokenProvider):  # type: ignore[misc]
        def __init__(self) -> None:
            self._token = ""
            self._expires = 0.0

        async def token(self) -> str:
            if time.time() > self._expires - 30:
                self._token, self._expires = await asyncio.to_thread(fetch_token, k)
            return self._token

    return Tokens()


def consumer_config(
    k: KafkaSettings, group_id: str, eos: bool, instance_id: str | None = None
) -> dict[str, Any]:
    conf = {
        **common_config(k),
        "group.id": group_id,
        "enable.auto.commit": False,  # offsets are committed by the commit protocol only
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # exactly-once reads only committed transactions of upstream producers
        "isolation.level": "read_committed" if eos else "read_uncommitted",
        "fetch.wait.max.ms": 5,  # the batcher's own deadline governs latency
        "queued.min.messages": 20_000,
        # Once the local queue holds queued.min.messages, librdkafka postpones the next
        # fetch by this much (default 1000 ms): at the default a drained backlog stalls for
        # up to a second between fetches (figures: benchmarks/README.md).
        "fetch.queue.backoff.ms": 10,
    }
    if k.group_protocol == "classic":
        conf["partition.assignment.strategy"] = "range"
        # A replica killed without leaving is noticed after the session timeout.
        conf["session.timeout.ms"] = k.session_timeout_ms
        conf["heartbeat.interval.ms"] = k.heartbeat_interval_ms
    else:  # KIP-848: the broker assigns and sets the session; the client rejects these
        conf["group.protocol"] = "consumer"
    if instance_id and k.static_membership:
        conf["group.instance.id"] = instance_id
    conf.update(k.extra)
    return conf


def producer_config(k: KafkaSettings, transactional_id: str | None = None) -> dict[str, Any]:
    conf = {
        **common_config(k),
        "enable.idempotence": True,  # no duplicates from producer retries
        "acks": "all",
        "linger.ms": 2,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
    }
    if transactional_id:
        conf["transactional.id"] = transactional_id
        conf["transaction.timeout.ms"] = 60_000
    conf.update(k.extra)
    return conf


def registry_config(r: RegistrySettings | str) -> dict[str, Any]:
    """The schema registry client's configuration. ``timeout`` bounds one HTTP request; a
    lookup of a writer schema is one request (Registry sets ``max.retries`` 0 for it), and
    the runner retries with backoff between ``retry_initial_ms`` and ``retry_max_ms``.
    A bare URL stands for default settings with it."""
    if isinstance(r, str):
        r = RegistrySettings(url=r)
    conf: dict[str, Any] = {"url": r.url, "timeout": r.request_timeout_s}
    if r.username and r.password is not None:
        conf["basic.auth.user.info"] = f"{r.username}:{r.password.get_secret_value()}"
    if r.ssl_ca_location is not None:
        conf["ssl.ca.location"] = str(r.ssl_ca_location)
    return conf
