from __future__ import annotations

from typing import Any

import pytest

from streamproc.codecs.kernel_cache import Specialiser
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


Mode = dict[str, Any]  # BatchDecoder keyword arguments choosing a decoding path


@pytest.fixture(scope="session")
def specialiser(tmp_path_factory: pytest.TempPathFactory) -> Specialiser:
    """One synchronous specialiser for the session; its disk cache starts empty, so every
    kernel the tests use is generated and compiled here."""
    return Specialiser(cache_dir=tmp_path_factory.mktemp("kernels"))


@pytest.fixture(params=["reference", "compiled", "specialised"])
def mode(request: pytest.FixtureRequest, specialiser: Specialiser) -> Mode:
    """Every decoder contract test runs on the three paths: fastavro, the interpreter and
    the program's specialised kernel."""
    return {
        "reference": {"compiled": False},
        "compiled": {"compiled": True},
        "specialised": {"compiled": True, "specialiser": specialiser},
    }[str(request.param)]
