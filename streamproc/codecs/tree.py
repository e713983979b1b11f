"""A typed tree of an Avro schema, with named references resolved (cycles allowed).

Built from fastavro's parsed form, so names are fully qualified and the schema is valid.

>>> t = build({"type": "record", "name": "R", "namespace": "a", "fields": [
...     {"name": "x", "type": ["null", "long"], "default": None},
...     {"name": "me", "type": ["null", "a.R"]}]})
>>> t.kind, t.name, [f.name for f in t.fields], t.fields[0].type.branches[1].kind
('record', 'a.R', ['x', 'me'], 'long')
>>> t.fields[1].type.branches[1] is t, is_recursive(t)
(True, True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import fastavro

PRIMITIVES = frozenset(("null", "boolean", "int", "long", "float", "double", "bytes", "string"))
NUMERIC = frozenset(("boolean", "int", "long", "float", "double"))
NAMED = frozenset(("record", "enum", "fixed", "error"))


@dataclass(eq=False)
class Field:
    name: str
    type: Node
    aliases: tuple[str, ...] = ()
    has_default: bool = False
    default: Any = None


@dataclass(eq=False)
class Node:
    """One schema node. Compared by identity (schemas may be cyclic)."""

    kind: str  # a primitive name, or record / enum / fixed / array / map / union
    logical: str | None = None
    name: str = ""  # full name of named types
    aliases: tuple[str, ...] = ()
    symbols: tuple[str, ...] = ()
    enum_default: str | None = None
    size: int = 0
    items: Node | None = None  # array items / map values
    branches: list[Node] = field(default_factory=list)
    fields: list[Field] = field(default_factory=list)

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    def describe(self) -> str:
        if self.kind in NAMED:
            return f"{self.kind} {self.name}"
        if self.kind == "union":
            return "[" + ", ".join(b.describe() for b in self.branches) + "]"
        if self.kind == "array":
            return f"array<{self.items.describe() if self.items else '?'}>"
        if self.kind == "map":
            return f"map<{self.items.describe() if self.items else '?'}>"
        return self.kind


def parse(schema: Any) -> Any:
    """fastavro's parsed form (raises fastavro's errors on an invalid schema)."""
    return fastavro.parse_schema(schema)


def strip_logical(schema: Any) -> Any:
    """A copy without ``logicalType`` keys: timestamps stay plain longs when fastavro reads."""
    if isinstance(schema, dict):
        return {k: strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical(v) for v in schema]
    return schema


def build(schema: Any) -> Node:
    """The tree of a schema given as JSON text, a dict/list/str, or fastavro's parsed form."""
    if isinstance(schema, str) and schema.lstrip().startswith(("{", "[")):
        schema = json.loads(schema)
    parsed = schema if isinstance(schema, dict) and "__fastavro_parsed" in schema else None
    if parsed is None:
        parsed = parse(schema)
    named_src: dict[str, Any] = {}
    if isinstance(parsed, dict):
        named_src = dict(parsed.get("__named_schemas", {}))
    return _Builder(named_src).node(parsed)


class _Builder:
    def __init__(self, named_src: dict[str, Any]) -> None:
        self.named_src = named_src
        self.named: dict[str, Node] = {}

    def node(self, s: Any) -> Node:
        if isinstance(s, str):
            if s in PRIMITIVES:
                return Node(kind=s)
            if s in self.named:
                return self.named[s]
            return self.node(self.named_src[s])
        if isinstance(s, list):
            return Node(kind="union", branches=[self.node(b) for b in s])
        t = s["type"]
        logical = s.get("logicalType")
        if t in PRIMITIVES:
            return Node(kind=t, logical=logical)
        if t in ("record", "error"):
            n = Node(kind="record", name=s["name"], aliases=tuple(s.get("aliases", ())))
            self.named[n.name] = n
            for f in s["fields"]:
                n.fields.append(
                    Field(
                        name=f["name"],
                        type=self.node(f["type"]),
                        aliases=tuple(f.get("aliases", ())),
                        has_default="default" in f,
                        default=f.get("default"),
                    )
                )
            return n
        if t == "enum":
            n = Node(
                kind="enum",
                name=s["name"],
                aliases=tuple(s.get("aliases", ())),
                symbols=tuple(s["symbols"]),
                enum_default=s.get("default"),
            )
            self.named[n.name] = n
            return n
        if t == "fixed":
            n = Node(
                kind="fixed",
                name=s["name"],
                aliases=tuple(s.get("aliases", ())),
                size=int(s["size"]),
                logical=logical,
            )
            self.named[n.name] = n
            return n
        if t == "array":
            return Node(kind="array", items=self.node(s["items"]))
        if t == "map":
            return Node(kind="map", items=self.node(s["values"]))
        if isinstance(t, (dict, list)) or t in self.named or t in self.named_src:
            return self.node(t)
        raise ValueError(f"unsupported schema node {s!r}")


def walk(root: Node) -> list[Node]:
    """Every node reachable from ``root`` once."""
    seen: dict[int, Node] = {}
    stack = [root]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen[id(n)] = n
        stack.extend(f.type for f in n.fields)
        stack.extend(n.branches)
        if n.items is not None:
            stack.append(n.items)
    return list(seen.values())


def is_recursive(root: Node) -> bool:
    """Whether a named type contains itself."""
    state: dict[int, int] = {}  # 1 in progress, 2 done

    def visit(n: Node) -> bool:
        s = state.get(id(n))
        if s == 1:
            return True
        if s == 2:
            return False
        state[id(n)] = 1
        children = [f.type for f in n.fields] + n.branches + ([n.items] if n.items else [])
        found = any(visit(c) for c in children)
        state[id(n)] = 2
        return found

    return visit(root)


def min_size(n: Node, _active: frozenset[int] = frozenset()) -> int:
    """Fewest bytes any value of ``n`` takes (0 for null, empty records, size-0 fixed)."""
    if id(n) in _active:
        return 1  # a recursive reference is always behind a union or array (>= 1 byte)
    k = n.kind
    if k == "null":
        return 0
    if k in ("boolean", "int", "long", "bytes", "string", "enum", "array", "map", "union"):
        return 1
    if k == "float":
        return 4
    if k == "double":
        return 8
    if k == "fixed":
        return n.size
    if k == "record":
        inner = _active | {id(n)}
        return sum(min_size(f.type, inner) for f in n.fields)
    return 1


def has_zero_width_items(root: Node) -> bool:
    """Whether some array holds items that may take no bytes (a count could then spin)."""
    return any(
        n.kind == "array" and n.items is not None and min_size(n.items) == 0 for n in walk(root)
    )
