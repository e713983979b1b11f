from __future__ import annotations

import json

import pytest

from streamproc.codecs.source import DictSchemaSource, SchemaSource
from streamproc.errors import RegistryUnavailableError

S = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}


def test_dict_source_is_a_schema_source():
    assert isinstance(DictSchemaSource(), SchemaSource)


def test_lookup_known_unknown_and_json_text():
    src = DictSchemaSource({1: S, 2: json.dumps(S)})
    assert src.schema(1) == S and src.schema(2) == S
    assert src.schema(3) is None
    assert src.lookups == 3


def test_returns_copies():
    src = DictSchemaSource({1: S})
    got = src.schema(1)
    assert got is not None
    got["name"] = "X"
    assert src.schema(1) == S


def test_outage():
    src = DictSchemaSource({1: S})
    src.unavailable = True
    with pytest.raises(RegistryUnavailableError):
        src.schema(1)
