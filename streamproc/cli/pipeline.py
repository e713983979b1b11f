"""Commands that run or feed a pipeline: ``run``, ``produce``, ``tail``, ``schemas apply``,
``config show``."""

from __future__ import annotations

import base64
import json
import logging
import signal
from typing import Annotated, Any

import typer
from rich.console import Console

from streamproc.cli.deps import deps as get_deps
from streamproc.cli.options import (
    BootstrapOpt,
    ConfigOpt,
    JsonOpt,
    KafkaConfigOpt,
    Output,
    OutputOpt,
    RegistryOpt,
    emit,
    table,
    wants_json,
)
from streamproc.errors import StreamprocError

err = Console(stderr=True)
schemas_app = typer.Typer(no_args_is_help=True, help="Avro schemas in the registry.")
config_app = typer.Typer(no_args_is_help=True, help="The effective pipeline configuration.")


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    registry: RegistryOpt = None,
    output: OutputOpt = Output.TEXT,
    json_flag: JsonOpt = False,
) -> None:
    """Every effective setting of a pipeline and where it came from (option, environment,
    file, local stack, default). Secrets are masked."""
    resolved = get_deps(ctx).pipeline(
        config, bootstrap, registry, strict=False, kafka_config=kafka_config
    )
    rows = resolved.settings()
    if wants_json(output, json_flag):
        emit({"pipeline": resolved.origin,
              "settings": {k: {"value": v, "source": src} for k, v, src in rows}})  # fmt: skip
        return
    typer.echo(f"pipeline: {resolved.origin}")
    typer.echo(table([["SETTING", "VALUE", "FROM"], *[[k, v, src] for k, v, src in rows]]))


@schemas_app.command("apply")
def schemas_apply(
    ctx: typer.Context,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Register the input and output schemas of a pipeline (BACKWARD on the input)."""
    from streamproc.kafka.configuration import registry_config
    from streamproc.kafka.registry import Registry
    from streamproc.pipeline.app import apply_schemas

    cfg = get_deps(ctx).pipeline(config, bootstrap, registry, kafka_config=kafka_config).config
    print(json.dumps(apply_schemas(Registry(registry_config(cfg.registry)), cfg)))


def run(
    ctx: typer.Context,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
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
    cfg = get_deps(ctx).pipeline(config, bootstrap, registry, kafka_config=kafka_config).config
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


def produce(
    ctx: typer.Context,
    topic: Annotated[str | None, typer.Option(help="Input topic (default: the pipeline's)")] = None,
    count: Annotated[int, typer.Option("-n", "--count", help="Events to produce")] = 10_000,
    rate: Annotated[float | None, typer.Option(help="Target events/s (default: max)")] = None,
    malformed: Annotated[float, typer.Option(help="Fraction of malformed events")] = 0.0,
    shift: Annotated[float, typer.Option(help="Distribution shift in sigmas")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    days: Annotated[
        float, typer.Option(help="Raw payments: days of event time they span, ending now")
    ] = 14.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Produce synthetic events through the registry; print a JSON report. Transaction
    events, or raw Payment events where the pipeline's model reads Payment (fraud 2.x:
    ``--days`` of per-account history, event time ending now; ``--shift`` is ignored)."""
    from streamproc.kafka.clients import EventProducer
    from streamproc.loadgen import produce_payments, produce_synthetic
    from streamproc.models.spec import load_model_spec

    cfg = get_deps(ctx).pipeline(config, bootstrap, registry, kafka_config=kafka_config).config
    try:
        reader = load_model_spec(cfg.model).reader_schema_path
    except StreamprocError:
        reader = None
    if reader is not None and reader.stem == "Payment":
        with EventProducer(cfg.kafka, cfg.registry, topic or cfg.topics.input,
                           schema="Payment") as p:  # fmt: skip
            report = produce_payments(p, count, days=days, rate=rate, malformed=malformed,
                                      seed=seed)[0]  # fmt: skip
        print(json.dumps(report.as_dict()))
        return
    with EventProducer(cfg.kafka, cfg.registry, topic or cfg.topics.input) as p:
        report = produce_synthetic(p, count, rate=rate, malformed=malformed,
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


def tail(
    ctx: typer.Context,
    topic: str,
    count: Annotated[int, typer.Option("-n", "--count", help="Stop after N records")] = 10,
    timeout: Annotated[float, typer.Option(help="Stop after this many idle seconds")] = 5.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Print decoded records of a topic as JSON lines (from the beginning)."""
    from streamproc.kafka.clients import RecordConsumer

    cfg = get_deps(ctx).pipeline(config, bootstrap, registry, kafka_config=kafka_config).config
    seen = 0
    with RecordConsumer(cfg.kafka, cfg.registry, topic) as consumer:
        while seen < count:
            batch = consumer.poll_batch(count - seen, timeout_s=timeout)
            if not batch:
                break
            for _msg, rec in batch:
                print(json.dumps(_jsonable(rec)))
                seen += 1
