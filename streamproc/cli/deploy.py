"""``streamproc`` deployment commands: deploy, promote, roll back, approve; status, history.

Every command reads the model's latest state from the control topic, applies one command
with the pure reducer (:func:`streamproc.rollout.state.apply`) and publishes the resulting
snapshot; every processor replica follows the topic from its start, and reports what it
serves (``status`` shows it). The address and the control topic resolve like every
command's (:mod:`streamproc.cli.resolve`: option, environment, ``-c`` pipeline file, local
stack); the store comes from the context's :class:`~streamproc.cli.deps.Deps`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from streamproc.cli.deps import Deps
from streamproc.cli.deps import deps as get_deps
from streamproc.cli.models import RepoOpt
from streamproc.cli.options import (
    BootstrapOpt,
    ConfigOpt,
    JsonOpt,
    KafkaConfigOpt,
    Output,
    OutputOpt,
    emit,
    table,
    wants_json,
)
from streamproc.errors import DeploymentError, ModelError
from streamproc.models.diff import input_changes
from streamproc.models.repository import DEFAULT_ROOT, ModelRepository
from streamproc.rollout.ab import ab_report, render, variants_from_predictions
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

TopicOpt = Annotated[
    str | None,
    typer.Option(
        "--topic",
        help="Control topic (else $STREAMPROC_CONTROL_TOPIC, the pipeline file, "
        "streamproc.control)",
    ),
]
ReasonOpt = Annotated[str, typer.Option(help="Why (recorded in the history)")]
NameArg = Annotated[str, typer.Argument(help="Model name")]
# A replica whose last report is older than this many heartbeats is shown as silent.
STALE_HEARTBEATS = 3
HEARTBEAT_MS = 5_000


def _store(
    ctx: typer.Context,
    config: Path | None,
    bootstrap: str | None,
    topic: str | None,
    kafka_config: Path | None = None,
) -> ControlStore:
    d = get_deps(ctx)
    if d.store is not None:
        return d.store
    resolved = d.pipeline(config, bootstrap, need=("kafka.bootstrap",), kafka_config=kafka_config)
    return d.store_factory(resolved.config.kafka, topic or resolved.config.topics.control)


def _actor(
    ctx: typer.Context, config: Path | None, bootstrap: str | None, kafka_config: Path | None
) -> str:
    """Who issues a command: the authenticated principal when the connection profile logs
    in with SASL (``User:<sasl_username>``, as the broker's ACLs name it), else the OS user
    (a PLAINTEXT cluster authenticates no one)."""
    import getpass

    d = get_deps(ctx)
    if d.actor is not None:
        return d.actor
    profile = d.pipeline(config, bootstrap, need=(), strict=False, kafka_config=kafka_config)
    k = profile.config.kafka
    if k.security_protocol.startswith("SASL") and k.sasl_username:
        return f"User:{k.sasl_username}"
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "operator"


def _check_approver(
    ctx: typer.Context,
    verb: str,
    name: str,
    actor: str,
    config: Path | None,
    bootstrap: str | None,
    kafka_config: Path | None,
) -> None:
    """Refuse ``actor`` unless the pipeline's ``rollout.approvers`` is empty or names it."""
    d = get_deps(ctx)
    resolved = d.pipeline(config, bootstrap, need=(), strict=False, kafka_config=kafka_config)
    approvers = resolved.config.rollout.approvers
    if approvers and actor not in approvers:
        raise DeploymentError(
            f"{actor} may not {verb} {name}: rollout.approvers of {resolved.origin} allows "
            f"only {', '.join(approvers)}; ask one of them, or connect as one "
            "(--kafka-config with their credentials)"
        )


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


def _run(ctx: typer.Context, store: ControlStore, command: DeploymentCommand) -> None:
    state = execute(store, command)
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


def _check_in_repo(repo: Path, name: str, version: str) -> None:
    if not ModelRepository(repo).has(name, version):
        stored = ", ".join(str(v) for v in ModelRepository(repo).versions(name)) or "none"
        raise ModelError(
            f"{name} {version} is not in the model repository {repo} (stored: {stored}); "
            "add it with `streamproc models add`"
        )


def _check_same_inputs(repo: Path, name: str, stable: str, version: str) -> None:
    """Refuse a rollout of a version whose input matrix differs from the stable's: the
    pipeline builds one matrix (the processors would keep the version off traffic)."""
    models = ModelRepository(repo)
    if not models.has(name, stable):
        return  # a stable from elsewhere: the processors check when they load the version
    changed = input_changes(models.spec(name, stable), models.spec(name, version))
    if changed:
        lines = "\n".join(f"  {c.describe()}" for c in changed)
        raise ModelError(
            f"{name} {version} reads other inputs than the stable {stable}, and a rollout "
            f"scores every version from the one input matrix its pipeline builds:\n{lines}\n"
            f"Run {version} in a pipeline of its own (its model in the pipeline's YAML), "
            "or roll it out in the pipeline it was trained for."
        )


# The options that mean something to only some strategies; given to another, they are refused
# rather than ignored.
_USED_BY = {
    "percent": (Strategy.CANARY, Strategy.AB),
    "steps": (Strategy.ROLLOUT,),
    "variants": (Strategy.AB,),
}


def _refuse_unused(strategy: Strategy, **given: object) -> None:
    for option, strategies in _USED_BY.items():
        if given[option] is not None and strategy not in strategies:
            uses = " and ".join(str(s) for s in strategies)
            raise typer.BadParameter(
                f"--{option} applies to {uses} only, not to {strategy}", param_hint=f"--{option}"
            )


def _seed_from_pipeline(d: Deps, store: ControlStore, config: Path, name: str) -> None:
    """Publish the pipeline's configured model as the stable version, as its processor
    does at start, so that a rollout can run against it before any processor started."""
    from streamproc.models.spec import load_model_spec

    spec = load_model_spec(d.pipeline(config, need=()).config.model)
    if spec.name != name:
        raise DeploymentError(f"the pipeline {config} serves {spec.name}, not {name}")
    execute(store, Deploy(name, spec.version, at_ms=d.clock_ms(), if_revision=0,
                          reason=f"the configured model of {config}"))  # fmt: skip


@app.command("deploy")
def deploy(
    ctx: typer.Context,
    name: NameArg,
    version: Annotated[str, typer.Argument(help="Version to roll out (must be in the repo)")],
    strategy: Annotated[
        Strategy | None,
        typer.Option(
            help="How to roll it out against the stable version (default: canary). A model "
            "with no stable version yet takes VERSION as stable, without a strategy."
        ),
    ] = None,
    percent: Annotated[
        float | None,
        typer.Option(help="canary: candidate share; ab: share of the second variant [10]"),
    ] = None,
    steps: Annotated[
        str | None, typer.Option(help="rollout: candidate share per step [5,25,50,100]")
    ] = None,
    step_min_seconds: Annotated[
        float, typer.Option(help="Minimum time each step runs before moving on")
    ] = 300.0,
    step_min_events: Annotated[
        int, typer.Option(help="Minimum candidate events per step before moving on")
    ] = 1000,
    variants: Annotated[
        str | None, typer.Option(help="ab: names of stable,candidate [A,B]")
    ] = None,
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
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    topic: TopicOpt = None,
) -> None:
    """Roll out VERSION of NAME against its stable version (by default a canary).

    With -c PIPELINE and no stable version yet, the pipeline's configured model becomes
    the stable version first (as its processor does when it starts)."""
    if check_repo:
        _check_in_repo(repo, name, version)
    step_shares = None if steps is None else _floats(steps, "--steps")
    _refuse_unused(strategy or Strategy.CANARY, percent=percent, steps=steps, variants=variants)
    defaults = StrategyParams()
    names = tuple(v.strip() for v in variants.split(",")) if variants else defaults.variants
    if len(names) != 2:
        raise typer.BadParameter(f"--variants takes two names, got {variants!r}")
    params = StrategyParams(
        percent=defaults.percent if percent is None else percent,
        steps=defaults.steps if step_shares is None else step_shares,
        step_min_seconds=step_min_seconds,
        step_min_events=step_min_events,
        variants=(names[0], names[1]),
        approval=approval,
        guardrails=_guardrails(guardrail),
    )
    d = get_deps(ctx)
    store = _store(ctx, config, bootstrap, topic, kafka_config)
    if strategy is not None and config is not None and store.latest(name) is None:
        _seed_from_pipeline(d, store, config, name)
    current = store.latest(name)
    if check_repo and current is not None and current.stable not in (None, version):
        _check_same_inputs(repo, name, current.stable or "", version)
    command = Deploy(name, version, strategy, params, at_ms=d.clock_ms(), reason=reason,
                     actor=_actor(ctx, config, bootstrap, kafka_config))  # fmt: skip
    _run(ctx, store, command)


def _simple(verb: str, command: type[Promote | Approve | Step], doc: str) -> None:
    """Register a command that applies ``command`` to a model: NAME, --reason and where."""

    def run(
        ctx: typer.Context,
        name: NameArg,
        reason: ReasonOpt = "",
        config: ConfigOpt = None,
        bootstrap: BootstrapOpt = None,
        kafka_config: KafkaConfigOpt = None,
        topic: TopicOpt = None,
    ) -> None:
        at = get_deps(ctx).clock_ms()
        actor = _actor(ctx, config, bootstrap, kafka_config)
        if command is not Step:  # promote, approve: the pipeline may say who may
            _check_approver(ctx, verb, name, actor, config, bootstrap, kafka_config)
        store = _store(ctx, config, bootstrap, topic, kafka_config)
        _run(ctx, store, command(name, at_ms=at, reason=reason, actor=actor))

    run.__doc__ = doc
    app.command(verb)(run)


_simple(
    "promote",
    Promote,
    "Make the candidate stable (with --approval set at deploy: wait for `approve`).",
)
_simple("approve", Approve, "Promote a rollout that awaits approval.")
_simple(
    "step", Step, "Move a gradual rollout to its next step now, without waiting for its minimums."
)


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    name: NameArg,
    to: Annotated[
        str | None,
        typer.Option(help="Make this earlier stable version stable again (see `history`)"),
    ] = None,
    reason: ReasonOpt = "",
    check_repo: Annotated[
        bool, typer.Option(help="Refuse a --to version the model repository does not hold")
    ] = True,
    repo: RepoOpt = DEFAULT_ROOT,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    topic: TopicOpt = None,
) -> None:
    """Drop the candidate, or go back to the previous (or --to an earlier) stable version."""
    store = _store(ctx, config, bootstrap, topic, kafka_config)
    if to is not None:
        earlier = [s.stable for s in store.history(name) if s.stable]
        if to not in earlier:
            was = ", ".join(dict.fromkeys(earlier)) or "none"
            raise DeploymentError(f"{name}: {to} was never its stable version (stable so far: "
                                  f"{was})")  # fmt: skip
        if check_repo:
            _check_in_repo(repo, name, to)
    at = get_deps(ctx).clock_ms()
    actor = _actor(ctx, config, bootstrap, kafka_config)
    _run(ctx, store, Rollback(name, at_ms=at, reason=reason, to=to, actor=actor))


