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

import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from streamproc.errors import ModelError
from streamproc.models.diff import SPEC_FILE, VersionDiff, diff_files, diff_perf, diff_specs
from streamproc.models.performance import PERF_FILE, PerfReport
from streamproc.models.semver import Version
from streamproc.models.spec import ModelSpec, load_model_spec

DEFAULT_ROOT = Path("deploy/models")
ROOT_ENV = "STREAMPROC_MODEL_REPO"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def default_root(env: dict[str, str] | None = None) -> Path:
    """``$STREAMPROC_MODEL_REPO`` or ``./deploy/models``."""
    value = (os.environ if env is None else env).get(ROOT_ENV)
    return Path(value) if value else DEFAULT_ROOT


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
