"""A directory of model versions: ``<root>/<name>/<semver>/`` with ``model.yaml`` and files.

Each version directory holds the model file, its ``model.yaml``
(:class:`~streamproc.models.spec.ModelSpec`), any file the spec refers to, and
``perf.json``: latency and throughput measured on a sample when the version was added.
Versions are immutable: :meth:`ModelRepository.add` copies into a hidden staging
directory and renames it into place, so readers never see half a version.

This module is pure logic: it never loads an inference runtime. Measuring takes any
object with ``infer(x: float32 (n, F)) -> (n, K)`` (see :class:`Inferer`); the CLI passes
the backend from :func:`streamproc.backends.select.load_backend`.

>>> import tempfile, yaml
>>> src = Path(tempfile.mkdtemp())
>>> _ = (src / "model.onnx").write_bytes(b"onnx")
>>> spec = {"name": "fraud", "version": "1.0.0", "inputs": [{"field": "amount", "min": 0}]}
>>> _ = (src / "model.yaml").write_text(yaml.safe_dump(spec))
>>> repo = ModelRepository(tempfile.mkdtemp())
>>> _ = repo.add(src)
>>> spec["inputs"][0]["max"] = 10_000
>>> _ = (src / "model.yaml").write_text(yaml.safe_dump(spec))
>>> _ = repo.add(src, version="1.1.0")
>>> repo.names(), [str(v) for v in repo.versions("fraud")]
(['fraud'], ['1.0.0', '1.1.0'])
>>> [c.describe() for c in repo.diff("fraud", "1.1.0").changes]
['~ input amount.max: None -> 10000.0 (constraint tightened: more events rejected)']
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import platform
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from streamproc.errors import ModelError
from streamproc.models.semver import Version
from streamproc.models.spec import FeatureSpec, ModelSpec, load_model_spec

PERF_FILE = "perf.json"
SPEC_FILE = "model.yaml"
DEFAULT_ROOT = Path("deploy/models")
ROOT_ENV = "STREAMPROC_MODEL_REPO"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def default_root(env: dict[str, str] | None = None) -> Path:
    """``$STREAMPROC_MODEL_REPO`` or ``./deploy/models``."""
    value = (os.environ if env is None else env).get(ROOT_ENV)
    return Path(value) if value else DEFAULT_ROOT


# --------------------------------------------------------------------------- performance


class Inferer(Protocol):
    """What measuring needs from a backend: every
    :class:`~streamproc.backends.base.Backend` is one. Subclass it explicitly to get the
    defaults (a name from the class, no device, nothing to close)."""

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def device(self) -> str:
        return ""

    def infer(self, x: npt.NDArray[np.float32]) -> npt.NDArray[Any]: ...

    def close(self) -> None:
        return None


class BatchPerf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int
    iterations: int
    p50_ms: float  # latency of one infer() call on a batch of this size
    p99_ms: float
    throughput_eps: float  # events per second at this batch size


class PerfReport(BaseModel):
    """``perf.json``: what a version measured on a sample when it was added."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    device: str = ""
    machine: str
    measured_at: str  # ISO 8601, UTC
    sample_rows: int
    n_features: int
    n_outputs: int
    batches: tuple[BatchPerf, ...]

    def at(self, batch_size: int) -> BatchPerf | None:
        return next((b for b in self.batches if b.batch_size == batch_size), None)

    @property
    def best_throughput_eps(self) -> float:
        return max((b.throughput_eps for b in self.batches), default=0.0)

    def headline(self) -> str:
        """One line: single-event latency and best throughput."""
        if not self.batches:
            return f"{self.backend}: no measurements"
        first = self.batches[0]
        where = f"{self.backend} ({self.device})" if self.device else self.backend
        return (
            f"{where}: p50 {first.p50_ms:.3f} ms / p99 {first.p99_ms:.3f} ms at batch "
            f"{first.batch_size}, up to {self.best_throughput_eps:,.0f} events/s"
        )


