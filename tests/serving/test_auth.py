"""API keys, tenants and token buckets: an injected clock, no sleeping."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from streamproc.config import ServingTenant
from streamproc.errors import ConfigError
from streamproc.serving.auth import Authenticator, TokenBucket, Unauthorized


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_bucket_grants_the_burst_then_the_rate():
    clock = Clock()
    b = TokenBucket(rate_per_s=10.0, burst=5, clock=clock)
    assert [b.take() for _ in range(5)] == [0.0] * 5
    assert b.take() == pytest.approx(0.1)  # empty: one token every 0.1 s
    clock.t += 0.25  # 2.5 tokens
    assert [b.take() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.05)]
    clock.t += 60  # a long pause saves up no more than the burst
    assert sum(b.take() == 0.0 for _ in range(10)) == 5


def test_refused_takes_nothing():
    clock = Clock()
    b = TokenBucket(rate_per_s=1.0, burst=1, clock=clock)
    assert b.take() == 0.0
    assert b.take() == pytest.approx(1.0)
    clock.t += 0.5
    assert b.take() == pytest.approx(0.5)  # the refusal at 0 s spent nothing
    clock.t += 0.5
    assert b.take() == 0.0


def test_keys_from_env_file_and_value(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    tenants = [
        ServingTenant(name="a", key_env="A_KEY", rate_per_s=2),
        ServingTenant(name="b", key_file=key_file),
        ServingTenant(name="c", key=SecretStr("inline")),
    ]
    auth = Authenticator.from_settings(tenants, env={"A_KEY": "from-env"}, clock=Clock())
    assert auth.required
    assert auth.authenticate("Bearer from-env", None).name == "a"
    assert auth.authenticate("bearer from-file", None).name == "b"
    assert auth.authenticate(None, "inline").name == "c"
    for header, key in (("Bearer nope", None), (None, None), ("Basic from-env", None)):
        with pytest.raises(Unauthorized):
            auth.authenticate(header, key)
    a = auth.authenticate(None, "from-env")
    assert [a.admit(), a.admit(), a.admit()] == [0.0, 0.0, pytest.approx(0.5)]
    assert auth.authenticate(None, "inline").admit() == 0.0  # no rate: never limited


def test_no_tenants_means_anonymous_and_unlimited():
    auth = Authenticator.from_settings([], env={})
    assert not auth.required
    assert auth.authenticate(None, None).name == "anonymous"


def test_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"\$MISSING is not set"):
        Authenticator.from_settings([ServingTenant(name="a", key_env="MISSING")], env={})
    with pytest.raises(ConfigError, match="cannot read"):
        Authenticator.from_settings([ServingTenant(name="a", key_file=tmp_path / "no")], env={})
    same = [ServingTenant(name=n, key=SecretStr("k")) for n in ("a", "b")]
    with pytest.raises(ConfigError, match="share a key"):
        Authenticator.from_settings(same, env={})
    with pytest.raises(ValidationError, match="exactly one of"):
        ServingTenant(name="a", key=SecretStr("k"), key_env="K")
    with pytest.raises(ValidationError, match="exactly one of"):
        ServingTenant(name="a")
