"""`streamproc dlq inspect | replay`: the dead letters of a pipeline, for an operator."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from streamproc.cli.deps import deps as get_deps
from streamproc.cli.options import (
    BootstrapOpt,
    ConfigOpt,
    KafkaConfigOpt,
    Output,
    OutputOpt,
    RegistryOpt,
)

if TYPE_CHECKING:
    from streamproc.config import PipelineConfig
    from streamproc.deadletters import DeadLetter

app = typer.Typer(no_args_is_help=True, help="Dead letters: inspect them, replay them.")

ReasonOpt = Annotated[
    list[str] | None, typer.Option("--reason", help="Only this reason (repeatable), e.g. BAD_MAGIC")
]
SinceOpt = Annotated[
    str | None, typer.Option(help="Dead-lettered at or after this ISO 8601 time (UTC if no zone)")
]
UntilOpt = Annotated[str | None, typer.Option(help="Dead-lettered before this ISO 8601 time")]
TimeoutOpt = Annotated[float, typer.Option(help="Give up when the read stalls this many seconds")]


@app.command("inspect")
def inspect(
    ctx: typer.Context,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    registry: RegistryOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    sample: Annotated[int, typer.Option(help="Show this many dead letters")] = 5,
    bucket: Annotated[
        str | None, typer.Option(help="minute | hour | day (default: at most 60 buckets)")
    ] = None,
    output: OutputOpt = Output.TEXT,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Count the dead letters by reason, schema id and time, with a sample; reads the DLQ
    topic from its beginning to its end now. Payloads are shown as truncated hex."""
    from streamproc.deadletters import Selection, format_summary
    from streamproc.kafka import dlq

    kind = output.value
    selection = Selection.build(reason, since, until)
    cfg = get_deps(ctx).pipeline(config, bootstrap, registry, kafka_config=kafka_config).config
    summary = dlq.inspect(cfg, selection, sample=max(0, sample), timeout_s=timeout)
    d = summary.as_dict(bucket)
    print(json.dumps(d) if kind == "json" else format_summary(d, cfg.topics.dlq))


def _checker(cfg: PipelineConfig) -> Any:
    """Re-validation: the pipeline's model input checks on the original value, decoded
    through the registry (the reference decoder: no kernels to compile for a replay)."""
    from streamproc.codecs.decoder import BatchDecoder
    from streamproc.kafka.configuration import registry_config
    from streamproc.kafka.registry import Registry
    from streamproc.models.spec import load_model_spec
    from streamproc.pipeline.app import reader_schema
    from streamproc.types import ReasonCode

    spec = load_model_spec(cfg.model)
    decoder = BatchDecoder(spec, reader_schema(spec), Registry(registry_config(cfg.registry)),
                           max_message_bytes=cfg.delivery.max_message_bytes,
                           compiled=False)  # fmt: skip

    def check(dl: DeadLetter) -> str | None:
        dec = decoder.decode([dl.value])
        code = int(dec.errors[0])
        return None if code == 0 else f"{ReasonCode(code).name}: {dec.details[0]}"

    return check


@app.command("replay")
def replay(
    ctx: typer.Context,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    kafka_config: KafkaConfigOpt = None,
    registry: RegistryOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Report what would be sent; send nothing")] = False,
    force: Annotated[bool, typer.Option(help="Send those that would fail again too")] = False,
    skip_failing: Annotated[
        bool, typer.Option(help="Pass over those that would fail again, for good")
    ] = False,
    output: OutputOpt = Output.TEXT,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Re-send the originals of the selected dead letters to the input topic, each with a
    `streamproc-replay-of: <dlq>/<partition>/<offset>` header, after checking each against
    the registry and the model's input checks. Progress is committed with the records, so
    a second replay sends nothing twice. Those that would fail again are held back (and
    with them the later ones of their reason): the next replay tries them again."""
    from streamproc.deadletters import Selection, safe_text
    from streamproc.kafka import dlq

    kind = output.value
    if force and skip_failing:
        raise typer.BadParameter("--force and --skip-failing exclude each other")
    selection = Selection.build(reason, since, until)
    cfg = get_deps(ctx).pipeline(config, bootstrap, registry, kafka_config=kafka_config).config
    report = dlq.replay(cfg, selection, _checker(cfg), dry_run=dry_run, force=force,
                        skip_failing=skip_failing, timeout_s=timeout)  # fmt: skip
    d = report.as_dict()
    if kind == "json":
        print(json.dumps(d))
        return
    verb = "would send" if dry_run else "sent"
    print(f"{verb} {report.sent} to {safe_text(cfg.topics.input)}; held back {d['held']}, "
          f"passed over {d['passed']}")  # fmt: skip
    for outcome, reasons in d["by_outcome"].items():
        print(f"  {outcome:<16} " + ", ".join(f"{r}={n}" for r, n in reasons.items()))
    for ex in d["examples"]:
        now = f"  now: {ex['now']}" if "now" in ex else ""
        print(f"  {ex['outcome']:<16} {ex['dlq']}  {ex['reason']}  key={ex['key']}{now}")
