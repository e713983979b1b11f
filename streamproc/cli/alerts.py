"""`streamproc alerts tail`: follow the alerts topic."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from streamproc.cli.deps import deps as get_deps
from streamproc.cli.options import BootstrapOpt, ConfigOpt, KafkaConfigOpt, RegistryOpt

app = typer.Typer(no_args_is_help=True, help="Drift, data-quality and rollout alerts.")


@app.command("tail")
def tail(
    ctx: typer.Context,
    topic: Annotated[
        str | None, typer.Option(help="Alerts topic (default: the pipeline's, streamproc.alerts)")
    ] = None,
    severity: Annotated[str | None, typer.Option(help="Floor: INFO, WARNING, CRITICAL")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model")] = None,
    count: Annotated[int, typer.Option("-n", "--count", help="Stop after N alerts")] = 100,
    timeout: Annotated[float, typer.Option(help="Stop after this many idle seconds")] = 5.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Print alerts as JSON lines, oldest first."""
    from streamproc.kafka.alerts import AlertSubscription

    cfg = get_deps(ctx).pipeline(config, bootstrap, registry, kafka_config=kafka_config).config
    seen = 0
    sub = AlertSubscription(cfg.kafka, cfg.registry, topic or cfg.topics.alerts,
                            severity=severity, model=model)  # fmt: skip
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