def _replica_dicts(store: ControlStore, model: str) -> list[dict[str, Any]]:
    return [
        {
            "instance": r.instance,
            "pipeline": r.pipeline,
            "revision": r.revision,
            "stable": r.stable,
            "candidate": r.candidate,
            "candidate_percent": r.candidate_percent,
            "shadow": r.shadow,
            "serving": r.serving(),
            "applied_ms": r.applied_ms,
            "updated_ms": r.updated_ms,
        }
        for r in store.replicas()
        if r.model == model
    ]


@app.command("status")
def status(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Model name (default: all)")] = None,
    output: OutputOpt = Output.TEXT,
    json_flag: JsonOpt = False,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    topic: TopicOpt = None,
) -> None:
    """One model's deployment and what each replica serves, or a line per model."""
    store = _store(ctx, config, bootstrap, topic, kafka_config)
    names = [name] if name else store.names()
    states = []
    for n in names:
        state = store.latest(n)
        if state is None:
            raise DeploymentError(f"{n} has never been deployed")
        states.append(state)
    if wants_json(output, json_flag):
        emit([{**_state_dict(s), "replicas": _replica_dicts(store, s.model)} for s in states])
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
    now = get_deps(ctx).clock_ms()
    replicas = [r for r in store.replicas() if r.model == s.model]
    typer.echo(f"replicas ({len(replicas)} reporting):")
    for r in replicas:
        line = r.describe(now, STALE_HEARTBEATS * HEARTBEAT_MS)
        behind = "" if r.revision >= s.revision else f" [behind: revision {s.revision} pending]"
        typer.echo(f"  {line}{behind}")
    if not replicas:
        typer.echo("  none: no processor of this model is running")


