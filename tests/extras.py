"""Optional extras (torch, ...) in the tests: a skip with its reason, or a failure in CI.

A plain run on a machine without an extra skips the tests that need it and says why
(``-ra`` lists each reason). CI installs every extra it tests (``make test
EXTRAS=dev,torch``), so there a missing one is a broken install, not a reason to test
less: with ``CI=true`` or ``STREAMPROC_REQUIRE_EXTRAS=1`` the same tests fail instead.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

from streamproc.backends.select import missing

REQUIRE_ENV = "STREAMPROC_REQUIRE_EXTRAS"


def extras_required() -> bool:
    """True where a missing extra must fail the run (CI, or asked for explicitly)."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(REQUIRE_ENV) == "1"


def absent(module: str, extra: str) -> None:
    """Skip (or, where extras are required, fail) the running test because ``module`` is absent."""
    reason = missing(module, extra)
    if reason is None:
        return
    if extras_required():
        pytest.fail(f"{reason} (CI=true / {REQUIRE_ENV}=1: every extra must be installed)")
    pytest.skip(reason)


def import_extra(module: str, extra: str) -> ModuleType:
    """Import ``module`` for a test module, or skip / fail the whole module with the reason."""
    reason = missing(module, extra)
    if reason is not None:
        if extras_required():
            pytest.fail(
                f"{reason} (CI=true / {REQUIRE_ENV}=1: every extra must be installed)",
                pytrace=False,
            )
        pytest.skip(reason, allow_module_level=True)
    return importlib.import_module(module)


def requires_extra(module: str, extra: str) -> pytest.MarkDecorator:
    """Mark a test (or a parametrized case) as needing ``module`` from ``streamproc[extra]``."""
    return pytest.mark.requires_extra(module, extra)
