"""Options every command group shares, and the two ways a command prints state."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer


class Output(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


ConfigOpt = Annotated[Path | None, typer.Option("-c", "--config", help="Pipeline YAML file")]
BootstrapOpt = Annotated[
    str | None,
    typer.Option(
        help="Kafka bootstrap servers (else $STREAMPROC_KAFKA_BOOTSTRAP, the pipeline "
        "file, the local stack)"
    ),
]
KafkaConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--kafka-config",
        help="librdkafka properties file (key=value, as kcat -F reads): security, SASL, TLS "
        "(else $STREAMPROC_KAFKA_CONFIG); its settings beat the pipeline file's",
    ),
]
RegistryOpt = Annotated[
    str | None,
    typer.Option(
        help="Schema registry URL (else $STREAMPROC_SCHEMA_REGISTRY_URL, the pipeline "
        "file, the local stack)"
    ),
]
OutputOpt = Annotated[Output, typer.Option("-o", "--output", help="Print text or JSON")]
# ``--json`` predates ``--output``; kept so that scripts written against it still work.
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as --output json")]


def wants_json(output: Output, json_flag: bool = False) -> bool:
    return json_flag or output is Output.JSON


def emit(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned plain-text columns (first row: header).

    >>> print(table([["a", "bb"], ["ccc", "d"]]))
    a    bb
    ccc  d
    """
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
