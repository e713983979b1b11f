"""A small Kustomize, enough for deploy/k8s: ``resources`` (files and directories),
``labels`` (metadata only), ``images`` and ``patches`` (strategic merge, from a file).

pip has no kustomize, and CI has no kubectl; where kubectl is installed, tests/deploy checks
this renderer's output equals ``kubectl kustomize``.

>>> merge({"a": [{"name": "x", "v": 1}], "b": 1}, {"a": [{"name": "x", "w": 2}], "c": 3})
{'a': [{'name': 'x', 'v': 1, 'w': 2}], 'b': 1, 'c': 3}
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]


def render(directory: Path) -> list[Doc]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - {"apiVersion", "kind", "resources", "labels", "images", "patches"}
    assert not unknown, f"{directory}: this renderer does not know {sorted(unknown)}"
    docs: list[Doc] = []
    for res in k.get("resources", []):
        path = directory / res
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in k.get("patches", []):
        for p in yaml.safe_load_all((directory / patch["path"]).read_text()):
            target = [d for d in docs if (d["kind"], d["metadata"]["name"])
                      == (p["kind"], p["metadata"]["name"])]  # fmt: skip
            assert len(target) == 1, f"{directory}: patch {patch['path']} matches {len(target)}"
            docs[docs.index(target[0])] = merge(target[0], p)
    for image in k.get("images", []):
        for d in docs:
            for c in _containers(d):
                name, _, tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    for label in k.get("labels", []):
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(label["pairs"])
    return docs


def _containers(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge as Kubernetes does it for these manifests: maps merge key by key,
    lists of named maps (containers, env, volumes) merge by name, other lists replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        out = copy.deepcopy(base)
        for item in patch:
            same = [i for i, b in enumerate(out) if b["name"] == item["name"]]
            if same:
                out[same[0]] = merge(out[same[0]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)
