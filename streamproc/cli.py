"""streamproc: streaming inference on Kafka."""

from __future__ import annotations

import base64
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from streamproc.errors import ConfigError, StreamprocError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
local_app = typer.Typer(no_args_is_help=True, help="A real Kafka broker and schema registry here.")
schemas_app = typer.Typer(no_args_is_help=True, help="Avro schemas in the registry.")
app.add_typer(local_app, name="local")
app.add_typer(schemas_app, name="schemas")
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("-c", "--config", help="Pipeline YAML file")]
BootstrapOpt = Annotated[str | None, typer.Option(help="Kafka bootstrap servers")]
RegistryOpt = Annotated[str | None, typer.Option(help="Schema registry URL")]


def services(bootstrap: str | None, registry: str | None) -> tuple[str, str]:
    """Addresses from options, else the environment, else the running local stack."""
    import os

    from streamproc.local import LocalStack

    bootstrap = bootstrap or os.environ.get("STREAMPROC_KAFKA_BOOTSTRAP")
    registry = registry or os.environ.get("STREAMPROC_SCHEMA_REGISTRY_URL")
    if bootstrap and registry:
        return bootstrap, registry
    info = LocalStack().status()
    if info is None:
        raise ConfigError(
            "no Kafka / registry given: pass --bootstrap and --registry, set "
            "STREAMPROC_KAFKA_BOOTSTRAP and STREAMPROC_SCHEMA_REGISTRY_URL, or run "
            "`streamproc local up`"
        )
    return bootstrap or info.bootstrap, registry or info.schema_registry


def pipeline_config(config: Path | None, bootstrap: str | None, registry: str | None) -> Any:
    from streamproc.config import KafkaSettings, PipelineConfig, RegistrySettings, load_config

    cfg = load_config(config) if config else PipelineConfig.model_validate(
        {"name": "fraud", "model": "deploy/models/fraud/1.0.0",
         "topics": {"input": "transactions"}})  # fmt: skip
    b, r = services(bootstrap or _set_or_none(cfg.kafka.bootstrap, KafkaSettings().bootstrap),
                    registry or _set_or_none(cfg.registry.url, RegistrySettings().url))  # fmt: skip
    return cfg.with_overrides(
        kafka=cfg.kafka.model_copy(update={"bootstrap": b}),
        registry=cfg.registry.model_copy(update={"url": r}),
    )


def _set_or_none(value: str, default: str) -> str | None:
    return None if value == default else value


# -- local stack ----------------------------------------------------------------------------


@local_app.command("up")
def local_up(
    kafka_port: Annotated[
        int | None, typer.Option(help="Broker port (default: a free one)")
    ] = None,
    registry_port: Annotated[int | None, typer.Option(help="Registry port")] = None,
    fresh: Annotated[bool, typer.Option(help="Wipe the broker's data first")] = False,
) -> None:
    """Start the local stack in the background (or reuse it); print where it listens."""
    from streamproc.local import LocalStack

    info = LocalStack().up(kafka_port=kafka_port, registry_port=registry_port, fresh=fresh)
    print(json.dumps(info.public()))


@local_app.command("status")
def local_status() -> None:
    """Print the running stack as JSON; exit 1 when it is not running."""
    from streamproc.local import LocalStack

    info = LocalStack().status()
    if info is None:
        err.print("the local stack is not running (start it with `streamproc local up`)")
        raise typer.Exit(1)
    print(json.dumps({**info.public(), "kafka_pid": info.kafka_pid,
                      "registry_pid": info.registry_pid}))  # fmt: skip


@local_app.command("down")
def local_down() -> None:
    """Stop the local stack; nothing is left running."""
    from streamproc.local import LocalStack

    stopped = LocalStack().down()
    err.print("stopped" if stopped else "nothing was running")


# -- schemas --------------------------------------------------------------------------------


@schemas_app.command("apply")
def schemas_apply(
    config: ConfigOpt = None, bootstrap: BootstrapOpt = None, registry: RegistryOpt = None
) -> None:
    """Register the input and output schemas of a pipeline (BACKWARD on the input)."""
    from streamproc.kafka.configuration import registry_config
    from streamproc.kafka.registry import Registry
    from streamproc.pipeline.app import apply_schemas

    cfg = pipeline_config(config, bootstrap, registry)
    print(json.dumps(apply_schemas(Registry(registry_config(cfg.registry)), cfg)))


