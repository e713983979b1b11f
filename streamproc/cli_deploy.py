"""``streamproc`` deployment commands: deploy, promote, roll back, approve; status, history.

Every command reads the model's latest state from the control topic, applies one command
with the pure reducer (:func:`streamproc.rollout.state.apply`) and publishes the resulting
snapshot; every processor replica follows the topic. The store comes from
``streamproc.kafka.control.make_store(bootstrap, topic)``, imported only when a command
runs; tests pass a :class:`DeployDeps` as the click context object instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from streamproc.cli_models import RepoOpt, table
from streamproc.errors import DeploymentError, ModelError
from streamproc.models.repository import DEFAULT_ROOT, ModelRepository
from streamproc.rollout.ab import ABSource, ab_report, render, variants_from_predictions
from streamproc.rollout.state import (
    Approve,
    Deploy,
    DeploymentCommand,
    DeploymentState,
    Promote,
    Rollback,
    Step,
    Strategy,
    StrategyParams,
)
from streamproc.rollout.store import ControlStore, execute

app = typer.Typer(no_args_is_help=True, help=__doc__.split("\n\n")[0])

DEFAULT_TOPIC = "streamproc.control"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class DeployDeps:
    """What the commands use from outside; tests inject a store, a clock, an A/B source."""

    store: ControlStore | None = None
    store_factory: Callable[[str, str], ControlStore] | None = None
    ab_source: ABSource | None = None
    clock_ms: Callable[[], int] = field(default=_now_ms)


def _deps(ctx: typer.Context) -> DeployDeps:
    return ctx.obj if isinstance(ctx.obj, DeployDeps) else DeployDeps()


def _store(ctx: typer.Context, bootstrap: str, topic: str) -> ControlStore:
    deps = _deps(ctx)
    if deps.store is not None:
        return deps.store
    if deps.store_factory is not None:
        return deps.store_factory(bootstrap, topic)
    from streamproc.kafka.control import make_store

    store: ControlStore = make_store(bootstrap, topic)
    return store


BootstrapOpt = Annotated[
    str,
    typer.Option(envvar="STREAMPROC_KAFKA_BOOTSTRAP", help="Kafka bootstrap servers"),
]
TopicOpt = Annotated[
    str, typer.Option("--topic", envvar="STREAMPROC_CONTROL_TOPIC", help="Control topic")
]
ReasonOpt = Annotated[str, typer.Option(help="Why (recorded in the history)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]
NameArg = Annotated[str, typer.Argument(help="Model name")]


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def _state_dict(s: DeploymentState) -> dict[str, Any]:
    return {
        "model": s.model,
        "stable": s.stable,
        "candidate": s.candidate,
        "previous": s.previous,
        "strategy": s.strategy.value if s.strategy else None,
        "status": s.status.value,
        "phase": s.phase,
        "candidate_percent": s.candidate_percent,
        "shadow": s.shadow,
        "loaded_versions": list(s.loaded_versions),
        "step": s.step,
        "params": {
            "percent": s.params.percent,
            "steps": list(s.params.steps),
            "step_min_seconds": s.params.step_min_seconds,
            "step_min_events": s.params.step_min_events,
            "variants": list(s.params.variants),
            "approval": s.params.approval,
            "guardrails": dict(s.params.guardrails),
        },
        "revision": s.revision,
        "updated": _iso(s.updated_ms),
        "updated_ms": s.updated_ms,
        "deployed_ms": s.deployed_ms,
        "step_started_ms": s.step_started_ms,
        "command": s.command,
        "actor": s.actor,
        "reason": s.reason,
    }


def _run(ctx: typer.Context, bootstrap: str, topic: str, command: DeploymentCommand) -> None:
    state = execute(_store(ctx, bootstrap, topic), command)
    typer.echo(state.summary())
    typer.echo(f"  {state.reason}")
    if state.status == "awaiting_approval":
        parent = ctx.parent.command_path if ctx.parent else ""
        typer.echo("  approve with: " + " ".join(filter(None, (parent, "approve", state.model))))


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None


def _guardrails(pairs: list[str] | None) -> tuple[tuple[str, Any], ...]:
    """``["max_p99_ms=50", "drift_statistic=ks"]`` -> (("max_p99_ms", 50.0), ...): numbers
    as numbers, ``none`` as None, anything else as text (the reducer validates the names)."""
    out = []
    for pair in pairs or []:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"--guardrail takes NAME=VALUE, got {pair!r}")
        value: Any = None if text.strip().lower() == "none" else text.strip()
        if value is not None:
            with contextlib.suppress(ValueError):  # not a number: text ("ks")
                value = float(value)
        out.append((name.strip(), value))
    return tuple(out)


@app.command("deploy")
def deploy(
    ctx: typer.Context,
    name: NameArg,
    version: Annotated[str, typer.Argument(help="Version to roll out (must be in the repo)")],
    strategy: Annotated[Strategy, typer.Option(help="How to roll it out")] = Strategy.CANARY,
    percent: Annotated[
        float, typer.Option(help="canary: candidate share; ab: share of the second variant")
    ] = 10.0,
    steps: Annotated[str, typer.Option(help="rollout: candidate share per step")] = "5,25,50,100",
    step_min_seconds: Annotated[
        float, typer.Option(help="Minimum time each step runs before moving on")
    ] = 300.0,
    step_min_events: Annotated[
        int, typer.Option(help="Minimum candidate events per step before moving on")
    ] = 1000,
    variants: Annotated[str, typer.Option(help="ab: names of stable,candidate")] = "A,B",
    approval: Annotated[bool, typer.Option(help="Promotion waits for `approve`")] = False,
    guardrail: Annotated[
        list[str] | None,
        typer.Option(
            "--guardrail",
            help="NAME=VALUE: this rollout's guardrail threshold over the processors' own "
            "(repeatable), e.g. max_p99_ms=50 or max_error_rate=0.02",
        ),
    ] = None,
    check_repo: Annotated[
        bool, typer.Option(help="Refuse versions the model repository does not hold")
    ] = True,
    reason: ReasonOpt = "",
    repo: RepoOpt = DEFAULT_ROOT,
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    topic: TopicOpt = DEFAULT_TOPIC,
) -> None:
    """Start rolling out VERSION of NAME (the first deployment makes it stable at once)."""
    if check_repo and not ModelRepository(repo).has(name, version):
        stored = ", ".join(str(v) for v in ModelRepository(repo).versions(name)) or "none"
        raise ModelError(
            f"{name} {version} is not in the model repository {repo} (stored: {stored}); "
            "add it with `streamproc models add`"
        )
    names = tuple(v.strip() for v in variants.split(","))
    if len(names) != 2:
        raise typer.BadParameter(f"--variants takes two names, got {variants!r}")
    params = StrategyParams(
        percent=percent,
        steps=_floats(steps, "--steps"),
        step_min_seconds=step_min_seconds,
        step_min_events=step_min_events,
        variants=(names[0], names[1]),
        approval=approval,
        guardrails=_guardrails(guardrail),
    )
    at = _deps(ctx).clock_ms()
    _run(ctx, bootstrap, topic, Deploy(name, version, strategy, params, at_ms=at, reason=reason))


@app.command("promote")
def promote(
    ctx: typer.Context,
    name: NameArg,
    reason: ReasonOpt = "",
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    topic: TopicOpt = DEFAULT_TOPIC,
) -> None:
    """Make the candidate stable (with --approval set at deploy: wait for `approve`)."""
    _run(ctx, bootstrap, topic, Promote(name, at_ms=_deps(ctx).clock_ms(), reason=reason))


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    name: NameArg,
    reason: ReasonOpt = "",
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    topic: TopicOpt = DEFAULT_TOPIC,
) -> None:
    """Drop the candidate; after a promotion, go back to the previous stable version."""
    _run(ctx, bootstrap, topic, Rollback(name, at_ms=_deps(ctx).clock_ms(), reason=reason))


@app.command("approve")
def approve(
    ctx: typer.Context,
    name: NameArg,
    reason: ReasonOpt = "",
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    topic: TopicOpt = DEFAULT_TOPIC,
) -> None:
    """Promote a rollout that awaits approval."""
    _run(ctx, bootstrap, topic, Approve(name, at_ms=_deps(ctx).clock_ms(), reason=reason))


@app.command("step")
def step(
    ctx: typer.Context,
    name: NameArg,
    reason: ReasonOpt = "",
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    topic: TopicOpt = DEFAULT_TOPIC,
) -> None:
    """Move a gradual rollout to its next step now, without waiting for its minimums."""
    _run(ctx, bootstrap, topic, Step(name, at_ms=_deps(ctx).clock_ms(), reason=reason))


@app.command("status")
def status(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Model name (default: all)")] = None,
    as_json: JsonOpt = False,
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    topic: TopicOpt = DEFAULT_TOPIC,
) -> None:
    """The current deployment of one model, or a line per deployed model."""
    store = _store(ctx, bootstrap, topic)
    names = [name] if name else store.names()
    states = []
    for n in names:
        state = store.latest(n)
        if state is None:
            raise DeploymentError(f"{n} has never been deployed")
        states.append(state)
    if as_json:
        typer.echo(json.dumps([_state_dict(s) for s in states], indent=2))
        return
    if not states:
        typer.echo("no deployments")
        return
    if name is None:
        for s in states:
            typer.echo(s.summary())
        return
    s = states[0]
    typer.echo(s.summary())
    rows = [
        ["stable", s.stable or "-"],
        ["candidate", s.candidate or "-"],
        ["strategy", str(s.strategy or "-")],
        ["phase", s.phase],
        ["candidate share", f"{s.candidate_percent:g}%" + (" (+ shadow)" if s.shadow else "")],
        ["loaded", ", ".join(s.loaded_versions)],
        ["approval gate", "on" if s.params.approval and s.in_progress else "off"],
        ["guardrails", ", ".join(f"{k}={v}" for k, v in s.params.guardrails) or "processors'"],
        ["updated", f"{_iso(s.updated_ms)} by {s.actor or '-'} ({s.command})"],
        ["reason", s.reason],
    ]
    typer.echo(table(rows))


@app.command("history")
def history(
    ctx: typer.Context,
    name: NameArg,
    as_json: JsonOpt = False,
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    topic: TopicOpt = DEFAULT_TOPIC,
) -> None:
    """Every recorded state of a model's deployment, oldest first (from the audit topic,
    ``<control topic>.audit``, which compaction never shortens)."""
    states = _store(ctx, bootstrap, topic).history(name)
    if not states:
        raise DeploymentError(f"{name} has never been deployed")
    if as_json:
        typer.echo(json.dumps([_state_dict(s) for s in states], indent=2))
        return
    rows = [
        ["REV", "TIME (UTC)", "COMMAND", "BY", "STATUS", "STABLE", "CANDIDATE", "SHARE", "REASON"]
    ]
    for s in states:
        rows.append(
            [
                str(s.revision),
                _iso(s.updated_ms),
                s.command or "-",
                s.actor or "-",
                str(s.status),
                s.stable or "-",
                s.candidate or "-",
                f"{s.candidate_percent:g}%",
                s.reason,
            ]
        )
    typer.echo(table(rows))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise DeploymentError(f"cannot read {path}: {exc}") from exc


class _FileSource:
    """A/B data from exported prediction records (and feedback labels), JSON lines."""

    def __init__(self, predictions: Path, labels: Path | None, positive_label: str) -> None:
        self.predictions = predictions
        self.labels = labels
        self.positive_label = positive_label

    def variants(self, state: DeploymentState) -> Any:
        truth = {}
        if self.labels is not None:
            truth = {str(r["event_id"]): str(r["label"]) for r in _read_jsonl(self.labels)}
        return variants_from_predictions(
            state,
            _read_jsonl(self.predictions),
            positive_label=self.positive_label,
            true_labels=truth,
        )


@app.command("ab-report")
def ab_report_cmd(
    ctx: typer.Context,
    name: NameArg,
    predictions: Annotated[
        Path | None,
        typer.Option(help="Prediction records as JSON lines (default: read from Kafka)"),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Feedback as JSON lines: event_id, label")
    ] = None,
    positive_label: Annotated[
        str | None, typer.Option(help="The positive label (default: the model's score label)")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("-c", "--config", help="Pipeline YAML (for the Kafka reader)")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Significance level")] = 0.05,
    as_json: JsonOpt = False,
    repo: RepoOpt = DEFAULT_ROOT,
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    topic: TopicOpt = DEFAULT_TOPIC,
) -> None:
    """Compare the two variants of a rollout: rates, scores, accuracy, latency, significance."""
    state = _store(ctx, bootstrap, topic).latest(name)
    if state is None or state.candidate is None or state.stable is None:
        raise DeploymentError(f"{name} has no candidate to compare with its stable version")
    source = _deps(ctx).ab_source
    if source is None and predictions is not None:
        source = _FileSource(predictions, labels, positive_label or _positive(repo, state))
    if source is None:
        if config is None:
            raise typer.BadParameter("give --predictions FILE or --config PIPELINE.yaml")
        from streamproc.config import load_config
        from streamproc.kafka.control import make_ab_source

        source = make_ab_source(load_config(config), name)
    a, b = source.variants(state)
    report = ab_report(a, b, alpha=alpha)
    if as_json:
        typer.echo(json.dumps({"model": name, **report.as_dict()}, indent=2))
        return
    typer.echo(f"{state.summary()}\n")
    typer.echo(render(report))


def _positive(repo: Path, state: DeploymentState) -> str:
    try:
        out = ModelRepository(repo).spec(state.model, state.stable or "").outputs
    except ModelError as exc:
        raise DeploymentError(f"{exc}; give --positive-label") from exc
    return out.labels[min(out.score_index, len(out.labels) - 1)]
