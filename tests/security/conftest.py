"""One secure local stack (SASL_SSL with SCRAM, ACLs on) for the whole security suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streamproc.local.stack import LocalStack, StackInfo


@pytest.fixture(scope="session")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StackInfo, Path]]:
    """The stack's info and its home (the client properties file lives there)."""
    home = tmp_path_factory.mktemp("secure-home")
    stack = LocalStack(home=home / "stack")
    info = stack.up(secure=True)
    try:
        yield info, home
    finally:
        stack.down()
