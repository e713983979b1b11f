"""Hypothesis strategies: random record schemas, compatible reader schemas, model specs that
fit them, and records of a schema."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from streamproc.models.spec import ModelSpec

SYMBOLS = ("A", "B", "C", "D")
TEXTS = ("a", "b", "c", "é", "")
NUMERIC = ("boolean", "int", "long", "float", "double")
PROMOTE = {"int": ("long", "float", "double"), "long": ("float", "double"), "float": ("double",)}


class _Names:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"


def _type(draw: st.DrawFn, names: _Names, depth: int) -> Any:
    kinds = ["null", *NUMERIC, "string", "bytes", "enum", "fixed", "nullable", "union", "ts"]
    if depth > 0:
        kinds += ["record", "nullable_record", "array", "num_array", "map"]
    k = draw(st.sampled_from(kinds))
    if k in ("null", *NUMERIC, "string", "bytes"):
        return k
    if k == "ts":
        return {"type": "long", "logicalType": "timestamp-millis"}
    if k == "enum":
        n = draw(st.integers(1, len(SYMBOLS)))
        return {"type": "enum", "name": names("E"), "symbols": list(SYMBOLS[:n])}
    if k == "fixed":
        return {"type": "fixed", "name": names("F"), "size": draw(st.integers(0, 3))}
    if k == "nullable":
        inner = draw(st.sampled_from([*NUMERIC, "string"]))
        return ["null", inner] if draw(st.booleans()) else [inner, "null"]
    if k == "union":
        branches = draw(
            st.lists(st.sampled_from(["null", "int", "double", "string", "boolean"]),
                     min_size=1, max_size=4, unique=True)
        )  # fmt: skip
        return branches
    if k in ("record", "nullable_record"):
        rec = _record(draw, names, depth - 1, names("R"))
        return ["null", rec] if k == "nullable_record" else rec
    if k == "array":
        return {"type": "array", "items": draw(st.sampled_from(["int", "string", "boolean"]))}
    if k == "num_array":
        return {"type": "array", "items": draw(st.sampled_from(["float", "double", "int"]))}
    return {"type": "map", "values": draw(st.sampled_from(["long", "string", "float"]))}


def _record(draw: st.DrawFn, names: _Names, depth: int, name: str) -> dict[str, Any]:
    n = draw(st.integers(1, 5))
    fields = [{"name": f"f{i}", "type": _type(draw, names, depth)} for i in range(n)]
    return {"type": "record", "name": name, "fields": fields}


@st.composite
def writer_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """A record schema with an ``event_id`` and ``event_time`` and a few random fields."""
    names = _Names()
    rec = _record(draw, names, 2, "Top")
    rec["namespace"] = "gen"
    rec["fields"].insert(draw(st.integers(0, len(rec["fields"]))),
                         {"name": "event_id", "type": "string"})  # fmt: skip
    rec["fields"].insert(draw(st.integers(0, len(rec["fields"]))),
                         {"name": "event_time", "type": "long"})  # fmt: skip
    return rec


def _strip(t: Any) -> Any:
    return t["type"] if isinstance(t, dict) and "logicalType" in t else t


def _default_for(t: Any) -> Any:
    t = _strip(t)
    if isinstance(t, list):
        return _default_for(t[0])
    if isinstance(t, dict):
        kind = t["type"]
        if kind == "enum":
            return t["symbols"][0]
        if kind == "fixed":
            return "\u0000" * t["size"]
        if kind == "array":
            return []
        if kind == "map":
            return {}
        return {f["name"]: _default_for(f["type"]) for f in t["fields"]}
    return {"null": None, "boolean": True, "int": 3, "long": -4, "float": 0.5, "double": 2.5,
            "string": "b", "bytes": ""}[t]  # fmt: skip


@st.composite
def reader_for(draw: st.DrawFn, writer: dict[str, Any]) -> dict[str, Any]:
    """A reader schema the writer resolves to: fields promoted, dropped, narrowed, added."""
    reader = copy.deepcopy(writer)
    fields = []
    for field in reader["fields"]:
        f = field
        if f["name"] in ("event_id", "event_time"):
            fields.append(f)
            continue
        t = _strip(f["type"])
        action = draw(st.sampled_from(["keep", "keep", "drop", "evolve"]))
        if action == "drop":
            continue
        if action == "evolve":
            if isinstance(t, str) and t in PROMOTE:
                f = {**f, "type": draw(st.sampled_from(PROMOTE[t]))}
            elif isinstance(t, list) and "null" in t and len(t) == 2:
                f = {**f, "type": next(b for b in t if b != "null")}  # null events: per event
            elif isinstance(t, dict) and t.get("type") == "enum" and len(t["symbols"]) > 1:
                symbols = t["symbols"][:-1]
                enum = {**t, "symbols": symbols}
                if draw(st.booleans()):
                    enum["default"] = symbols[0]
                f = {**f, "type": enum}
            elif isinstance(t, str) and t in ("string", "bytes"):
                f = {**f, "type": "bytes" if t == "string" else "string"}
        fields.append(f)
    for i in range(draw(st.integers(0, 2))):
        t = draw(st.sampled_from(["double", "int", ["null", "double"], "string"]))
        fields.append({"name": f"added{i}", "type": t, "default": _default_for(t)})
    reader["fields"] = fields
    return reader


@dataclass
class Case:
    writer: dict[str, Any]
    reader: dict[str, Any]
    spec: ModelSpec


def _feature_candidates(reader: dict[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for f in reader["fields"]:
        if f["name"] in ("event_id", "event_time"):
            continue
        t = _strip(f["type"])
        out.append((f["name"], t))
        recs = [b for b in (t if isinstance(t, list) else [t])
                if isinstance(b, dict) and b.get("type") == "record"]  # fmt: skip
        for r in recs:
            for sub in r["fields"]:
                out.append((f"{f['name']}.{sub['name']}", _strip(sub["type"])))
    return out


def _feature(draw: st.DrawFn, path: str, t: Any) -> dict[str, Any] | None:
    branches = t if isinstance(t, list) else [t]
    non_null = [b for b in branches if b != "null"]
    if not non_null:
        return None
    base: dict[str, Any] = {"field": path}
    if "null" in branches or isinstance(t, list):
        base["null"] = draw(st.sampled_from(["reject", "nan", "impute"]))
        base["impute"] = -1.0
    if all(isinstance(b, str) and b in NUMERIC for b in non_null):
        if draw(st.booleans()):
            base["min"] = draw(st.sampled_from([-1e9, -1.0, 0.0]))
        if draw(st.booleans()):
            base["max"] = draw(st.sampled_from([1.0, 1e9]))
        base["allow_nan"] = draw(st.booleans())
        return base
    if len(non_null) == 1 and isinstance(non_null[0], dict):
        b = non_null[0]
        if b.get("type") == "enum" or b == "string":
            pool = list(b["symbols"]) if b.get("type") == "enum" else list(TEXTS)
            syms = draw(st.lists(st.sampled_from([*pool, "Z"]), min_size=1, max_size=4,
                                 unique=True))  # fmt: skip
            return {**base, "encoding": draw(st.sampled_from(["onehot", "index"])),
                    "symbols": syms}  # fmt: skip
        if b.get("type") == "array" and b["items"] in NUMERIC:
            return {**base, "length": draw(st.integers(1, 3)), "allow_nan": draw(st.booleans())}
    if non_null == ["string"]:
        syms = draw(st.lists(st.sampled_from(TEXTS), min_size=1, max_size=3, unique=True))
        return {**base, "encoding": draw(st.sampled_from(["onehot", "index"])), "symbols": syms}
    return None


@st.composite
def cases(draw: st.DrawFn) -> Case:
    writer = draw(writer_schemas())
    reader = draw(reader_for(writer))
    inputs = []
    for path, t in _feature_candidates(reader):
        if draw(st.booleans()):
            feat = _feature(draw, path, t)
            if feat is not None:
                inputs.append(feat)
    if not inputs:
        inputs = [{"field": "event_time"}]
    spec = ModelSpec.model_validate({"name": "gen", "version": "1.0.0", "inputs": inputs})
    return Case(writer, reader, spec)


def values(draw: st.DrawFn, t: Any) -> Any:
    t = _strip(t)
    if isinstance(t, list):
        return values(draw, draw(st.sampled_from(t)))
    if isinstance(t, dict):
        kind = t["type"]
        if kind == "enum":
            return draw(st.sampled_from(t["symbols"]))
        if kind == "fixed":
            return draw(st.binary(min_size=t["size"], max_size=t["size"]))
        if kind == "array":
            return [values(draw, t["items"]) for _ in range(draw(st.integers(0, 4)))]
        if kind == "map":
            keys = draw(st.lists(st.sampled_from(TEXTS), max_size=3, unique=True))
            return {k: values(draw, t["values"]) for k in keys}
        return {f["name"]: values(draw, f["type"]) for f in t["fields"]}
    if t == "null":
        return None
    if t == "boolean":
        return draw(st.booleans())
    if t == "int":
        return draw(st.integers(-(2**31), 2**31 - 1))
    if t == "long":
        return draw(st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-3, 3)))
    if t == "float":
        return draw(st.floats(width=32))
    if t == "double":
        return draw(st.one_of(st.floats(), st.sampled_from([0.0, -1.0, 1e39, math.inf])))
    if t == "string":
        return draw(st.one_of(st.sampled_from(TEXTS), st.text(max_size=4)))
    return draw(st.binary(max_size=4))


@st.composite
def records(draw: st.DrawFn, schema: dict[str, Any]) -> dict[str, Any]:
    rec = values(draw, schema)
    rec["event_id"] = draw(st.sampled_from(["ev-1", "ev-é", "", "x" * 20]))
    return rec
