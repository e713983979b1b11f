from __future__ import annotations

from typing import Any

import pytest

from streamproc.codecs.resolve import branch_readable, incompatibility, project_reader
from streamproc.codecs.tree import build, has_zero_width_items, is_recursive, min_size


def rec(name: str, *fields: tuple[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "record",
        "name": name,
        **extra,
        "fields": [{"name": n, "type": t} for n, t in fields],
    }


def check(w: Any, r: Any) -> str | None:
    return incompatibility(build(w), build(r))


@pytest.mark.parametrize(
    "wt,rt,ok",
    [
        ("int", "long", True),
        ("int", "float", True),
        ("int", "double", True),
        ("long", "double", True),
        ("float", "double", True),
        ("string", "bytes", True),
        ("bytes", "string", True),
        ("long", "int", False),
        ("double", "float", False),
        ("string", "int", False),
        ("boolean", "int", False),
        (["null", "int"], "long", True),  # the null branch fails per event
        ("int", ["null", "long"], True),
        ("string", ["null", "long"], False),
        (["null", "string"], ["null", "long"], True),  # null still readable
        (["string", "bytes"], "long", False),
        ({"type": "array", "items": "int"}, {"type": "array", "items": "double"}, True),
        ({"type": "array", "items": "string"}, {"type": "array", "items": "int"}, False),
        ({"type": "map", "values": "int"}, {"type": "map", "values": "long"}, True),
        (
            {"type": "fixed", "name": "F", "size": 4},
            {"type": "fixed", "name": "F", "size": 4},
            True,
        ),
        (
            {"type": "fixed", "name": "F", "size": 4},
            {"type": "fixed", "name": "F", "size": 5},
            False,
        ),
        (
            {"type": "enum", "name": "E", "symbols": ["A", "B"]},
            {"type": "enum", "name": "E", "symbols": ["A"]},
            True,
        ),  # per event
        (
            {"type": "enum", "name": "E", "symbols": ["A"]},
            {"type": "enum", "name": "X", "symbols": ["A"], "aliases": ["E"]},
            True,
        ),
        (
            {"type": "enum", "name": "E", "symbols": ["A"]},
            {"type": "enum", "name": "X", "symbols": ["A"]},
            False,
        ),
    ],
)
def test_field_type_resolution(wt, rt, ok):
    assert (check(rec("R", ("a", wt)), rec("R", ("a", rt))) is None) == ok


def test_record_names_and_namespaces():
    assert check(rec("R", namespace="a"), rec("R", namespace="b")) is None
    assert check(rec("S"), rec("R")) is not None
    assert check(rec("S"), rec("R", aliases=["S"])) is None


def test_reader_defaults_and_field_aliases():
    r = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "a", "type": "int"},
            {"name": "b", "type": "int", "default": 0},
            {"name": "c", "type": "int", "aliases": ["old_c"]},
        ],
    }
    assert check(rec("R", ("a", "int"), ("old_c", "int")), r) is None
    why = check(rec("R", ("old_c", "int")), r)
    assert why is not None and "'a'" in why


def test_nested_reason_names_the_path():
    w = rec("R", ("n", rec("N", ("x", "string"))))
    r = rec("R", ("n", rec("N", ("x", "int"))))
    why = check(w, r)
    assert why is not None and "'n'" in why and "'x'" in why


def test_branch_readable():
    assert branch_readable(build("int"), build(["null", "long"]))
    assert not branch_readable(build("null"), build("long"))


def test_tree_helpers():
    linked = rec("L", ("v", "int"), ("next", ["null", "L"]))
    assert is_recursive(build(linked)) and not is_recursive(build(rec("R", ("a", "int"))))
    assert min_size(build(rec("R", ("a", "null"), ("b", "double")))) == 8
    assert has_zero_width_items(build(rec("R", ("a", {"type": "array", "items": "null"}))))
    assert not has_zero_width_items(build(rec("R", ("a", {"type": "array", "items": "int"}))))


def test_project_reader_keeps_used_paths_only():
    r = rec(
        "T",
        ("a", "double"),
        ("b", {"type": "enum", "name": "E", "symbols": ["X"]}),
        ("n", ["null", rec("N", ("x", "int"), ("e", "E"))]),
    )
    p = project_reader(r, ["a", "n.e"])
    assert [f["name"] for f in p["fields"]] == ["a", "n"]
    inner = next(b for b in p["fields"][1]["type"] if isinstance(b, dict))
    assert [f["name"] for f in inner["fields"]] == ["e"]
    assert inner["fields"][0]["type"]["symbols"] == ["X"]  # definition kept where used
    build(p)  # still a valid schema
