"""``streamproc serve``: the pipeline's model over HTTP (the Open Inference Protocol and a
records route), micro-batched like the stream, following the control topic's rollouts."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console

from streamproc.cli.deps import deps as get_deps
from streamproc.cli.options import BootstrapOpt, ConfigOpt, KafkaConfigOpt
from streamproc.errors import DependencyMissingError

err = Console(stderr=True)


def serve(
    ctx: typer.Context,
    config: ConfigOpt = None,
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: serving.host)")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default: serving.port; 0: a free one)")
    ] = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    control: Annotated[
        bool,
        typer.Option(
            "--control/--no-control",
            help="Follow the control topic's deployment of the model (needs Kafka); "
            "--no-control serves the configured model version alone, without Kafka (its "
            "alerts go to the log, the webhook and /metrics, not to the alerts topic)",
        ),
    ] = True,
    instance: Annotated[str | None, typer.Option(help="Replica id it reports as")] = None,
    log_level: Annotated[str, typer.Option(help="Log level")] = "INFO",
) -> None:
    """Serve the pipeline's model over HTTP until SIGTERM / SIGINT (then answer every
    accepted request). KServe v2: /v2/models/NAME/infer; records: /v1/models/NAME:predict."""
    from streamproc.backends.select import missing

    for module in ("fastapi", "uvicorn"):
        if missing(module, "serve") is not None:
            raise DependencyMissingError(module, "serve")
    from streamproc.pipeline.app import settle_collector
    from streamproc.serving.http import run_server
    from streamproc.serving.service import build_service

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    need = ("kafka.bootstrap",) if control else ()
    resolved = get_deps(ctx).pipeline(config, bootstrap, None, need=need, strict=control,
                                      kafka_config=kafka_config)  # fmt: skip
    cfg = resolved.config
    service = build_service(cfg, follow_control=control, instance=instance or "")
    settle_collector()  # as `run`: the start-up's objects frozen, fewer young collections
    s = cfg.serving
    name = service.name

    def bound(h: str, p: int) -> None:
        where = f"http://{h}:{p}"
        routes = (
            f"v2: {where}/v2/models/{name}/infer, "
            f"records: {where}/v1/models/{name}:predict, metrics: {where}/metrics"
        )
        err.print(f"serving {name} {service.base_scorer.primary.version} on {where} ({routes})",
                  highlight=False, soft_wrap=True)  # fmt: skip

    run_server(service, host or s.host, s.port if port is None else port,
               log_level=log_level, on_bound=bound)  # fmt: skip
    err.print("stopped: every accepted request answered")
