"""Every install hint names an extra that pyproject.toml defines (or none: a core dependency)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _hints() -> list[tuple[str, int, object]]:
    """(file, line, extra) of every DependencyMissingError(module, extra) and
    missing(module, extra) call in streamproc/ whose extra is a literal."""
    found = []
    for path in sorted((ROOT / "streamproc").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or len(node.args) != 2:
                continue
            f = node.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if name in ("DependencyMissingError", "missing"):
                arg = node.args[1]
                if isinstance(arg, ast.Constant):
                    found.append((str(path.relative_to(ROOT)), node.lineno, arg.value))
    return found


def test_every_install_hint_names_an_extra_of_pyproject() -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"])  # fmt: skip
    hints = _hints()
    assert len(hints) >= 8  # the backends', the aio client's, the local stack's
    wrong = [(f, line, e) for f, line, e in hints if e is not None and e not in extras]
    assert wrong == []
