"""Avro schema resolution (writer -> reader), checked once per writer schema.

Follows the Avro specification and fastavro's reading rules: fields are matched by name (or
the reader field's aliases), writer-only fields are skipped, reader-only fields need a
default; numbers promote int -> long -> float -> double, string <-> bytes; named types match
by unqualified name or reader alias. Two things are decided per *event*, as fastavro does:
a writer union branch the reader cannot hold (the event is INCOMPATIBLE_SCHEMA) and an enum
symbol the reader enum lacks without a default (UNKNOWN_ENUM). A schema is incompatible as a
whole when no event of it could ever be read.

>>> from streamproc.codecs.tree import build
>>> r = build({"type": "record", "name": "T", "fields": [{"name": "a", "type": "double"}]})
>>> w = build({"type": "record", "name": "T", "fields": [{"name": "a", "type": "int"},
...                                                     {"name": "b", "type": "string"}]})
>>> incompatibility(w, r) is None
True
>>> w2 = build({"type": "record", "name": "T", "fields": [{"name": "a", "type": "string"}]})
>>> incompatibility(w2, r)
"field 'a': writer type string cannot be read as double"
"""

from __future__ import annotations

from typing import Any

import fastavro

from streamproc.codecs.tree import NAMED, Field, Node, build, is_recursive, walk

_LENIENT = frozenset(("boolean", "float", "double", "fixed", "string", "bytes", "array", "map"))
_PROMOTIONS = {
    "int": ("long", "float", "double"),
    "long": ("float", "double"),
    "float": ("double",),
    "string": ("bytes",),
    "bytes": ("string",),
}


def shallow_match(w: Node, r: Node) -> bool:
    """Whether a (non-union) writer node may be read as a (non-union) reader node at all."""
    if w.kind == r.kind:
        if w.kind in NAMED:
            if w.kind == "fixed" and w.size != r.size:
                return False
            return w.short_name == r.short_name or w.name in r.aliases or w.short_name in r.aliases
        return True
    return r.kind in _PROMOTIONS.get(w.kind, ())


def union_target(w: Node, r: Node) -> Node | None:
    """The reader node a (non-union) writer node is read as: ``r`` itself, or the first
    matching branch when ``r`` is a union; ``None`` when nothing matches."""
    if r.kind != "union":
        return r if shallow_match(w, r) else None
    for b in r.branches:
        if b.kind != "union" and shallow_match(w, b):
            return b
    return None


def reader_field_for(wf: Field, reader: Node) -> Field | None:
    """The reader field that a writer field fills (by name, then by reader alias)."""
    for rf in reader.fields:
        if rf.name == wf.name:
            return rf
    for rf in reader.fields:
        if wf.name in rf.aliases:
            return rf
    return None


class _Checker:
    def __init__(self) -> None:
        self.active: set[tuple[int, int]] = set()

    def check(self, w: Node, r: Node) -> str | None:
        if w.kind == "union":
            reasons = [self.branch(b, r) for b in w.branches]
            if all(x is not None for x in reasons):
                return f"no branch of writer {w.describe()} can be read as {r.describe()}"
            return None
        target = union_target(w, r)
        if target is None:
            return f"writer type {w.describe()} cannot be read as {r.describe()}"
        return self.deep(w, target)

    def branch(self, w: Node, r: Node) -> str | None:
        """A writer union branch: readable (None) or why not."""
        target = union_target(w, r)
        if target is None:
            return f"writer type {w.describe()} cannot be read as {r.describe()}"
        return self.deep(w, target)

    def deep(self, w: Node, r: Node) -> str | None:
        key = (id(w), id(r))
        if key in self.active:
            return None
        self.active.add(key)
        try:
            if w.kind == "record":
                seen: set[str] = set()
                for wf in w.fields:
                    rf = reader_field_for(wf, r)
                    if rf is None or rf.name in seen:
                        continue
                    seen.add(rf.name)
                    why = self.check(wf.type, rf.type)
                    if why is not None:
                        return f"field {rf.name!r}: {why}"
                for rf in r.fields:
                    if rf.name not in seen and not rf.has_default:
                        return (
                            f"reader field {rf.name!r} of {r.name} has no default and the "
                            "writer schema does not have it"
                        )
                return None
            if w.kind in ("array", "map"):
                assert w.items is not None and r.items is not None
                why = self.check(w.items, r.items)
                if why is not None:
                    return f"{w.kind} items: {why}"
            return None
        finally:
            self.active.discard(key)


def incompatibility(writer: Node, reader: Node) -> str | None:
    """Why no event written with ``writer`` can be read as ``reader``; None when compatible."""
    return _Checker().check(writer, reader)


def branch_readable(w: Node, r: Node) -> bool:
    """Whether a writer union branch ``w`` can be read into reader node ``r``."""
    return _Checker().branch(w, r) is None


