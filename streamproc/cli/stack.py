"""``streamproc local``: a real Kafka broker and schema registry on this machine."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="A real Kafka broker and schema registry here.")
err = Console(stderr=True)


@app.command("up")
def local_up(
    kafka_port: Annotated[
        int | None,
        typer.Option(help="Broker port (default: the remembered one, else a free one)"),
    ] = None,
    registry_port: Annotated[
        int | None,
        typer.Option(help="Registry port (default: the remembered one, else a free one)"),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(help="Wipe the broker's data and the registry's schemas; pick new ports"),
    ] = False,
    secure: Annotated[
        bool,
        typer.Option(
            help="Add a SASL_SSL listener (SCRAM-SHA-512, a generated CA) with ACLs enforced; "
            "print the admin user's client properties file (kcat -F, --kafka-config)"
        ),
    ] = False,
    oauth_jwks_url: Annotated[
        str | None,
        typer.Option(
            help="With --secure: the SASL_SSL listener takes OAUTHBEARER tokens too, checked "
            "against this OpenID Connect issuer's JWKS (principal User:<sub>)"
        ),
    ] = None,
    oauth_audience: Annotated[
        str | None, typer.Option(help="With --oauth-jwks-url: the tokens' required aud")
    ] = None,
    oauth_issuer: Annotated[
        str | None, typer.Option(help="With --oauth-jwks-url: the tokens' required iss")
    ] = None,
) -> None:
    """Start what is down of the local stack (on its remembered ports); print where it
    listens."""
    from streamproc.errors import ConfigError
    from streamproc.local import LocalStack
    from streamproc.local.broker import OAuthValidation

    if oauth_jwks_url and not secure:
        raise ConfigError("--oauth-jwks-url needs --secure (OAUTHBEARER is on the SASL_SSL "
                          "listener)")  # fmt: skip
    if (oauth_audience or oauth_issuer) and not oauth_jwks_url:
        given = "--oauth-audience" if oauth_audience else "--oauth-issuer"
        raise ConfigError(f"{given} needs --oauth-jwks-url (the tokens' checks go with "
                          "the issuer's keys)")  # fmt: skip
    oauth = (
        OAuthValidation(oauth_jwks_url, oauth_audience, oauth_issuer) if oauth_jwks_url else None
    )
    info = LocalStack().up(
        kafka_port=kafka_port, registry_port=registry_port, fresh=fresh, secure=secure,
        oauth=oauth,
    )  # fmt: skip
    print(json.dumps(info.public()))


@app.command("status")
def local_status() -> None:
    """Print the running stack as JSON; exit 1 when it is not running."""
    from streamproc.local import LocalStack

    info = LocalStack().status()
    if info is None:
        err.print("the local stack is not running (start it with `streamproc local up`)")
        raise typer.Exit(1)
    print(json.dumps({**info.public(), "kafka_pid": info.kafka_pid,
                      "registry_pid": info.registry_pid}))  # fmt: skip


@app.command("down")
def local_down() -> None:
    """Stop the local stack; nothing is left running."""
    from streamproc.local import LocalStack

    stopped = LocalStack().down()
    err.print("stopped" if stopped else "nothing was running")
