"""What changed between two versions of a model: inputs and constraints, outputs, files,
and measured speed (:class:`VersionDiff`)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamproc.models.performance import PERF_FILE, PerfReport
from streamproc.models.spec import ModelSpec

SPEC_FILE = "model.yaml"  # a version's description (streamproc.models.spec)
_CONSTRAINTS = {"min", "max", "null", "impute", "allow_nan", "symbols", "length", "encoding"}


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two model descriptions."""

    section: Literal["input", "output", "model", "file"]
    item: str  # feature field, or attribute name
    kind: Literal["added", "removed", "changed"]
    old: Any = None
    new: Any = None
    note: str = ""

    def describe(self) -> str:
        mark = {"added": "+", "removed": "-", "changed": "~"}[self.kind]
        if self.kind == "changed":
            text = f"{mark} {self.section} {self.item}: {self.old!r} -> {self.new!r}"
        else:
            text = f"{mark} {self.section} {self.item}"
        return f"{text} ({self.note})" if self.note else text

    def as_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "item": self.item,
            "kind": self.kind,
            "old": _plain(self.old),
            "new": _plain(self.new),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class PerfDelta:
    batch_size: int
    metric: Literal["p50_ms", "p99_ms", "throughput_eps"]
    old: float
    new: float

    @property
    def change_pct(self) -> float:
        return (self.new - self.old) / self.old * 100.0 if self.old else math.inf

    @property
    def better(self) -> bool:
        return self.new > self.old if self.metric == "throughput_eps" else self.new < self.old

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "metric": self.metric,
            "old": self.old,
            "new": self.new,
            "change_pct": round(self.change_pct, 2),
        }


@dataclass(frozen=True, slots=True)
class VersionDiff:
    name: str
    old: str
    new: str
    changes: list[Change] = field(default_factory=list)
    perf: list[PerfDelta] = field(default_factory=list)
    perf_missing: list[str] = field(default_factory=list)  # versions without perf.json
    changelog: str = ""

    @property
    def breaking(self) -> bool:
        """True when events valid for the old version may be rejected or mis-read by the new."""
        return any(
            c.section == "input"
            and (
                c.kind != "changed"
                or "tightened" in c.note
                or c.item.endswith((".symbols", ".encoding", ".length"))
            )
            for c in self.changes
        ) or any(c.item == "column order" for c in self.changes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "old": self.old,
            "new": self.new,
            "breaking": self.breaking,
            "changes": [c.as_dict() for c in self.changes],
            "perf": [d.as_dict() for d in self.perf],
            "perf_missing": self.perf_missing,
            "changelog": self.changelog,
        }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _constraint_note(attr: str, old: Any, new: Any) -> str:
    tighter = "constraint tightened: more events rejected"
    looser = "constraint loosened"
    if attr == "min":
        return tighter if old is None or (new is not None and new > old) else looser
    if attr == "max":
        return tighter if old is None or (new is not None and new < old) else looser
    if attr == "allow_nan":
        return looser if new else tighter
    if attr == "null":
        if new == "reject":
            return tighter
        return looser if old == "reject" else "null handling changed"
    if attr == "symbols":
        return "enum symbols changed: column layout differs"
    if attr in {"encoding", "length"}:
        return "column layout differs"
    return "imputed value changed" if attr == "impute" else ""


def diff_specs(old: ModelSpec, new: ModelSpec) -> list[Change]:
    """Input, constraint, output and model-setting differences from ``old`` to ``new``.

    >>> a = ModelSpec.model_validate({"name": "m", "version": "1.0.0",
    ...     "inputs": [{"field": "x"}, {"field": "y", "min": 0}]})
    >>> b = ModelSpec.model_validate({"name": "m", "version": "1.1.0",
    ...     "inputs": [{"field": "x"}, {"field": "y", "min": -1}, {"field": "z"}],
    ...     "outputs": {"threshold": 0.7}})
    >>> for c in diff_specs(a, b): print(c.describe())
    + input z
    ~ input y.min: 0.0 -> -1.0 (constraint loosened)
    ~ output threshold: 0.5 -> 0.7
    """
    changes: list[Change] = []
    old_in = {f.field: f for f in old.inputs}
    new_in = {f.field: f for f in new.inputs}
    changes += [Change("input", n, "added") for n in new_in if n not in old_in]
    changes += [Change("input", n, "removed") for n in old_in if n not in new_in]
    for name in (n for n in new_in if n in old_in):
        a, b = old_in[name].model_dump(), new_in[name].model_dump()
        for attr in a:
            if a[attr] != b[attr]:
                note = _constraint_note(attr, a[attr], b[attr]) if attr in _CONSTRAINTS else ""
                changes.append(Change("input", f"{name}.{attr}", "changed", a[attr], b[attr], note))
    shared_old = [c for c in old.columns if c in set(new.columns)]
    shared_new = [c for c in new.columns if c in set(old.columns)]
    if shared_old != shared_new:
        changes.append(
            Change(
                "input",
                "column order",
                "changed",
                shared_old,
                shared_new,
                "features reach the model in a different order",
            )
        )
    a_out, b_out = old.outputs.model_dump(), new.outputs.model_dump()
    changes += [
        Change("output", attr, "changed", a_out[attr], b_out[attr])
        for attr in a_out
        if a_out[attr] != b_out[attr]
    ]
    skip = {"name", "version", "inputs", "outputs", "changelog", "home"}
    a_m, b_m = old.model_dump(exclude=skip), new.model_dump(exclude=skip)
    changes += [
        Change("model", attr, "changed", a_m[attr], b_m[attr])
        for attr in a_m
        if a_m[attr] != b_m[attr]
    ]
    return changes


