"""One secure local stack (SASL_SSL with SCRAM, ACLs on) for the whole security suite; its
listener takes OAUTHBEARER tokens from a local OpenID Connect issuer as well."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streamproc.local.broker import OAuthValidation
from streamproc.local.stack import LocalStack, StackInfo
from tests.security.oidc import AUDIENCE, Issuer


@pytest.fixture(scope="session")
def oidc_issuer() -> Iterator[Issuer]:
    """The issuer whose tokens the secure stack's broker accepts (it serves the JWKS)."""
    issuer = Issuer().start()
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture(scope="session")
def secure_stack(
    tmp_path_factory: pytest.TempPathFactory, oidc_issuer: Issuer
) -> Iterator[tuple[StackInfo, Path]]:
    """The stack's info and its home (the client properties file lives there)."""
    home = tmp_path_factory.mktemp("secure-home")
    stack = LocalStack(home=home / "stack")
    oauth = OAuthValidation(oidc_issuer.jwks_url, audience=AUDIENCE, issuer=oidc_issuer.base)
    info = stack.up(secure=True, oauth=oauth)
    try:
        yield info, home
    finally:
        stack.down()
