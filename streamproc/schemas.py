"""The Avro schemas that streamproc reads and writes (``schemas/*.avsc``)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import fastavro

NAMES = (
    "Transaction",
    "Prediction",
    "DeadLetter",
    "Alert",
    "MetricsSnapshot",
    "Label",
    "Explanation",
)


@functools.cache
def schema_text(name: str) -> str:
    """The schema's JSON text, as registered."""
    return (resources.files("streamproc") / "avro_schemas" / f"{name}.avsc").read_text()


def schema_dict(name: str) -> dict[str, Any]:
    return dict(json.loads(schema_text(name)))


@functools.cache
def parsed(name: str) -> Any:
    """fastavro's parsed form of the schema (cached)."""
    return fastavro.parse_schema(schema_dict(name))


def subject_for(topic: str) -> str:
    """Confluent TopicNameStrategy for record values."""
    return f"{topic}-value"