# -- run / produce / tail -------------------------------------------------------------------


@app.command()
def run(
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    registry: RegistryOpt = None,
    instance: Annotated[str | None, typer.Option(help="Replica id (unique per replica)")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port (0: free)")] = None,
    guarantee: Annotated[str | None, typer.Option(help="at-least-once | exactly-once")] = None,
    log_level: Annotated[str, typer.Option(help="Log level")] = "INFO",
) -> None:
    """Run a processor until SIGTERM / SIGINT (then finish the batch, flush, commit)."""
    from streamproc.pipeline.app import build_processor, settle_collector

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore"):  # one line per registry request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = pipeline_config(config, bootstrap, registry)
    changes: dict[str, Any] = {}
    if instance:
        changes["instance_id"] = instance
    if metrics_port is not None:
        changes["metrics"] = cfg.metrics.model_copy(update={"port": metrics_port})
    if guarantee:
        changes["delivery"] = cfg.delivery.model_copy(update={"guarantee": guarantee})
    cfg = cfg.with_overrides(**changes)
    proc = build_processor(cfg)
    settle_collector()  # the frozen start-up and a high young threshold (see its docs)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: proc.stop())
    if proc.metrics_port is not None:
        err.print(f"metrics: http://{cfg.metrics.host}:{proc.metrics_port}/metrics")
    err.print(f"processing {cfg.topics.input} -> {cfg.topics.predictions} "
              f"({cfg.delivery.guarantee})")  # fmt: skip
    proc.run()
    c = proc.counters
    err.print(f"stopped: {c.events_in} in, {c.events_out} predictions, "
              f"{sum(c.rejected.values())} dead letters")  # fmt: skip


@app.command()
def produce(
    topic: Annotated[str, typer.Option(help="Input topic")] = "transactions",
    count: Annotated[int, typer.Option("-n", "--count", help="Events to produce")] = 10_000,
    rate: Annotated[float | None, typer.Option(help="Target events/s (default: max)")] = None,
    malformed: Annotated[float, typer.Option(help="Fraction of malformed events")] = 0.0,
    shift: Annotated[float, typer.Option(help="Distribution shift in sigmas")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    bootstrap: BootstrapOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Produce synthetic Transaction events through the registry; print a JSON report."""
    from streamproc.kafka.clients import EventProducer
    from streamproc.loadgen import produce_synthetic

    b, r = services(bootstrap, registry)
    with EventProducer(b, r, topic) as producer:
        report = produce_synthetic(producer, count, rate=rate, malformed=malformed,
                                   shift=shift, seed=seed)  # fmt: skip
    print(json.dumps(report.as_dict()))


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


@app.command()
def tail(
    topic: str,
    count: Annotated[int, typer.Option("-n", "--count", help="Stop after N records")] = 10,
    timeout: Annotated[float, typer.Option(help="Stop after this many idle seconds")] = 5.0,
    bootstrap: BootstrapOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Print decoded records of a topic as JSON lines (from the beginning)."""
    from streamproc.kafka.clients import RecordConsumer

    b, r = services(bootstrap, registry)
    seen = 0
    with RecordConsumer(b, r, topic) as consumer:
        while seen < count:
            batch = consumer.poll_batch(count - seen, timeout_s=timeout)
            if not batch:
                break
            for _msg, rec in batch:
                print(json.dumps(_jsonable(rec)))
                seen += 1


def _mount_optional() -> None:
    """Sub-apps of other packages (models, deploy, alerts)."""
    import importlib

    for module, name in (("streamproc.cli_models", "models"), ("streamproc.cli_deploy", None),
                         ("streamproc.cli_alerts", "alerts"),
                         ("streamproc.cli_dlq", "dlq")):  # fmt: skip
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        if name is None:
            app.registered_commands.extend(mod.app.registered_commands)
            app.registered_groups.extend(mod.app.registered_groups)
        else:
            app.add_typer(mod.app, name=name)


_mount_optional()


def main() -> None:
    try:
        app()
    except StreamprocError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
