"""The ``features:`` section refuses definitions the store cannot compute, with a reason."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from streamproc.features.spec import FeaturesSpec, parse_duration_ms


def _spec(**definition: Any) -> FeaturesSpec:
    d = {"name": "f", "agg": "count", "window": {"size": "1h"}, **definition}
    return FeaturesSpec.model_validate({"definitions": [d]})


@pytest.mark.parametrize(
    ("definition", "reason"),
    [
        ({"window": {"size": "an hour"}}, "is not a duration"),
        ({"window": {"size": "1w"}}, "is not a duration"),
        ({"window": {"size": "500ms"}}, "from 1s to 30d"),
        ({"window": {"size": "31d"}}, "from 1s to 30d"),
        ({"window": {"type": "hopping", "size": "1h"}}, "needs 0 < step < size"),
        ({"window": {"type": "hopping", "size": "1h", "step": "1h"}}, "needs 0 < step < size"),
        ({"window": {"type": "hopping", "size": "1h", "step": "7m"}}, "multiple of its step"),
        ({"window": {"type": "tumbling", "size": "1h", "step": "5m"}}, "takes no step"),
        ({"agg": "sum"}, "needs a value field"),
        ({"agg": "std"}, "needs a value field"),
        ({"agg": "count", "value": "amount"}, "takes no value field"),
        ({"agg": "since_last", "value": "amount"}, "takes no value field"),
        ({"agg": "median", "value": "amount"}, "agg"),
        ({"unit": "week", "agg": "since_last"}, "unit"),
    ],
)
def test_bad_definition_is_refused_with_its_reason(definition: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        _spec(**definition)


def test_duplicate_names_bad_lateness_and_cap_are_refused() -> None:
    d = {"name": "f", "agg": "count", "window": {"size": "1h"}}
    with pytest.raises(ValidationError, match="unique: f"):
        FeaturesSpec.model_validate({"definitions": [d, d]})
    with pytest.raises(ValidationError, match="is not a duration"):
        FeaturesSpec.model_validate({"allowed_lateness": "soon", "definitions": [d]})
    for cap in (0, 1 << 21):
        with pytest.raises(ValidationError, match="max_events_per_key"):
            FeaturesSpec.model_validate({"max_events_per_key": cap, "definitions": [d]})
    with pytest.raises(ValidationError, match="extra"):
        FeaturesSpec.model_validate({"definitons": [d]})


def test_durations() -> None:
    assert [parse_duration_ms(v) for v in ("1s", "90s", "15m", "15min", "2h", "30d", 7)] == [
        1_000, 90_000, 900_000, 900_000, 7_200_000, 2_592_000_000, 7
    ]  # fmt: skip
    assert _spec().max_events_per_key == 4096  # the documented default
