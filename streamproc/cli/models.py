"""``streamproc models``: the model repository (add, list, show, diff versions).

The repository root is ``--repo``, else ``$STREAMPROC_MODEL_REPO``, else
``./deploy/models``. ``add`` measures the version's latency and throughput on a sample with
the backend :func:`streamproc.backends.select.load_backend` picks (or ``--prefer``) and
stores them as ``perf.json``, so ``diff`` can show the performance delta next to the input,
constraint and output differences against the version it replaces.

Tests inject a backend loader through the context's :class:`~streamproc.cli.deps.Deps`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import typer

from streamproc.cli.deps import deps as get_deps
from streamproc.cli.options import JsonOpt, Output, OutputOpt, emit, table, wants_json
from streamproc.errors import ModelError
from streamproc.models.diff import VersionDiff
from streamproc.models.performance import PerfReport, measure_performance, synthetic_sample
from streamproc.models.repository import DEFAULT_ROOT, ROOT_ENV, ModelRepository, ModelVersion
from streamproc.models.semver import Part
from streamproc.models.spec import ModelSpec

app = typer.Typer(no_args_is_help=True, help=__doc__.split("\n\n")[0])

RepoOpt = Annotated[
    Path,
    typer.Option("--repo", envvar=ROOT_ENV, help="Model repository root", show_default=True),
]
# -------------------------------------------------------------------------------- add


def _read_sample(path: Path, spec: ModelSpec) -> npt.NDArray[np.float32]:
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix == ".csv":
            header = path.open().readline().strip().split(",")
            if header != spec.columns:
                raise ModelError(
                    f"{path}: the header must name the model's columns in order: "
                    f"{','.join(spec.columns)}"
                )
            arr = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
        else:
            raise ModelError(f"{path}: a sample is a .npy or .csv file")
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the sample {path}: {exc}") from exc
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != spec.n_features or len(arr) == 0:
        raise ModelError(
            f"{path}: the sample has shape {arr.shape}; the model takes (n, {spec.n_features})"
        )
    return arr


@app.command("add")
def add(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="Directory with model.yaml and the model file")],
    name: Annotated[str | None, typer.Option(help="Model name (default: from model.yaml)")] = None,
    version: Annotated[
        str | None, typer.Option(help="Version to store as (default: from model.yaml)")
    ] = None,
    bump: Annotated[
        str | None, typer.Option(help="Store as the latest version bumped: major|minor|patch")
    ] = None,
    sample: Annotated[
        Path | None, typer.Option(help=".npy or .csv sample (default: synthetic, from spec)")
    ] = None,
    rows: Annotated[int, typer.Option(help="Rows of the synthetic sample")] = 1024,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic sample")] = 0,
    prefer: Annotated[
        list[str] | None, typer.Option(help="Backend to measure on (repeatable)")
    ] = None,
    budget_s: Annotated[float, typer.Option(help="Seconds of timing per batch size")] = 0.25,
    measure: Annotated[bool, typer.Option(help="Measure latency and throughput")] = True,
    repo: RepoOpt = DEFAULT_ROOT,
    output: OutputOpt = Output.TEXT,
    json_flag: JsonOpt = False,
) -> None:
    """Store a new version; measure its performance; show what changed."""
    deps = get_deps(ctx)
    repository = ModelRepository(repo)
    if version and bump:
        raise typer.BadParameter("give --version or --bump, not both")
    if bump:
        if bump not in ("major", "minor", "patch", "prerelease"):
            raise typer.BadParameter("--bump takes major, minor, patch or prerelease")
        from streamproc.models.spec import load_model_spec

        base = name or load_model_spec(source).name
        latest = repository.latest(base)
        if latest is None:
            raise ModelError(f"{base} has no stored version to bump; give --version")
        part: Part = bump  # type: ignore[assignment]
        version = str(latest.bump(part))

    def measure_fn(spec: ModelSpec) -> PerfReport:
        data = _read_sample(sample, spec) if sample else synthetic_sample(spec, rows, seed)
        backend = deps.loader(spec, prefer)
        try:
            # Every bucket is timed; its rows are taken cyclically from the sample.
            return measure_performance(backend, data, spec.buckets, budget_s=budget_s)
        finally:
            backend.close()

    stored = repository.add(
        source, name=name, version=version, measure=measure_fn if measure else None
    )
    previous = repository.previous(stored.name, stored.version)
    diff = repository.diff(stored.name, stored.version, previous) if previous else None
    if wants_json(output, json_flag):
        emit({**_version_dict(stored), "diff": diff.as_dict() if diff else None})
        return
    typer.echo(f"added {stored.name} {stored.version} at {stored.path}")
    if stored.perf:
        typer.echo(f"  {stored.perf.headline()}")
    if diff:
        typer.echo("")
        typer.echo(_render_diff(diff))


# ------------------------------------------------------------------------------- list


def _version_dict(mv: ModelVersion) -> dict[str, Any]:
    return {
        "name": mv.name,
        "version": str(mv.version),
        "path": str(mv.path),
        "spec": mv.spec.model_dump(mode="json"),
        "perf": mv.perf.model_dump(mode="json") if mv.perf else None,
    }


def _first_line(text: str, width: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


@app.command("list")
def list_(
    name: Annotated[str | None, typer.Argument(help="List this model's versions")] = None,
    repo: RepoOpt = DEFAULT_ROOT,
    output: OutputOpt = Output.TEXT,
    json_flag: JsonOpt = False,
) -> None:
    """Models and their versions (or one model's versions, with performance)."""
    repository = ModelRepository(repo)
    if name is None:
        models = {n: [str(v) for v in repository.versions(n)] for n in repository.names()}
        if wants_json(output, json_flag):
            emit([{"name": n, "versions": vs, "latest": vs[-1]} for n, vs in models.items()])
            return
        if not models:
            typer.echo(f"no models in {repository.root}")
            return
        rows = [["MODEL", "LATEST", "VERSIONS"]]
        rows += [[n, vs[-1], ", ".join(vs)] for n, vs in models.items()]
        typer.echo(table(rows))
        return
    versions = [repository.get(name, v) for v in repository.versions(name)]
    if not versions:
        raise ModelError(f"model {name!r} has no versions in {repository.root}")
    if wants_json(output, json_flag):
        emit([_version_dict(mv) for mv in versions])
        return
    rows = [["VERSION", "BACKEND", "P50 MS (B=1)", "P99 MS (B=1)", "BEST EV/S", "CHANGELOG"]]
    for mv in versions:
        p = mv.perf
        first = p.batches[0] if p and p.batches else None
        rows.append(
            [
                str(mv.version),
                p.backend if p else "-",
                f"{first.p50_ms:.3f}" if first else "-",
                f"{first.p99_ms:.3f}" if first else "-",
                f"{p.best_throughput_eps:,.0f}" if p else "-",
                _first_line(mv.spec.changelog),
            ]
        )
    typer.echo(table(rows))


# ------------------------------------------------------------------------------- show


def _render_perf(perf: PerfReport | None) -> str:
    if perf is None:
        return "performance: not measured"
    rows = [["BATCH", "P50 MS", "P99 MS", "EVENTS/S", "ITERATIONS"]]
    rows += [
        [
            str(b.batch_size),
            f"{b.p50_ms:.3f}",
            f"{b.p99_ms:.3f}",
            f"{b.throughput_eps:,.0f}",
            str(b.iterations),
        ]
        for b in perf.batches
    ]
    where = f"{perf.backend} on {perf.device or '?'} ({perf.machine})"
    return f"performance: {where}, measured {perf.measured_at}\n" + table(rows)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Model name")],
    version: Annotated[str | None, typer.Argument(help="Version (default: latest)")] = None,
    repo: RepoOpt = DEFAULT_ROOT,
    output: OutputOpt = Output.TEXT,
    json_flag: JsonOpt = False,
) -> None:
    """One version: inputs and constraints, outputs, backends, files and performance."""
    mv = ModelRepository(repo).get(name, version)
    if wants_json(output, json_flag):
        emit({**_version_dict(mv), "files": sorted(p.name for p in mv.path.iterdir())})
        return
    spec = mv.spec
    typer.echo(f"{mv.name} {mv.version}  ({mv.path})")
    typer.echo(f"changelog: {spec.changelog.strip() or '-'}")
    typer.echo(f"file: {spec.file} (input tensor {spec.input_tensor!r}, {spec.n_features} columns)")
    rows = [["FIELD", "ENCODING", "NULL", "MIN", "MAX", "COLUMNS"]]
    for f in spec.inputs:
        null = f"impute {f.impute:g}" if f.null == "impute" else f.null
        rows.append(
            [
                f.field,
                f.encoding,
                null,
                "-" if f.min is None else f"{f.min:g}",
                "-" if f.max is None else f"{f.max:g}",
                str(len(f.columns)),
            ]
        )
    typer.echo(table(rows))
    out = spec.outputs
    typer.echo(
        f"outputs: tensor {out.tensor!r}, score = column {out.score_index}, "
        f"labels {list(out.labels)}, threshold {out.threshold:g}"
    )
    typer.echo(f"backends: {', '.join(spec.backends)}; buckets: {list(spec.buckets)}")
    typer.echo(f"files: {', '.join(sorted(p.name for p in mv.path.iterdir()))}")
    typer.echo(_render_perf(mv.perf))


