from __future__ import annotations

from typing import Any

import pytest

from streamproc.codecs.source import DictSchemaSource
from streamproc.models.spec import ModelSpec
from tests.codecs.builders import fraud_spec, transaction_schema

TXN_ID = 1


@pytest.fixture
def txn_schema() -> dict[str, Any]:
    return transaction_schema()


@pytest.fixture
def spec() -> ModelSpec:
    return fraud_spec()


@pytest.fixture
def source(txn_schema: dict[str, Any]) -> DictSchemaSource:
    return DictSchemaSource({TXN_ID: txn_schema})


@pytest.fixture(params=[False, True], ids=["reference", "compiled"])
def compiled(request: pytest.FixtureRequest) -> bool:
    """Every decoder contract test runs on both paths."""
    return bool(request.param)
