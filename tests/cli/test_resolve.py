"""Address and setting resolution over the shipped pipeline files and every source."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from streamproc.cli import app
from streamproc.cli.deps import Deps
from streamproc.cli.resolve import resolve_pipeline
from streamproc.config import load_config
from streamproc.errors import ConfigError
from streamproc.local.stack import StackInfo

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = sorted((ROOT / "deploy" / "pipelines").glob("*.yaml"))
STACK = StackInfo("127.0.0.1:40001", "http://127.0.0.1:40002/apis/ccompat/v7")


def _stack() -> StackInfo:
    return STACK


def _no_stack() -> None:
    return None


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_every_shipped_pipeline_loads_and_its_model_exists(path):
    cfg = load_config(path, env={})
    assert Path(cfg.model, "model.yaml").exists()
    # The shipped files name no addresses: the running local stack (or the environment) is
    # used, never a fixed port that shadows it.
    r = resolve_pipeline(path, env={}, stack=_stack)
    assert (r.config.kafka.bootstrap, r.config.registry.url) == (
        STACK.bootstrap,
        STACK.schema_registry,
    )
    assert r.sources["kafka.bootstrap"] == r.sources["registry.url"] == "local stack"


def test_the_order_is_option_then_environment_then_file_then_stack(tmp_path):
    path = tmp_path / "p.yaml"
    raw = yaml.safe_load((ROOT / "deploy" / "pipelines" / "fraud.yaml").read_text())
    raw["model"] = str(ROOT / "deploy" / "models" / "fraud" / "1.0.0")
    raw["kafka"]["bootstrap"] = "file-host:9092"
    raw["registry"] = {"url": "http://file-host:8081"}
    path.write_text(yaml.safe_dump(raw))
    env = {"STREAMPROC_KAFKA_BOOTSTRAP": "env-host:9092"}

    looked: list[int] = []

    def stack() -> StackInfo:
        looked.append(1)
        return STACK

    r = resolve_pipeline(path, bootstrap="opt-host:9092", env=env, stack=stack)
    assert r.config.kafka.bootstrap == "opt-host:9092"
    assert r.sources["kafka.bootstrap"] == "option --bootstrap"
    r = resolve_pipeline(path, env=env, stack=stack)
    assert r.config.kafka.bootstrap == "env-host:9092"
    assert r.sources["kafka.bootstrap"] == "env STREAMPROC_KAFKA_BOOTSTRAP"
    assert r.config.registry.url == "http://file-host:8081"
    assert r.sources["registry.url"] == f"file {path}"
    assert looked == []  # nothing needed the stack
    r = resolve_pipeline(path, env={}, stack=stack, need=("kafka.bootstrap",))
    assert r.config.kafka.bootstrap == "file-host:9092"
    assert looked == []


def test_without_any_source_the_error_names_every_way_to_give_one():
    with pytest.raises(ConfigError) as err:
        resolve_pipeline(None, env={}, stack=_no_stack)
    msg = str(err.value)
    assert "--bootstrap" in msg and "STREAMPROC_KAFKA_BOOTSTRAP" in msg
    assert "streamproc local up" in msg


def test_the_environment_reaches_secrets_and_the_control_topic():
    env = {"STREAMPROC_KAFKA_SASL_PASSWORD": "s3cret", "STREAMPROC_CONTROL_TOPIC": "ops.control"}
    r = resolve_pipeline(None, env=env, stack=_stack)
    assert r.config.kafka.sasl_password is not None
    assert r.config.kafka.sasl_password.get_secret_value() == "s3cret"
    assert r.config.topics.control == "ops.control"
    shown = dict((k, v) for k, v, _ in r.settings())
    assert shown["kafka.sasl_password"] == "**********"  # never printed


def test_a_bad_file_names_the_key_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel: m\ntopics: {input: t}\nbatching: {max_batch_size: 0}\n")
    with pytest.raises(ConfigError, match=r"batching\.max_batch_size"):
        resolve_pipeline(path, env={}, stack=_stack)


def test_config_show_prints_each_setting_and_where_it_came_from():
    deps = Deps(env={"STREAMPROC_SCHEMA_REGISTRY_URL": "http://env-reg:8081"}, stack=_stack)
    fraud = ROOT / "deploy" / "pipelines" / "fraud.yaml"
    result = CliRunner().invoke(app, ["config", "show", "-c", str(fraud), "-o", "json"], obj=deps)
    assert result.exit_code == 0, result.output
    import json

    shown = json.loads(result.output)["settings"]
    assert shown["kafka.bootstrap"] == {"value": STACK.bootstrap, "source": "local stack"}
    assert shown["registry.url"]["source"] == "env STREAMPROC_SCHEMA_REGISTRY_URL"
    assert shown["topics.input"] == {"value": "transactions", "source": f"file {fraud}"}
    assert shown["batching.max_batch_size"]["source"] == f"file {fraud}"
    assert shown["delivery.flush_timeout_s"]["source"] == "default"
    text = CliRunner().invoke(app, ["config", "show", "-c", str(fraud)], obj=deps).output
    assert "kafka.bootstrap" in text and "local stack" in text


def test_commands_without_an_address_fail_with_the_fix():
    deps = Deps(env={}, stack=_no_stack)
    result = CliRunner().invoke(app, ["status", "fraud"], obj=deps)
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert "streamproc local up" in str(result.exception)
