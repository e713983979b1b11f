"""``streamproc score``: re-score a topic range or Avro files through the pipeline's handler."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from streamproc.cli.deps import deps as get_deps
from streamproc.cli.options import (
    BootstrapOpt,
    ConfigOpt,
    KafkaConfigOpt,
    Output,
    OutputOpt,
    RegistryOpt,
    emit,
)
from streamproc.errors import ConfigError

err = Console(stderr=True)


def _default_job(parts: list[str]) -> str:
    """A job name from what it reads and writes: the same command resumes the same job."""
    return "job-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def score(
    ctx: typer.Context,
    config: ConfigOpt = None,
    topic: Annotated[
        str | None, typer.Option(help="Input topic (default: the pipeline's input)")
    ] = None,
    files: Annotated[
        list[Path] | None,
        typer.Option(
            "--file", "-f", help="Avro container file to score (repeatable) instead of a topic"
        ),
    ] = None,
    start: Annotated[
        str, typer.Option("--from", help="beginning | OFFSET | P:O,P:O | ISO time")
    ] = "beginning",
    end: Annotated[
        str, typer.Option("--to", help="end | OFFSET | P:O,P:O | ISO time (exclusive)")
    ] = "end",
    out_topic: Annotated[
        str | None,
        typer.Option(
            "--out-topic",
            help="Predictions topic (dead letters: <it>.dlq, "
            "alerts: <it>.alerts, progress: <it>.score-progress)",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Write part files here instead")
    ] = None,
    out_format: Annotated[
        str, typer.Option("--format", help="avro | parquet (parquet needs pyarrow)")
    ] = "avro",
    codec: Annotated[
        str | None,
        typer.Option(
            help="Part files' compression: deflate | snappy | null (default: deflate for "
            "Avro, snappy for Parquet; deflate is Parquet's GZIP)"
        ),
    ] = None,
    job: Annotated[
        str | None,
        typer.Option(
            help="Job name (default: from input, range and output); the same name resumes"
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Processes, one per partition range")] = 1,
    scorer: Annotated[
        str,
        typer.Option(
            help="single: the pipeline's model; rollout: the control "
            "topic's deployment, routed by key"
        ),
    ] = "single",
    key_field: Annotated[
        str | None, typer.Option(help="Files: the field that keys each record")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Events per batch")] = None,
    commit_interval: Annotated[
        float, typer.Option(help="Topic output: seconds between transactions")
    ] = 1.0,
    part_events: Annotated[
        int, typer.Option(help="File output: input events per part file")
    ] = 100_000,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr")] = True,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    registry: RegistryOpt = None,
    output: OutputOpt = Output.TEXT,
    log_level: Annotated[str, typer.Option(help="Log level")] = "WARNING",
) -> None:
    """Score a topic range or Avro files with the pipeline's handler (validation, dead
    letters, monitors) and write predictions to a topic or to files. Run the same command
    again to resume an interrupted job: nothing is scored twice."""
    from streamproc.pipeline.batchscore import ScoreJob, run

    # The options alone first: a wrong one fails before the pipeline is resolved.
    if out_format not in ("avro", "parquet"):
        raise ConfigError(f"--format must be avro or parquet, not {out_format!r}")
    codec = codec or ("snappy" if out_format == "parquet" else "deflate")
    if codec not in ("deflate", "snappy", "null"):
        raise ConfigError(f"--codec must be deflate, snappy or null, not {codec!r}")
    if scorer not in ("single", "rollout"):
        raise ConfigError(f"--scorer must be single or rollout, not {scorer!r}")
    if out_topic and out_dir:
        raise ConfigError("give --out-topic or --out-dir, not both")
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cfg = get_deps(ctx).pipeline(config, bootstrap, registry, kafka_config=kafka_config).config
    in_files = list(files or [])
    in_topic = None if in_files else (topic or cfg.topics.input)
    if not out_dir and not out_topic:
        out_topic = f"{in_topic or cfg.topics.input}.scored"
    name = job or _default_job([cfg.name, in_topic or "", *map(str, in_files), start, end,
                                out_topic or "", str(out_dir or "")])  # fmt: skip
    the_job = ScoreJob(
        config=cfg, name=name, topic=in_topic, files=in_files, start=start, end=end,
        out_topic=out_topic, out_dir=out_dir, out_format=out_format,  # type: ignore[arg-type]
        out_codec=codec,  # type: ignore[arg-type]
        key_field=key_field, scorer=scorer,  # type: ignore[arg-type]
        batch_size=batch_size or cfg.batching.max_batch_size,
        commit_interval_s=commit_interval, part_events=part_events, workers=workers,
    )  # fmt: skip
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err,
                   disable=not progress)  # fmt: skip
    task = bar.add_task(f"scoring ({name})", total=None)
    with bar:
        summary = run(
            the_job,
            on_start=lambda total, done: bar.update(task, total=total, completed=done),
            on_events=lambda n: bar.advance(task, n),
        )
    data = summary.as_dict()
    if output is Output.JSON:
        emit(data)
    else:
        typer.echo(json.dumps({k: v for k, v in data.items() if k != "partitions"}))
    if not summary.accounted:
        raise typer.Exit(1)


def reply_server(
    ctx: typer.Context,
    config: ConfigOpt = None,
    requests: Annotated[
        str | None, typer.Option(help="Requests topic (default: <input>.requests)")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most requests per batch")] = 512,
    max_wait_ms: Annotated[float, typer.Option(help="Batch window after the first")] = 2.0,
    scorer: Annotated[str, typer.Option(help="single | rollout (as for score)")] = "rollout",
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    registry: RegistryOpt = None,
    log_level: Annotated[str, typer.Option(help="Log level")] = "INFO",
) -> None:
    """Answer requests (headers reply-to, correlation-id) with predictions, until SIGTERM."""
    import signal

    from streamproc.kafka.admin import Admin
    from streamproc.kafka.reqreply import ReplyServer
    from streamproc.pipeline.batchscore import build_handler
    from streamproc.pipeline.handler import OutputTopics

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cfg = get_deps(ctx).pipeline(config, bootstrap, registry, kafka_config=kafka_config).config
    if scorer not in ("single", "rollout"):
        raise ConfigError(f"--scorer must be single or rollout, not {scorer!r}")
    t = cfg.topics
    topic = requests or f"{t.input}.requests"
    Admin(cfg.kafka).ensure_topics([topic], partitions=t.partitions)
    handler, closers = build_handler(
        cfg, OutputTopics(t.predictions, t.dlq, t.alerts, t.metrics, t.shadow),
        scorer=scorer, instance=f"reply-{cfg.instance_id or 'server'}",  # type: ignore[arg-type]
    )  # fmt: skip
    server = ReplyServer(cfg.kafka, topic, handler, group_id=f"{cfg.group_id}-reqreply",
                         max_batch=max_batch, max_wait_ms=max_wait_ms)  # fmt: skip
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    err.print(f"answering requests on {topic}")
    try:
        server.run()
    finally:
        for close in closers:
            close()
    err.print(f"stopped: {server.answered} answered ({server.rejected} rejected)")
