"""`streamproc alerts tail`: follow the alerts topic."""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Drift, data-quality and rollout alerts.")


@app.command("tail")
def tail(
    topic: Annotated[str, typer.Option(help="Alerts topic")] = "streamproc.alerts",
    severity: Annotated[str | None, typer.Option(help="Floor: INFO, WARNING, CRITICAL")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model")] = None,
    count: Annotated[int, typer.Option("-n", "--count", help="Stop after N alerts")] = 100,
    timeout: Annotated[float, typer.Option(help="Stop after this many idle seconds")] = 5.0,
    bootstrap: Annotated[str | None, typer.Option()] = None,
    registry: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Print alerts as JSON lines, oldest first."""
    from streamproc.cli import services
    from streamproc.kafka.alerts import AlertSubscription

    b, r = services(bootstrap, registry)
    seen = 0
    sub = AlertSubscription(b, r, topic, severity=severity, model=model)
    with sub:
        while seen < count:
            batch = sub.poll_batch(count - seen, timeout_s=timeout)
            if not batch:
                break
            for _, rec in batch:
                if sub.keep(rec):
                    print(json.dumps({k: v for k, v in rec.items() if k != "time"}
                                     | {"time": str(rec["time"])}))  # fmt: skip
                    seen += 1