def project_reader(reader_schema: Any, paths: list[str]) -> Any:
    """The reader schema cut down to the fields on ``paths`` (dotted, through records).

    Only what the model reads takes part in resolution: a producer may drop or change a
    field the model does not use. Recursive reader schemas are returned unchanged.

    >>> r = {"type": "record", "name": "T", "fields": [
    ...     {"name": "a", "type": "double"}, {"name": "b", "type": "string"},
    ...     {"name": "n", "type": {"type": "record", "name": "N", "fields": [
    ...         {"name": "x", "type": "int"}, {"name": "y", "type": "int"}]}}]}
    >>> p = project_reader(r, ["a", "n.y", "missing"])
    >>> [f["name"] for f in p["fields"]], [f["name"] for f in p["fields"][1]["type"]["fields"]]
    (['a', 'n'], ['y'])
    """
    expanded = _plain_json(fastavro.parse_schema(reader_schema, expand=True))
    if is_recursive(build(reader_schema)):
        return reader_schema
    kept: dict[str, set[str]] = {}
    for dotted in paths:
        node: Any = expanded
        for name in dotted.split("."):
            records = [
                b
                for b in (node if isinstance(node, list) else [node])
                if isinstance(b, dict) and b.get("type") == "record"
            ]
            if len(records) != 1:
                break
            rec = records[0]
            match = [f for f in rec["fields"] if f["name"] == name]
            if not match:
                break
            kept.setdefault(rec["name"], set()).add(name)
            node = match[0]["type"]
    _prune(expanded, kept)
    return expanded


def _plain_json(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _plain_json(v) for k, v in schema.items() if not k.startswith("__")}
    if isinstance(schema, list):
        return [_plain_json(v) for v in schema]
    return schema


def _prune(schema: Any, kept: dict[str, set[str]]) -> None:
    if isinstance(schema, list):
        for b in schema:
            _prune(b, kept)
        return
    if not isinstance(schema, dict):
        return
    t = schema.get("type")
    if t == "record":
        names = kept.get(schema["name"], set())
        schema["fields"] = [f for f in schema["fields"] if f["name"] in names]
        for f in schema["fields"]:
            _prune(f["type"], kept)
    elif t == "array":
        _prune(schema["items"], kept)
    elif t == "map":
        _prune(schema["values"], kept)
    elif isinstance(t, (dict, list)):
        _prune(t, kept)


def lenient_skips(writer: Node, reader: Node) -> bool:
    """Whether reading ``writer`` as ``reader`` skips a value that fastavro skips leniently.

    fastavro skips booleans, floats, doubles and fixed without checking that their bytes are
    there, and skips strings, bytes and array/map blocks of a *negative* length by reading
    to the end of the payload: a cut or corrupt payload can pass. The reference decoder
    reads such schemas through a strict stream instead.
    """
    seen: set[tuple[int, int]] = set()

    def fixed_in(n: Node) -> bool:
        return any(x.kind in _LENIENT for x in walk(n))

    def go(w: Node, r: Node | None) -> bool:
        if r is None:
            return fixed_in(w)
        key = (id(w), id(r))
        if key in seen:
            return False
        seen.add(key)
        if w.kind == "union":
            return any(go(b, union_target(b, r)) for b in w.branches if branch_readable(b, r))
        if r.kind == "union":
            target = union_target(w, r)
            if target is None:
                return False
            r = target
        if w.kind == "record":
            for wf in w.fields:
                rf = reader_field_for(wf, r)
                if go(wf.type, None if rf is None else rf.type):
                    return True
        if w.kind in ("array", "map") and w.items is not None and r.items is not None:
            return go(w.items, r.items)
        return False

    return go(writer, reader)


def needs_strict_stream(writer: Node, reader: Node) -> bool:
    """Whether fastavro's lenient skips (see :func:`lenient_skips`) could let a cut or
    corrupt payload *pass* when reading ``writer`` as ``reader``.

    A lenient skip only goes unnoticed when nothing fastavro checks strictly comes after it:
    then the reference decoder must read through a strict (slower) stream. Elsewhere a
    lenient skip only changes which malformed code (TRUNCATED or CORRUPT) is reported.
    """
    if writer.kind != "record" or reader.kind != "record":
        return lenient_skips(writer, reader)
    fields = writer.fields
    readers = [reader_field_for(wf, reader) for wf in fields]
    for i, (wf, rf) in enumerate(zip(fields, readers, strict=True)):
        if not _field_lenient(wf.type, None if rf is None else rf.type):
            continue
        rest = zip(fields[i + 1 :], readers[i + 1 :], strict=True)
        if all(not _strict_bytes(w.type, r is None) for w, r in rest):
            return True
    return False


def _field_lenient(w: Node, r: Node | None) -> bool:
    if r is None:
        return any(x.kind in _LENIENT for x in walk(w))
    return lenient_skips(_wrap(w), _wrap(r))


def _wrap(n: Node) -> Node:
    return Node(kind="record", name="_", fields=[Field(name="v", type=n)])


def _strict_bytes(w: Node, skipped: bool) -> bool:
    """Whether fastavro reads at least one byte of ``w`` with a length check."""
    if w.kind == "null":
        return False
    if w.kind in ("boolean", "float", "double", "fixed"):
        return not skipped and (w.kind != "fixed" or w.size > 0)
    if w.kind == "record":
        return any(_strict_bytes(f.type, skipped) for f in w.fields)
    return True  # varints: ints, longs, enum and union indexes, lengths, block counts
