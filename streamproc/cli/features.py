"""``streamproc features backfill``: a model's windowed features computed from history,
exactly as the pipeline computes them online, written out as a training set."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
app = typer.Typer(no_args_is_help=True, help="Windowed features per key (model.yaml features:).")


def _offsets(values: list[str] | None, what: str) -> dict[int, int] | int | None:
    """``P:OFFSET`` (repeatable) -> {P: OFFSET}; a bare ``OFFSET`` applies to every
    partition read."""
    if not values:
        return None
    out: dict[int, int] = {}
    try:
        for v in values:
            if ":" not in v:
                if len(values) > 1:
                    raise ValueError
                return int(v)
            p, o = v.split(":", 1)
            out[int(p)] = int(o)
    except ValueError:
        raise ConfigError(f"{what} takes PARTITION:OFFSET (repeatable) or one OFFSET for "
                          f"every partition, not {values}") from None  # fmt: skip
    return out


def _time_ms(value: str | None, what: str) -> int | None:
    """ms since the epoch, or an ISO 8601 time (UTC unless it names its zone)."""
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{what}: {value!r} is neither ms since the epoch nor an ISO 8601 "
                          "time such as 2026-12-01T00:00:00Z") from None  # fmt: skip
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def _labels_file(path: Path) -> dict[str, str]:
    """``event_id -> label`` from a CSV with those two columns, or Avro Label records."""
    if path.suffix == ".avro":
        import fastavro

        with path.open("rb") as fh:
            return {str(r["event_id"]): str(r["label"])  # type: ignore[call-overload,index]
                    for r in fastavro.reader(fh)}  # fmt: skip
    with path.open(newline="") as fh:
        rows = csv.DictReader(fh)
        if not rows.fieldnames or not {"event_id", "label"} <= set(rows.fieldnames):
            raise ConfigError(f"{path}: a labels CSV needs the columns event_id and label")
        return {r["event_id"]: r["label"] for r in rows}


@app.command("backfill")
def backfill(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Training set to write: .avro or .csv")],
    config: ConfigOpt = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="Model directory (default: the pipeline's)")
    ] = None,
    topic: Annotated[
        str | None, typer.Option(help="Topic to read (default: the pipeline's input)")
    ] = None,
    avro: Annotated[
        list[Path] | None,
        typer.Option(
            "--avro",
            help="Read Avro container files instead of a topic "
            "(repeatable; all of them, in order, are one stream: partition 0)",
        ),
    ] = None,
    partition: Annotated[
        list[int] | None, typer.Option("--partition", help="Partition to read (repeatable)")
    ] = None,
    from_offset: Annotated[
        list[str] | None,
        typer.Option("--from-offset", help="P:OFFSET, first offset read (repeatable)"),
    ] = None,
    to_offset: Annotated[
        list[str] | None,
        typer.Option("--to-offset", help="P:OFFSET, end offset, exclusive (repeatable)"),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="From this Kafka record timestamp (ms or ISO 8601)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Up to this record timestamp, exclusive (ms or ISO)")
    ] = None,
    labels: Annotated[
        bool, typer.Option("--labels", help="Join labels from the pipeline's feedback topic")
    ] = False,
    labels_topic: Annotated[
        str | None, typer.Option(help="Join labels from this feedback topic")
    ] = None,
    labels_file: Annotated[
        Path | None, typer.Option(help="Join labels from a CSV (event_id,label) or Avro file")
    ] = None,
    check_inputs: Annotated[
        bool,
        typer.Option(
            help="Drop (as dead letters) events the model's input constraints "
            "reject, as the pipeline does"
        ),
    ] = True,
    warmup: Annotated[
        bool,
        typer.Option(
            help="Build each partition's state from its earliest retained offset "
            "(rows only for the range), so the first rows see the history before "
            "them as the pipeline did"
        ),
    ] = True,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr")] = True,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    registry: RegistryOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Compute the model's features over a topic range (each partition in offset order) or
    Avro files, exactly as the pipeline does online, and write the events with their
    features (and labels) as a training set."""
    from streamproc.features.offline import (
        BackfillReport,
        SourceEvent,
        avro_file_events,
        avro_file_schema,
        backfill_rows,
        output_schema,
        write_avro,
        write_csv,
    )
    from streamproc.models.spec import load_model_spec

    if out.suffix not in (".avro", ".csv"):
        raise ConfigError(f"--out {out}: the training set is written as .avro or .csv")
    from_kafka = not avro
    need = ("kafka.bootstrap", "registry.url") if from_kafka or labels or labels_topic else ()
    resolved = get_deps(ctx).pipeline(config, bootstrap, registry, need=need,
                                      kafka_config=kafka_config)  # fmt: skip
    cfg = resolved.config
    spec = load_model_spec(model if model is not None else cfg.model)
    if spec.features is None:
        raise ConfigError(f"model {spec.name} {spec.version} ({spec.home}) has no features: "
                          "section to backfill")  # fmt: skip
    label_map: dict[str, str] | None = None
    if labels or labels_topic:
        feedback = labels_topic or cfg.topics.feedback
        if feedback is None:
            raise ConfigError("--labels: the pipeline names no feedback topic (topics.feedback)")
        from streamproc.kafka.history import read_labels

        label_map = read_labels(cfg.kafka, cfg.registry, feedback)
    elif labels_file is not None:
        label_map = _labels_file(labels_file)

    report = BackfillReport()
    total: int | None = None
    events: Any
    history: Any = None
    if avro:
        event_schema = avro_file_schema(avro[0])
        events = avro_file_events(avro, spec.key_field)
        source = f"{len(avro)} Avro file(s) as one stream (partition 0)"
    else:
        from streamproc.kafka.history import TopicHistory

        start, end = _offsets(from_offset, "--from-offset"), _offsets(to_offset, "--to-offset")
        name = topic or cfg.topics.input
        reader = spec.reader_schema_path
        if reader is None or not reader.exists():
            raise ConfigError(f"model {spec.name} {spec.version} names no reader_schema file "
                              "to decode the topic's records to")  # fmt: skip
        event_schema = json.loads(reader.read_text())
        history = TopicHistory(cfg.kafka, cfg.registry, name, partitions=partition,
                               start_offsets=start, end_offsets=end,
                               since_ms=_time_ms(since, "--since"),
                               until_ms=_time_ms(until, "--until"),
                               reader_schema=event_schema, warmup=warmup)  # fmt: skip
        total = history.total
        events = history
        source = f"{name} " + ", ".join(f"{p}:[{a},{b})" for p, a, b in history.ranges)

    bar = Progress(TextColumn("[bold]backfill[/]"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("events"), TimeElapsedColumn(), console=err,
                   disable=not progress)  # fmt: skip
    task = bar.add_task("backfill", total=total)

    def counted(it: Any) -> Iterator[SourceEvent]:
        n = 0
        for e in it:
            n += 1
            if n % 1000 == 0:
                bar.update(task, completed=n)
            yield e
        bar.update(task, completed=n, total=n)

    try:
        with bar:
            emit_from = history.emit_from if history is not None and warmup else None
            rows = backfill_rows(spec, counted(events), check_inputs=check_inputs,
                                 labels=label_map, report=report, emit_from=emit_from)  # fmt: skip
            if out.suffix == ".avro":
                schema = output_schema(event_schema, spec.features.names,
                                       "label" if label_map is not None else None)  # fmt: skip
                write_avro(rows, out, schema)
            else:
                write_csv(rows, out)
    finally:
        if history is not None:
            history.close()
    summary: dict[str, Any] = {
        "model": f"{spec.name} {spec.version}",
        "source": source,
        "out": str(out),
        "features": spec.features.names,
        **report.as_dict(),
    }
    if label_map is not None:
        summary["labels"] = len(label_map)
    if output is Output.JSON:
        emit(summary)
        return
    typer.echo(
        f"{summary['model']}: {report.events_read:,} events read from {source}"
        + (f" (after {report.warmup_events:,} of warm-up)" if report.warmup_events else "")
        + ", "
        f"{report.rows:,} rows written to {out} ({len(spec.features.names)} features), "
        f"{report.late_events:,} late, {sum(report.dead_letters.values()):,} dead letters"
        + (f" {dict(sorted(report.dead_letters.items()))}" if report.dead_letters else "")
    )
