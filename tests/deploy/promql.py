"""What the dashboard and alert tests evaluate: every panel's PromQL, every rule's operands."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
RULES = ROOT / "deploy" / "prometheus" / "streamproc.rules.yml"

# Grafana's built-in variables, as Grafana would fill them for a short range.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}

_SCALAR = re.compile(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*")
_WORD_OPS = ("and", "or", "unless")


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard.get("panels", []):
        yield p
        yield from panels(p)  # a row's panels


def panel_queries() -> list[tuple[str, str]]:
    """(where, expr) for every target of every panel of every dashboard, variables filled."""
    out = []
    for path in DASHBOARDS:
        for p in panels(json.loads(path.read_text())):
            for t in p.get("targets", []):
                expr = t.get("expr")
                if not expr:
                    continue
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                out.append((f"{path.name}: {p.get('title')} [{t.get('refId', '?')}]", expr))
    return out


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def split_top_level(expr: str) -> list[str]:
    """``expr`` cut at its top-level comparison and set operators (``>``, ``==``, ``and``...):
    the operands, each a query of its own. Inside (), [], {} and strings nothing is cut.

    >>> split_top_level('a{x=~"y>z"} > 3 and deriv(b[5m]) > 0')
    ['a{x=~"y>z"}', '3', 'deriv(b[5m])', '0']
    >>> split_top_level("sum by (p) (rate(x[5m])) >= clamp_min(2 * y, 0.01)")
    ['sum by (p) (rate(x[5m]))', 'clamp_min(2 * y, 0.01)']
    """
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            op = _operator_at(expr, i)
            if op:
                parts.append(expr[start:i])
                i += len(op)
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    return [" ".join(p.split()) for p in parts if p.strip()]


def _operator_at(expr: str, i: int) -> str:
    for op in ("==", "!=", ">=", "<=", ">", "<"):
        if expr.startswith(op, i):
            return op
    for word in _WORD_OPS:
        before = expr[i - 1] if i else " "
        after = expr[i + len(word)] if i + len(word) < len(expr) else " "
        if expr.startswith(word, i) and before.isspace() and after.isspace():
            return word
    return ""


def is_scalar(operand: str) -> bool:
    return _SCALAR.fullmatch(operand) is not None