def synthetic_sample(spec: ModelSpec, rows: int = 512, seed: int = 0) -> npt.NDArray[np.float32]:
    """A seeded sample of plausible input rows, honouring each feature's declared range.

    >>> spec = ModelSpec.model_validate({"name": "m", "version": "1.0.0", "inputs": [
    ...     {"field": "p", "min": 0, "max": 1},
    ...     {"field": "c", "encoding": "onehot", "symbols": ["A", "B", "C"]}]})
    >>> x = synthetic_sample(spec, rows=4, seed=1)
    >>> x.shape, x.dtype, bool(((x[:, 0] >= 0) & (x[:, 0] <= 1)).all()), x[:, 1:].sum(axis=1)
    ((4, 4), dtype('float32'), True, array([1., 1., 1., 1.], dtype=float32))
    """
    rng = np.random.default_rng(seed)
    cols: list[npt.NDArray[np.float64]] = []
    for feat in spec.inputs:
        cols.extend(_feature_columns(feat, rows, rng))
    if not cols:
        return np.zeros((rows, 0), dtype=np.float32)
    return np.column_stack(cols).astype(np.float32)


def _feature_columns(
    feat: FeatureSpec, rows: int, rng: np.random.Generator
) -> list[npt.NDArray[np.float64]]:
    if feat.encoding == "onehot":
        picks = rng.integers(0, len(feat.symbols), rows)
        return [(picks == i).astype(np.float64) for i in range(len(feat.symbols))]
    if feat.encoding == "index":
        return [rng.integers(0, len(feat.symbols), rows).astype(np.float64)]
    out = []
    for _ in range(feat.length or 1):
        lo, hi = feat.min, feat.max
        if lo is not None and hi is not None:
            col = rng.uniform(lo, hi, rows)
        elif lo is not None:
            col = lo + rng.exponential(1.0, rows)
        elif hi is not None:
            col = hi - rng.exponential(1.0, rows)
        else:
            col = rng.standard_normal(rows)
        out.append(col)
    return out


