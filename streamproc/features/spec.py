"""The ``features:`` section of ``model.yaml``: windowed aggregations per key.

>>> spec = FeaturesSpec.model_validate({
...     "allowed_lateness": "5m",
...     "definitions": [
...         {"name": "txn_count_1h", "agg": "count", "window": {"size": "1h"}},
...         {"name": "avg_amount_7d", "agg": "mean", "value": "amount",
...          "window": {"size": "7d"}},
...         {"name": "minutes_since_last_txn", "agg": "since_last", "unit": "min",
...          "window": {"size": "30d"}},
...         {"name": "spend_per_hour", "agg": "sum", "value": "amount",
...          "window": {"type": "tumbling", "size": "1h"}},
...     ],
... })
>>> [d.name for d in spec.definitions]
['txn_count_1h', 'avg_amount_7d', 'minutes_since_last_txn', 'spend_per_hour']
>>> spec.allowed_lateness_ms, spec.max_window_ms
(300000, 2592000000)
>>> spec.value_fields
['amount']
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Aggregation = Literal[
    "count", "sum", "mean", "min", "max", "std", "last", "since_last", "distinct_count"
]
# Aggregations that read no value field.
NO_VALUE: frozenset[str] = frozenset({"count", "since_last"})

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|min|m|h|d)\s*$")
MAX_WINDOW_MS = 30 * 86_400_000


def parse_duration_ms(value: str | int) -> int:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"30d"`` (or an int of ms) -> milliseconds.

    >>> parse_duration_ms("15m"), parse_duration_ms(250)
    (900000, 250)
    """
    if isinstance(value, int):
        return value
    m = _DURATION.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not a duration such as 30s, 15m, 1h or 7d")
    return int(m.group(1)) * _UNITS_MS[m.group(2)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowSpec(_Frozen):
    """Which events of the key an event's value is computed from (see ``reference.py``).

    sliding: the events of the key with event time in ``(t - size, t]`` before the event.
    tumbling / hopping: the events of the key in the window ``[start, start + size)`` that
    holds ``t`` (hopping: the one that started last), before the event; when a window
    closes its aggregate can go out to a topic (``FeaturesSpec.closed_topic``).
    """

    type: Literal["sliding", "tumbling", "hopping"] = "sliding"
    size_ms: int = Field(alias="size")
    step_ms: int | None = Field(None, alias="step")  # hopping only

    @field_validator("size_ms", "step_ms", mode="before")
    @classmethod
    def _duration(cls, v: str | int | None) -> int | None:
        return None if v is None else parse_duration_ms(v)

    @model_validator(mode="after")
    def _check(self) -> WindowSpec:
        if not 1_000 <= self.size_ms <= MAX_WINDOW_MS:
            raise ValueError("window size must be from 1s to 30d")
        if self.type == "hopping":
            if self.step_ms is None or not 0 < self.step_ms < self.size_ms:
                raise ValueError("a hopping window needs 0 < step < size")
            if self.size_ms % self.step_ms:
                raise ValueError("a hopping window's size must be a multiple of its step")
        elif self.step_ms is not None:
            raise ValueError(f"a {self.type} window takes no step")
        return self

    @property
    def step(self) -> int:
        """Distance between window starts (tumbling: the size)."""
        return self.step_ms or self.size_ms


class FeatureDef(_Frozen):
    name: str
    agg: Aggregation
    value: str | None = None  # the event field aggregated (count and since_last take none)
    window: WindowSpec
    unit: Literal["ms", "s", "min", "h", "d"] = "s"  # since_last's unit

    @model_validator(mode="after")
    def _check(self) -> FeatureDef:
        if self.agg in NO_VALUE and self.value is not None:
            raise ValueError(f"feature {self.name!r}: {self.agg} takes no value field")
        if self.agg not in NO_VALUE and self.value is None:
            raise ValueError(f"feature {self.name!r}: {self.agg} needs a value field")
        return self

    @property
    def unit_ms(self) -> int:
        return _UNITS_MS[self.unit]


class FeaturesSpec(_Frozen):
    """Definitions plus what they share: the key, lateness, where closed windows go."""

    # Fields whose values, joined, make the key; empty: the Kafka record key.
    key: tuple[str, ...] = ()
    allowed_lateness_ms: int = Field(0, alias="allowed_lateness")
    closed_topic: str | None = None  # tumbling/hopping aggregates, once their window closes
    # The bound on memory per key: a key holding this many events drops its oldest (smallest
    # event time, then offset) for each one added, counted in ``StoreStats.dropped_events``.
    # Only a key with more events than this within the largest window sees values change.
    max_events_per_key: int = Field(4096, ge=1, le=1 << 20)
    definitions: tuple[FeatureDef, ...]

    @field_validator("allowed_lateness_ms", mode="before")
    @classmethod
    def _lateness(cls, v: str | int) -> int:
        return parse_duration_ms(v)

    @model_validator(mode="after")
    def _unique(self) -> FeaturesSpec:
        names = [d.name for d in self.definitions]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"feature names must be unique: {', '.join(dup)}")
        return self

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.definitions]

    @property
    def value_fields(self) -> list[str]:
        """The event fields the definitions read, in first-use order."""
        out: list[str] = []
        for d in self.definitions:
            if d.value is not None and d.value not in out:
                out.append(d.value)
        return out

    @property
    def max_window_ms(self) -> int:
        return max(d.window.size_ms for d in self.definitions)


# A window store's changelog: compaction keeps one record per key; deleted keys' tombstones
# go after a day. What the topic is for, so a topic policy cannot change these.
CHANGELOG_TOPIC_CONFIG: dict[str, str] = {
    "cleanup.policy": "compact",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "86400000",
}


def changelog_topic(group_id: str, model: str) -> str:
    """The compacted changelog topic of the window store of ``model`` in ``group_id``."""
    return f"{group_id}.{model}.features-changelog"


def repartition_topic(input_topic: str, model: str) -> str:
    """The internal topic an input not keyed by the feature key is re-keyed through."""
    return f"{input_topic}.repartition.{model}"


def repartition_group(group_id: str) -> str:
    """The consumer group of the repartition stage."""
    return f"{group_id}.repartition"
