"""How a :class:`~streamproc.models.spec.ModelSpec` maps reader-schema fields to columns.

:func:`plan_features` checks the spec against the reader schema once (a bad spec raises
:class:`~streamproc.errors.ModelError`); :func:`extract_row` turns one decoded record (a dict
as fastavro returns it) into a row of floats, or the reason it cannot.

Value semantics shared by every decoder: a value is taken as a float64 (booleans 0/1,
timestamps as their long), checked (NaN/inf unless ``allow_nan``, then ``[min, max]``, then
that it fits a float32), and stored as float32. Nulls follow the feature's null policy.
A fixed-length array with another length is MISSING_FEATURE.

>>> from streamproc.codecs.tree import build
>>> from streamproc.models.spec import ModelSpec
>>> reader = build({"type": "record", "name": "T", "fields": [
...     {"name": "x", "type": ["null", "double"]},
...     {"name": "c", "type": {"type": "enum", "name": "C", "symbols": ["A", "B"]}}]})
>>> spec = ModelSpec.model_validate({"name": "m", "version": "1.0.0", "inputs": [
...     {"field": "x", "min": 0, "null": "impute", "impute": 0.5},
...     {"field": "c", "encoding": "onehot", "symbols": ["B", "A"]}]})
>>> plans = plan_features(spec, reader)
>>> row, code, detail = extract_row({"x": None, "c": "A"}, plans)
>>> row, ReasonCode(code).name
([0.5, 0.0, 1.0], 'OK')
>>> row, code, detail = extract_row({"x": -1.0, "c": "A"}, plans)
>>> ReasonCode(code).name, detail
('OUT_OF_RANGE', 'x=-1.0 is below min 0.0')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from streamproc.codecs.tree import NUMERIC, Node
from streamproc.errors import ModelError
from streamproc.models.spec import FeatureSpec, ModelSpec
from streamproc.types import ReasonCode

# float64 values at or beyond this magnitude round to +-inf as float32.
F32_OVERFLOW = 3.4028235677973366e38


@dataclass(frozen=True)
class FeaturePlan:
    spec: FeatureSpec
    path: tuple[str, ...]  # reader field names from the top record down
    leaf: Node  # the reader node at the end of the path (may be a nullable union)
    column: int  # first column
    width: int  # number of columns
    kind: str  # "number", "array", "symbol"

    @property
    def name(self) -> str:
        return self.spec.field


def non_null_branches(n: Node) -> list[Node]:
    if n.kind == "union":
        return [b for b in n.branches if b.kind != "null"]
    return [n]


def nullable(n: Node) -> bool:
    return n.kind == "null" or (n.kind == "union" and any(b.kind == "null" for b in n.branches))


def resolve_path(reader: Node, dotted: str) -> tuple[tuple[str, ...], Node] | None:
    """Follow a dotted path through (nullable) records; None when it does not exist."""
    node = reader
    names = dotted.split(".")
    for i, name in enumerate(names):
        records = [b for b in non_null_branches(node) if b.kind == "record"]
        if len(records) != 1 or (i == 0 and node.kind != "record"):
            return None
        found = [f for f in records[0].fields if f.name == name]
        if not found:
            return None
        node = found[0].type
    return tuple(names), node


def plan_features(spec: ModelSpec, reader: Node) -> list[FeaturePlan]:
    """Check every feature against the reader schema; raise ModelError when one cannot map."""
    plans: list[FeaturePlan] = []
    column = 0
    for f in spec.inputs:
        found = resolve_path(reader, f.field)
        if found is None:
            raise ModelError(f"feature {f.field!r} is not a field of reader schema {reader.name}")
        path, leaf = found
        kinds = {b.kind for b in non_null_branches(leaf)}
        if not kinds:
            raise ModelError(f"feature {f.field!r}: the reader type is always null")
        if f.encoding in ("onehot", "index"):
            if not kinds <= {"enum", "string"}:
                raise ModelError(
                    f"feature {f.field!r}: encoding {f.encoding} needs an enum or string, "
                    f"the reader has {leaf.describe()}"
                )
            kind = "symbol"
        elif f.length:
            arrays = non_null_branches(leaf)
            if (
                len(arrays) != 1
                or arrays[0].kind != "array"
                or arrays[0].items is None
                or arrays[0].items.kind not in NUMERIC
            ):
                raise ModelError(
                    f"feature {f.field!r}: length {f.length} needs an array of numbers, "
                    f"the reader has {leaf.describe()}"
                )
            kind = "array"
        else:
            if not kinds <= NUMERIC:
                raise ModelError(
                    f"feature {f.field!r}: encoding value needs a number or boolean, "
                    f"the reader has {leaf.describe()}"
                )
            kind = "number"
        width = len(f.columns)
        plans.append(FeaturePlan(f, path, leaf, column, width, kind))
        column += width
    return plans


def check_number(f: FeatureSpec, v: float, what: str) -> tuple[int, str]:
    """The value checks, in order: NaN/inf, min, max, float32 overflow."""
    if not math.isfinite(v):
        if not f.allow_nan:
            return ReasonCode.NAN_FEATURE, f"{what}={v} is not a finite number"
        if math.isnan(v):
            return ReasonCode.OK, ""
    if f.min is not None and v < f.min:
        return ReasonCode.OUT_OF_RANGE, f"{what}={v} is below min {f.min}"
    if f.max is not None and v > f.max:
        return ReasonCode.OUT_OF_RANGE, f"{what}={v} is above max {f.max}"
    if math.isfinite(v) and abs(v) >= F32_OVERFLOW:
        return ReasonCode.OUT_OF_RANGE, f"{what}={v} does not fit a float32"
    return ReasonCode.OK, ""


def _null_fill(f: FeatureSpec, width: int) -> tuple[list[float] | None, int, str]:
    if f.null == "reject":
        return None, ReasonCode.MISSING_FEATURE, f"{f.field} is null"
    fill = math.nan if f.null == "nan" else float(f.impute)
    return [fill] * width, ReasonCode.OK, ""


def extract_row(record: dict[str, Any], plans: list[FeaturePlan]) -> tuple[list[float], int, str]:
    """One record's feature row; on failure the code and detail of the first failing feature."""
    row: list[float] = []
    for p in plans:
        f = p.spec
        v: Any = record
        for name in p.path:
            if v is None:
                break
            v = v[name]
        if v is None:
            fill, code, detail = _null_fill(f, p.width)
            if fill is None:
                return row, code, detail
            row.extend(fill)
            continue
        if p.kind == "symbol":
            try:
                idx = f.symbols.index(v)
            except ValueError:
                return row, ReasonCode.UNKNOWN_ENUM, f"{f.field}={v!r} is not one of {f.symbols}"
            if f.encoding == "index":
                row.append(float(idx))
            else:
                row.extend(1.0 if i == idx else 0.0 for i in range(p.width))
            continue
        if p.kind == "array":
            if len(v) != p.width:
                return (
                    row,
                    ReasonCode.MISSING_FEATURE,
                    f"{f.field} has {len(v)} elements, the model expects {p.width}",
                )
            for i, x in enumerate(v):
                fx = float(x)
                code, detail = check_number(f, fx, f"{f.field}[{i}]")
                if code:
                    return row, code, detail
                row.append(fx)
            continue
        fv = float(v)
        code, detail = check_number(f, fv, f.field)
        if code:
            return row, code, detail
        row.append(fv)
    return row, ReasonCode.OK, ""
