"""`streamproc topics plan | apply`: a pipeline's topics as its ``topics.policy`` makes them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from streamproc.cli.deps import deps as get_deps
from streamproc.cli.options import (
    BootstrapOpt,
    ConfigOpt,
    KafkaConfigOpt,
    Output,
    OutputOpt,
    emit,
    table,
)

if TYPE_CHECKING:
    from streamproc.config import PipelineConfig
    from streamproc.topicplan import TopicChange

app = typer.Typer(
    no_args_is_help=True,
    help="Topics: replication factor, min.insync.replicas, retention and cleanup policy "
    "from the pipeline config (topics.policy).",
)


def _show(changes: list[TopicChange], output: Output) -> None:
    if output is Output.JSON:
        emit([c.as_dict() for c in changes])
        return
    rows = [["TOPIC", "KIND", "ACTION", "PARTITIONS", "RF", "CHANGES"]]
    for c in changes:
        what = ", ".join(f"{k}: {a or '-'} -> {b}" for k, (a, b) in c.changes.items())
        rf = "broker default" if c.replication_factor is None else str(c.replication_factor)
        rows.append([c.topic, c.kind, c.action, str(c.partitions), rf, what])
    typer.echo(table(rows))
    for c in changes:
        for note in c.notes:
            typer.echo(f"note: {c.topic}: {note}")


@app.command("plan")
def plan_cmd(
    ctx: typer.Context,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Print what ``apply`` would do to each topic of the pipeline; changes nothing."""
    from streamproc.kafka.topics import plan

    resolved = get_deps(ctx).pipeline(config, bootstrap, need=("kafka.bootstrap",),
                                      kafka_config=kafka_config)  # fmt: skip
    _show(plan(resolved.config, **_store_topics(resolved.config)), output)


@app.command("apply")
def apply_cmd(
    ctx: typer.Context,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Create the pipeline's missing topics and set the policy's configs on existing ones
    (as a principal with Create, DescribeConfigs and AlterConfigs on them), then print
    what was done."""
    from streamproc.kafka.topics import apply

    resolved = get_deps(ctx).pipeline(config, bootstrap, need=("kafka.bootstrap",),
                                      kafka_config=kafka_config)  # fmt: skip
    _show(apply(resolved.config, **_store_topics(resolved.config)), output)


def _store_topics(cfg: PipelineConfig) -> dict[str, Any]:
    """The pipeline model's window store, whose topics the plan includes (``features:``)."""
    from streamproc.models.spec import load_model_spec

    spec = load_model_spec(cfg.model)
    return {"model": spec.name, "features": spec.features}
