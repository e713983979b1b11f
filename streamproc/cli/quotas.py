"""`streamproc quotas apply | show`: Kafka client quotas of the pipeline's tenants."""

from __future__ import annotations

from collections.abc import Mapping

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

app = typer.Typer(no_args_is_help=True, help="Kafka client quotas of the pipeline's tenants.")


def _fmt(values: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items()) or "-"  # fmt: skip


@app.command("apply")
def apply_cmd(
    ctx: typer.Context,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Set the quotas of every tenant the pipeline lists (``tenants:``) on its principal
    and/or client id, removing the rates it leaves out (as a principal with AlterConfigs on
    the cluster), then print them."""
    from streamproc.kafka.quotas import apply_quotas

    cfg = get_deps(ctx).pipeline(config, bootstrap, need=("kafka.bootstrap",),
                                 kafka_config=kafka_config).config  # fmt: skip
    done = apply_quotas(cfg.kafka, cfg.tenants)
    if output is Output.JSON:
        emit([c.as_dict() for c in done])
        return
    rows = [["TENANT", "ENTITY", "SET", "REMOVED"]]
    rows += [[c.tenant, _fmt(c.entity), _fmt(c.set), ", ".join(c.removed) or "-"]
             for c in done]  # fmt: skip
    typer.echo(table(rows) if done else "no tenants in the pipeline config")


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Print every client quota the cluster has."""
    from streamproc.kafka.quotas import describe_quotas

    cfg = get_deps(ctx).pipeline(config, bootstrap, need=("kafka.bootstrap",),
                                 kafka_config=kafka_config).config  # fmt: skip
    quotas = describe_quotas(cfg.kafka)
    if output is Output.JSON:
        emit(quotas)
        return
    rows = [["ENTITY", "QUOTAS"]]
    rows += [[", ".join(f"{k}={v}" for k, v in q["entity"].items()), _fmt(q["values"])]
             for q in quotas]  # fmt: skip
    typer.echo(table(rows))
