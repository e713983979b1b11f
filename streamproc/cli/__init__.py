"""streamproc: streaming inference on Kafka."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from streamproc.errors import StreamprocError

from . import (
    acls,
    alerts,
    deploy,
    dlq,
    features,
    models,
    pipeline,
    quotas,
    score,
    serve,
    stack,
    topics,
)
from .deps import Deps

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app.add_typer(stack.app, name="local")
app.add_typer(pipeline.schemas_app, name="schemas")
app.add_typer(pipeline.config_app, name="config")
app.command()(pipeline.run)
app.command()(pipeline.produce)
app.command()(pipeline.tail)
app.command()(serve.serve)
app.command()(score.score)
app.command("reply-server")(score.reply_server)
app.add_typer(models.app, name="models")
# The deployment verbs read as sentences at the top level: `streamproc deploy fraud 1.1.0`.
app.registered_commands.extend(deploy.app.registered_commands)
app.add_typer(alerts.app, name="alerts")
app.add_typer(dlq.app, name="dlq")
app.add_typer(acls.app, name="acls")
app.add_typer(features.app, name="features")
app.add_typer(topics.app, name="topics")
app.add_typer(quotas.app, name="quotas")

__all__ = ["Deps", "app", "main"]


def main() -> None:
    try:
        app(obj=Deps())
    except StreamprocError as exc:
        # Escaped: a message may hold brackets ("[topic=...]", pip install 'streamproc[serve]').
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
