"""The drift:, alerts: and rollout: sections are typed: checked when the file is loaded, with
errors that name the key path; the shipped pipeline file and the README's example load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from streamproc.config import load_config, validate
from streamproc.errors import ConfigError
from streamproc.pipeline.rollout import live_guard_settings
from streamproc.types import Severity

ROOT = Path(__file__).resolve().parents[1]
BASE = {"name": "p", "model": "m", "topics": {"input": "t"}}


def _config(**sections):
    return validate({**BASE, **sections}, "p.yaml")


@pytest.mark.parametrize(
    ("sections", "path"),
    [
        ({"drift": {"detectr": "cusum"}}, "drift.detectr"),
        ({"drift": {"false_alarms_per_million": 0}}, "drift.false_alarms_per_million"),
        ({"alerts": {"min_severity": "LOUD"}}, "alerts.min_severity"),
        ({"rollout": {"guardrail": {}}}, "rollout.guardrail"),
        ({"rollout": {"guardrails": {"max_eror_rate": 0.02}}}, "rollout.guardrails.max_eror_rate"),
        ({"rollout": {"guardrails": {"max_error_rate": 2}}}, "rollout.guardrails.max_error_rate"),
        ({"rollout": {"decide_interval_s": 0}}, "rollout.decide_interval_s"),
        ({"rollout": {"decide_interval_s": True}}, "rollout.decide_interval_s"),
        ({"rollout": {"decide_interval_s": "1"}}, "rollout.decide_interval_s"),
    ],
)
def test_a_bad_section_is_an_error_at_load_naming_the_key_path(sections, path) -> None:
    with pytest.raises(ConfigError, match=rf"^p\.yaml: {re.escape(path)}: "):
        _config(**sections)


def test_sections_are_typed_with_the_defaults_when_absent() -> None:
    cfg = _config()
    assert cfg.drift.enabled and cfg.drift.detector == "cusum"
    assert cfg.alerts.min_severity is Severity.INFO and cfg.alerts.webhook is None
    guard, every = live_guard_settings(cfg.rollout)
    assert (guard.thresholds.p99_slack_ms, every) == (25.0, 1.0)  # the live defaults


def test_rollout_overrides_only_the_keys_it_names() -> None:
    cfg = _config(rollout={"guardrails": {"max_error_rate": 0.02, "max_p99_ms": 50},
                           "decide_interval_s": 2})  # fmt: skip
    guard, every = live_guard_settings(cfg.rollout)
    t = guard.thresholds
    assert (t.max_error_rate, t.max_p99_ms, t.p99_slack_ms, every) == (0.02, 50.0, 25.0, 2.0)
    assert live_guard_settings(_config(rollout={"guardrails": None}).rollout)[1] == 1.0


def test_the_shipped_pipeline_files_load() -> None:
    files = sorted((ROOT / "deploy" / "pipelines").glob("*.yaml"))
    assert files
    for path in files:
        cfg = load_config(path, env={})
        assert cfg.drift.enabled in (True, False)


def test_the_readme_rollout_example_loads() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(rollout:\n.*?)```", text, re.S)
    assert block is not None
    cfg = _config(**yaml.safe_load(block.group(1)))
    guard, every = live_guard_settings(cfg.rollout)
    assert (guard.thresholds.max_error_rate, guard.thresholds.max_p99_ms, every) == (
        0.02, 50.0, 1.0)  # fmt: skip
