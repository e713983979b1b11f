"""API keys (or bearer tokens) mapped to tenants, and each tenant's token-bucket rate limit.

The bucket reads an injected clock and never sleeps:

>>> now = [0.0]
>>> b = TokenBucket(rate_per_s=2.0, burst=2, clock=lambda: now[0])
>>> b.take(), b.take(), b.take()     # the burst, then 0.5 s until the next token
(0.0, 0.0, 0.5)
>>> now[0] = 0.5
>>> b.take(), b.take()
(0.0, 0.5)
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from streamproc.config import ServingTenant
from streamproc.errors import ConfigError


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up; one request takes one."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def take(self, n: float = 1.0) -> float:
        """Take ``n`` tokens: 0.0 when granted, else the seconds until they would be (and
        nothing is taken)."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= n:
                self._tokens -= n
                return 0.0
            return (n - self._tokens) / self.rate


@dataclass
class Tenant:
    name: str
    bucket: TokenBucket | None = None  # None: no rate limit

    def admit(self) -> float:
        """0.0 when the request may go on, else the seconds to wait (a 429's Retry-After)."""
        return 0.0 if self.bucket is None else self.bucket.take()


ANONYMOUS = "anonymous"


class Unauthorized(Exception):
    """No credentials, or credentials no tenant holds."""


def read_key(t: ServingTenant, env: Mapping[str, str]) -> str:
    """The tenant's key from the file's value, its environment variable or its file."""
    if t.key is not None:
        value = t.key.get_secret_value()
    elif t.key_env is not None:
        value = env.get(t.key_env, "")
        if not value:
            raise ConfigError(f"serving tenant {t.name!r}: ${t.key_env} is not set")
    else:
        assert t.key_file is not None
        try:
            value = t.key_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"serving tenant {t.name!r}: cannot read {t.key_file}: {exc}"
            ) from exc
    if not value:
        raise ConfigError(f"serving tenant {t.name!r}: the key is empty")
    return value


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass
class Authenticator:
    """Who a request is, from ``Authorization: Bearer <token>`` or ``X-API-Key: <key>``.

    With no tenants configured every request is the unlimited ``anonymous`` tenant. Keys
    are held as SHA-256 digests and compared in constant time.

    >>> from pydantic import SecretStr
    >>> auth = Authenticator.from_settings(
    ...     [ServingTenant(name="shop", key=SecretStr("s3cret"), rate_per_s=10)], env={})
    >>> auth.authenticate("Bearer s3cret", None).name, auth.authenticate(None, "s3cret").name
    ('shop', 'shop')
    >>> auth.authenticate("Bearer wrong", None)
    Traceback (most recent call last):
    ...
    streamproc.serving.auth.Unauthorized: unknown API key
    """

    tenants: list[tuple[bytes, Tenant]] = field(default_factory=list)
    anonymous: Tenant | None = None

    @classmethod
    def from_settings(
        cls,
        tenants: list[ServingTenant],
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Authenticator:
        env = os.environ if env is None else env
        if not tenants:
            return cls([], Tenant(ANONYMOUS))
        out: list[tuple[bytes, Tenant]] = []
        for t in tenants:
            bucket = None
            if t.rate_per_s is not None:
                burst = t.burst or max(1, math.ceil(t.rate_per_s))
                bucket = TokenBucket(t.rate_per_s, burst, clock)
            out.append((_digest(read_key(t, env)), Tenant(t.name, bucket)))
        if len({d for d, _ in out}) != len(out):
            raise ConfigError("serving tenants: two tenants share a key")
        return cls(out)

    @property
    def required(self) -> bool:
        return self.anonymous is None

    def authenticate(self, authorization: str | None, api_key: str | None) -> Tenant:
        if self.anonymous is not None:
            return self.anonymous
        key = api_key
        if key is None and authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer":
                key = token.strip()
        if not key:
            raise Unauthorized("no API key (Authorization: Bearer <key>, or X-API-Key)")
        d = _digest(key)
        found = None
        for digest, tenant in self.tenants:  # every digest is compared: no early exit
            if hmac.compare_digest(digest, d):
                found = tenant
        if found is None:
            raise Unauthorized("unknown API key")
        return found
