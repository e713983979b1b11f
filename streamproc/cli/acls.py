"""`streamproc acls plan | apply`: the least-privilege ACLs of a pipeline's principals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from streamproc.aclplan import READER_GROUP_PREFIX, AclEntry, Role
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

app = typer.Typer(no_args_is_help=True, help="Kafka ACLs: the least a principal needs.")

PrincipalOpt = Annotated[
    str, typer.Option("--principal", help="Who gets them, e.g. User:fraud-processor")
]
RoleOpt = Annotated[
    str,
    typer.Option(
        "--role",
        help="processor (streamproc run) | consumer (reads predictions) | alerts (reads alerts)",
    ),
]
GroupPrefixOpt = Annotated[
    str, typer.Option(help="consumer / alerts: the consumer groups' name prefix")
]
CreateTopicsOpt = Annotated[
    bool, typer.Option(help="processor: may also create its topics (else they must exist)")
]


def _plan(
    ctx: typer.Context,
    config: ConfigOpt,
    principal: str,
    role: str,
    group_prefix: str,
    create_topics: bool,
    bootstrap: str | None = None,
    kafka_config: KafkaConfigOpt = None,
    need: tuple[str, ...] = (),
) -> tuple[list[AclEntry], PipelineConfig]:
    from streamproc.aclplan import ROLES, plan

    if role not in ROLES:
        raise typer.BadParameter(f"choose one of {', '.join(ROLES)}", param_hint="--role")
    resolved = get_deps(ctx).pipeline(config, bootstrap, need=need, kafka_config=kafka_config)
    cfg = resolved.config
    r: Role = role  # type: ignore[assignment]  # checked against ROLES above
    from streamproc.models.spec import load_model_spec

    spec = load_model_spec(cfg.model)  # its window store's topics, if it has features
    entries = plan(cfg, principal, r, group_prefix=group_prefix, create_topics=create_topics,
                   model=spec.name, features=spec.features)  # fmt: skip
    return entries, cfg


def _show(entries: list[AclEntry], output: Output) -> None:
    if output is Output.JSON:
        emit([e.as_dict() for e in entries])
        return
    rows = [["RESOURCE", "NAME", "PATTERN", "OPERATION", "PRINCIPAL"]]
    rows += [[e.resource_type, e.name, e.pattern_type, e.operation, e.principal] for e in entries]
    typer.echo(table(rows))


@app.command("plan")
def plan_cmd(
    ctx: typer.Context,
    principal: PrincipalOpt,
    config: ConfigOpt = None,
    role: RoleOpt = "processor",
    group_prefix: GroupPrefixOpt = READER_GROUP_PREFIX,
    create_topics: CreateTopicsOpt = False,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Print the ACLs (ALLOW, any host) ``--principal`` needs for ``--role``; connects to
    nothing."""
    entries, _ = _plan(ctx, config, principal, role, group_prefix, create_topics)
    _show(entries, output)


@app.command("apply")
def apply_cmd(
    ctx: typer.Context,
    principal: PrincipalOpt,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    role: RoleOpt = "processor",
    group_prefix: GroupPrefixOpt = READER_GROUP_PREFIX,
    create_topics: CreateTopicsOpt = False,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Create the planned ACLs on the cluster (as the profile's principal: a super user or
    one with Alter on the cluster), then print them."""
    from streamproc.kafka.acls import create_acls

    entries, cfg = _plan(ctx, config, principal, role, group_prefix, create_topics,
                         bootstrap, kafka_config, ("kafka.bootstrap",))  # fmt: skip
    create_acls(cfg.kafka, entries)
    _show(entries, output)