def measure_performance(
    backend: Inferer,
    sample: npt.NDArray[np.float32],
    batch_sizes: Sequence[int],
    *,
    backend_name: str = "",
    device: str = "",
    budget_s: float = 0.25,
    min_iterations: int = 5,
    max_iterations: int = 5000,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> PerfReport:
    """Time ``backend.infer`` at each batch size (rows taken cyclically from ``sample``).

    Each size runs ``warmup`` untimed calls, then timed calls until ``budget_s`` has passed
    (at least ``min_iterations``, at most ``max_iterations``). The output must be a finite
    ``(n, K)`` array for ``n`` input rows, else :class:`ModelError`.

    >>> class Doubler(Inferer):
    ...     def infer(self, x):
    ...         return np.column_stack([x.sum(axis=1), 2 * x.sum(axis=1)])
    >>> ticks = iter(range(10_000))
    >>> rep = measure_performance(Doubler(), np.ones((3, 2), np.float32), [1, 4],
    ...                           clock=lambda: next(ticks) / 1000, budget_s=0.0)
    >>> [(b.batch_size, b.iterations, b.p50_ms, b.throughput_eps) for b in rep.batches]
    [(1, 5, 1.0, 1000.0), (4, 5, 1.0, 4000.0)]
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if sample.ndim != 2 or len(sample) == 0:
        raise ModelError(f"a performance sample must be a non-empty 2-D array, got {sample.shape}")
    n_outputs = 0
    batches = []
    for size in sorted(set(batch_sizes)):
        if size < 1:
            raise ModelError(f"batch size must be positive, got {size}")
        x = np.ascontiguousarray(np.resize(sample, (size, sample.shape[1])))
        for _ in range(warmup):
            backend.infer(x)
        out = _checked(backend.infer(x), size)
        n_outputs = out.shape[1]
        times: list[float] = []
        start = clock()
        while len(times) < max_iterations and (
            len(times) < min_iterations or clock() - start < budget_s
        ):
            t0 = clock()
            backend.infer(x)
            times.append(clock() - t0)
        arr = np.asarray(times) * 1000.0
        total_s = float(arr.sum()) / 1000.0
        batches.append(
            BatchPerf(
                batch_size=size,
                iterations=len(times),
                p50_ms=round(float(np.percentile(arr, 50)), 6),
                p99_ms=round(float(np.percentile(arr, 99)), 6),
                throughput_eps=round(size * len(times) / total_s, 3) if total_s > 0 else math.inf,
            )
        )
    return PerfReport(
        backend=backend_name or backend.name,
        device=device or backend.device,
        machine=f"{platform.machine()} {os.cpu_count()}-core {platform.system()}",
        measured_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        sample_rows=len(sample),
        n_features=sample.shape[1],
        n_outputs=n_outputs,
        batches=tuple(batches),
    )


def _checked(out: Any, rows: int) -> npt.NDArray[Any]:
    arr = np.asarray(out)
    if arr.ndim != 2 or arr.shape[0] != rows:
        raise ModelError(f"the model returned shape {arr.shape} for {rows} rows; expected (n, K)")
    if not np.isfinite(arr).all():
        raise ModelError("the model returned NaN or infinite outputs on the sample")
    return arr


# -------------------------------------------------------------------------------- diffs

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


# ---------------------------------------------------------------------------- repository


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One stored version."""

    name: str
    version: Version
    path: Path
    spec: ModelSpec
    perf: PerfReport | None


class ModelRepository:
    """Model versions under ``root``; see the module docstring."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if _is_model_dir(p) and self.versions(p.name)
        )

    def versions(self, name: str) -> list[Version]:
        """Stored versions in ascending precedence (directories that are not one are ignored)."""
        base = self.root / name
        if not _NAME.match(name) or not base.is_dir():
            return []
        found = [
            Version.parse(p.name)
            for p in base.iterdir()
            if p.is_dir() and Version.is_valid(p.name) and (p / SPEC_FILE).is_file()
        ]
        return sorted(found)

    def has(self, name: str, version: str | Version) -> bool:
        v = Version.parse(version) if isinstance(version, str) else version
        return v in self.versions(name)

    def latest(self, name: str, *, prerelease: bool = True) -> Version | None:
        vs = [v for v in self.versions(name) if prerelease or not v.is_prerelease]
        return vs[-1] if vs else None

    def previous(self, name: str, version: str | Version) -> Version | None:
        """The stored version this one replaces: the highest one ranked below it."""
        v = Version.parse(version)
        lower = [x for x in self.versions(name) if x < v]
        return lower[-1] if lower else None

    def path(self, name: str, version: str | Version) -> Path:
        v = Version.parse(version)
        for stored in self.versions(name):
            if stored == v:  # the directory name keeps any build metadata
                return self.root / name / str(stored)
        known = ", ".join(str(x) for x in self.versions(name)) or "none"
        raise ModelError(f"model {name!r} has no version {v} in {self.root} (stored: {known})")

    def spec(self, name: str, version: str | Version) -> ModelSpec:
        return load_model_spec(self.path(name, version))

    def perf(self, name: str, version: str | Version) -> PerfReport | None:
        path = self.path(name, version) / PERF_FILE
        if not path.is_file():
            return None
        try:
            return PerfReport.model_validate_json(path.read_text())
        except (OSError, ValidationError) as exc:
            raise ModelError(f"unreadable {path}: {exc}") from exc

    def get(self, name: str, version: str | Version | None = None) -> ModelVersion:
        """A stored version; the latest one when ``version`` is None."""
        v = Version.parse(version) if version is not None else self.latest(name)
        if v is None:
            raise ModelError(f"model {name!r} has no versions in {self.root}")
        path = self.path(name, v)
        return ModelVersion(
            name, Version.parse(path.name), path, self.spec(name, v), self.perf(name, v)
        )

    def add(
        self,
        source: str | Path,
        *,
        name: str | None = None,
        version: str | None = None,
        measure: Callable[[ModelSpec], PerfReport] | None = None,
    ) -> ModelVersion:
        """Copy the model directory ``source`` in as ``<name>/<version>``.

        ``name`` and ``version`` default to those in its ``model.yaml``; when given, the
        stored ``model.yaml`` is rewritten with them. ``measure`` (spec -> report) runs on
        the staged copy and its report is stored as ``perf.json``. Files the spec names
        outside ``source`` (a shared reader schema) are copied in, so every stored version
        is self-contained. Raises :class:`ModelError` when the spec is
        invalid, a file is missing, or the version already exists (versions are immutable).
        """
        source = Path(source)
        spec = load_model_spec(source)
        name = name or spec.name
        if not _NAME.match(name):
            raise ModelError(f"invalid model name {name!r} (letters, digits, '_', '.', '-')")
        ver = Version.parse(version or spec.version)
        if self.versions(name) and ver in self.versions(name):
            raise ModelError(
                f"{name} {ver} already exists in {self.root}; versions are immutable, "
                f"add it under a new version (next patch: {ver.bump('patch')})"
            )
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        staging = base / f".incoming-{uuid.uuid4().hex[:12]}"
        try:
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns(PERF_FILE, ".*"))
            if (name, str(ver)) != (spec.name, spec.version):
                _rewrite_spec(staging / SPEC_FILE, name=name, version=str(ver))
            _adopt_files(spec, source, staging)
            staged = load_model_spec(staging)
            if measure is not None:
                report = measure(staged)
                (staging / PERF_FILE).write_text(report.model_dump_json(indent=2) + "\n")
            dest = base / str(ver)
            try:
                os.rename(staging, dest)
            except OSError as exc:
                raise ModelError(f"cannot store {name} {ver} at {dest}: {exc}") from exc
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return self.get(name, ver)

    def diff(
        self, name: str, new: str | Version | None = None, old: str | Version | None = None
    ) -> VersionDiff:
        """``new`` (default: latest) against ``old`` (default: the version it replaces)."""
        new_v = self.get(name, new)
        old_ver = Version.parse(old) if old is not None else self.previous(name, new_v.version)
        if old_ver is None:
            raise ModelError(
                f"{name} {new_v.version} is the first version: nothing to diff against"
            )
        old_v = self.get(name, old_ver)
        missing = [str(m.version) for m in (old_v, new_v) if m.perf is None]
        perf = diff_perf(old_v.perf, new_v.perf) if old_v.perf and new_v.perf else []
        return VersionDiff(
            name=name,
            old=str(old_v.version),
            new=str(new_v.version),
            changes=diff_specs(old_v.spec, new_v.spec) + diff_files(old_v.path, new_v.path),
            perf=perf,
            perf_missing=missing,
            changelog=new_v.spec.changelog,
        )


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and _NAME.match(path.name) is not None


def _rewrite_spec(path: Path, **changes: str) -> None:
    try:
        raw = yaml.safe_load(path.read_text())
        raw.update(changes)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise ModelError(f"cannot rewrite {path}: {exc}") from exc


def _adopt_files(spec: ModelSpec, source: Path, staging: Path) -> None:
    """Make the staged version self-contained: copy in the files the spec (as loaded from
    ``source``) names outside ``source`` (a shared reader schema, say) and point the staged
    spec at the copies."""
    root = source.resolve()
    changes: dict[str, str] = {}
    for attr, what, path in (
        ("file", "model file", spec.model_path),
        ("reader_schema", "reader schema", spec.reader_schema_path),
    ):
        if path is None:
            continue
        resolved = path.resolve()
        if not resolved.is_file():
            raise ModelError(f"the {what} {path} named in {SPEC_FILE} is missing")
        if resolved.is_relative_to(root):
            continue
        local = staging / resolved.name
        if local.exists():
            raise ModelError(
                f"the {what} {path} lies outside the model directory and {local.name} is "
                "taken there; copy it in yourself"
            )
        shutil.copy2(resolved, local)
        changes[attr] = resolved.name
    if changes:
        _rewrite_spec(staging / SPEC_FILE, **changes)