# Model attributes the pipeline builds the input matrix from, besides the inputs: the
# window store's definitions and the event-time field it reads.
_MATRIX_ATTRS = frozenset({"features", "time_field"})
# Input attributes that only decide which events are admitted (the pipeline admits by its
# configured model's): another version's are no reason to keep it off that matrix.
_ADMISSION_ATTRS = frozenset({"min", "max", "allow_nan"})


def input_changes(old: ModelSpec, new: ModelSpec) -> list[Change]:
    """The differences between ``old`` and ``new`` that change the input matrix: inputs
    added, removed or reordered, their encoding, null rule or impute value (what the model
    sees for an admitted event), windowed features and the event-time field. One pipeline
    builds one matrix and scores every version of a rollout from it, so ``new`` can roll
    out against ``old`` there only when this is empty. Ranges (``min``, ``max``,
    ``allow_nan``) decide which events the pipeline admits, by its configured model's, and
    are not listed: a fix that loosens a range rolls out (then its dead letters replay).

    >>> a = ModelSpec.model_validate({"name": "m", "version": "1.0.0",
    ...     "inputs": [{"field": "x"}], "buckets": [1, 8]})
    >>> b = a.model_copy(update={"version": "1.1.0", "buckets": (1, 64)})
    >>> input_changes(a, b)                   # other buckets: the same matrix
    []
    >>> c = ModelSpec.model_validate({"name": "m", "version": "2.0.0",
    ...     "inputs": [{"field": "x", "impute": 1.0}]})
    >>> [ch.describe() for ch in input_changes(a, c)]
    ['~ input x.impute: 0.0 -> 1.0 (imputed value changed)']
    >>> wider = ModelSpec.model_validate({"name": "m", "version": "1.0.1",
    ...     "inputs": [{"field": "x", "min": -5}], "buckets": [1, 8]})
    >>> input_changes(a, wider)               # admits more events: the same matrix
    []
    """
    return [
        c
        for c in diff_specs(old, new)
        if (c.section == "input" and not _admission(c))
        or (c.section == "model" and c.item in _MATRIX_ATTRS)
    ]


def _admission(c: Change) -> bool:
    # A changed input attribute is "<field>.<attr>" (a field may hold dots itself).
    return c.kind == "changed" and c.item.rpartition(".")[2] in _ADMISSION_ATTRS


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def diff_files(old_dir: Path, new_dir: Path) -> list[Change]:
    """Files of two version directories that were added, removed or changed (by content),
    besides ``model.yaml`` and ``perf.json``: the model itself, a reference profile, ..."""
    skip = {SPEC_FILE, PERF_FILE}
    old = {p.name: p for p in old_dir.iterdir() if p.is_file() and p.name not in skip}
    new = {p.name: p for p in new_dir.iterdir() if p.is_file() and p.name not in skip}
    changes = [Change("file", n, "added") for n in sorted(new.keys() - old.keys())]
    changes += [Change("file", n, "removed") for n in sorted(old.keys() - new.keys())]
    for name in sorted(old.keys() & new.keys()):
        a, b = _digest(old[name]), _digest(new[name])
        if a != b:
            changes.append(Change("file", name, "changed", f"sha256:{a}", f"sha256:{b}"))
    return changes


def diff_perf(old: PerfReport, new: PerfReport) -> list[PerfDelta]:
    """Per batch size measured in both: p50, p99 and throughput, old against new."""
    deltas = []
    for b_new in new.batches:
        b_old = old.at(b_new.batch_size)
        if b_old is None:
            continue
        for metric in ("p50_ms", "p99_ms", "throughput_eps"):
            deltas.append(
                PerfDelta(b_new.batch_size, metric, getattr(b_old, metric), getattr(b_new, metric))
            )
    return deltas