# ------------------------------------------------------------------------------- diff


def _render_diff(diff: VersionDiff) -> str:
    lines = [f"{diff.name} {diff.old} -> {diff.new}"]
    if diff.changes:
        lines += [f"  {c.describe()}" for c in diff.changes]
    else:
        lines.append("  inputs, constraints and outputs unchanged")
    lines.append(f"  breaking for inputs: {'yes' if diff.breaking else 'no'}")
    if diff.perf:
        rows = [["BATCH", "METRIC", diff.old, diff.new, "CHANGE"]]
        for d in diff.perf:
            sign = "better" if d.better else "worse"
            rows.append(
                [
                    str(d.batch_size),
                    d.metric,
                    f"{d.old:,.3f}",
                    f"{d.new:,.3f}",
                    f"{d.change_pct:+.1f}% ({sign})",
                ]
            )
        lines += ["performance:", table(rows)]
    if diff.perf_missing:
        lines.append(f"performance not measured for: {', '.join(diff.perf_missing)}")
    if diff.changelog:
        lines.append(f"changelog {diff.new}: {diff.changelog.strip()}")
    return "\n".join(lines)


@app.command("diff")
def diff(
    name: Annotated[str, typer.Argument(help="Model name")],
    version: Annotated[str | None, typer.Argument(help="New version (default: latest)")] = None,
    against: Annotated[
        str | None, typer.Option(help="Old version (default: the one it replaces)")
    ] = None,
    repo: RepoOpt = DEFAULT_ROOT,
    output: OutputOpt = Output.TEXT,
    json_flag: JsonOpt = False,
) -> None:
    """What changed from the version a version replaces: inputs, constraints, outputs, speed."""
    result = ModelRepository(repo).diff(name, version, against)
    if wants_json(output, json_flag):
        emit(result.as_dict())
        return
    typer.echo(_render_diff(result))