@app.command("history")
def history(
    ctx: typer.Context,
    name: NameArg,
    output: OutputOpt = Output.TEXT,
    json_flag: JsonOpt = False,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    topic: TopicOpt = None,
) -> None:
    """Every recorded state of a model's deployment, oldest first.

    Read from the audit topic, ``<control topic>.audit``, which compaction never shortens."""
    states = _store(ctx, config, bootstrap, topic, kafka_config).history(name)
    if not states:
        raise DeploymentError(f"{name} has never been deployed")
    if wants_json(output, json_flag):
        emit([_state_dict(s) for s in states])
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
    config: ConfigOpt = None,
    alpha: Annotated[float, typer.Option(help="Significance level")] = 0.05,
    output: OutputOpt = Output.TEXT,
    json_flag: JsonOpt = False,
    repo: RepoOpt = DEFAULT_ROOT,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    topic: TopicOpt = None,
) -> None:
    """Compare the two variants of a rollout: rates, scores, accuracy, latency, significance."""
    state = _store(ctx, config, bootstrap, topic, kafka_config).latest(name)
    if state is None or state.candidate is None or state.stable is None:
        raise DeploymentError(f"{name} has no candidate to compare with its stable version")
    d = get_deps(ctx)
    source = d.ab_source
    if source is None and predictions is not None:
        source = _FileSource(predictions, labels, positive_label or _positive(repo, state))
    if source is None:
        if config is None:
            raise typer.BadParameter("give --predictions FILE or --config PIPELINE.yaml")
        from streamproc.kafka.control import make_ab_source

        cfg = d.pipeline(config, bootstrap, kafka_config=kafka_config).config
        source = make_ab_source(cfg, name)
    a, b = source.variants(state)
    report = ab_report(a, b, alpha=alpha)
    if wants_json(output, json_flag):
        emit({"model": name, **report.as_dict()})
        return
    typer.echo(f"{state.summary()}\n")
    typer.echo(render(report))


def _positive(repo: Path, state: DeploymentState) -> str:
    try:
        out = ModelRepository(repo).spec(state.model, state.stable or "").outputs
    except ModelError as exc:
        raise DeploymentError(f"{exc}; give --positive-label") from exc
    return out.labels[min(out.score_index, len(out.labels) - 1)]