# ---------------------------------------------------------------------------- profile


@app.command("profile")
def profile(
    name: Annotated[str, typer.Argument(help="Model name")],
    version: Annotated[str, typer.Argument(help="Version")],
    data: Annotated[
        Path | None,
        typer.Argument(help=".npy or .csv of training features (default: synthetic data)"),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help=".npy of 0/1 labels, for the reference error rate")
    ] = None,
    rows: Annotated[int, typer.Option(help="Rows of synthetic data")] = 50_000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data")] = 0,
    event_times: Annotated[
        Path | None,
        typer.Option(help=".npy of the rows' event times (ms), for a seasonal reference"),
    ] = None,
    seasonality: Annotated[
        str, typer.Option(help="none, daily or weekly: fit a reference per hour of day / week")
    ] = "none",
    repo: RepoOpt = DEFAULT_ROOT,
) -> None:
    """Build the version's drift reference profile (reference_profile.json) from data."""
    from streamproc import synth
    from streamproc.pipeline.monitoring import PROFILE_FILE, build_profile

    repository = ModelRepository(repo)
    spec = repository.spec(name, version)
    y = None
    if data is None:
        cols = synth.generate_columns(rows, seed=seed)
        x = synth.feature_matrix(cols, spec)
        y = cols[synth.LABEL]
    else:
        x = _read_sample(data, spec)
        if labels is not None:
            y = np.load(labels, allow_pickle=False)
    times = None if event_times is None else np.load(event_times, allow_pickle=False)
    prof = build_profile(spec, x, y, event_time_ms=times, seasonality=seasonality)
    path = prof.save(repository.path(name, version) / PROFILE_FILE)
    emit({"profile": str(path), "rows": len(x), "error_rate": prof.error_rate})
