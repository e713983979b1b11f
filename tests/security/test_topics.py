"""`streamproc topics plan | apply` on the real (single) broker: every topic of a pipeline made
as its `topics.policy` says, existing ones altered key by key (incrementalAlterConfigs), and a
replication factor above the broker count refused naming the topic and the fix."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from typer.testing import CliRunner

from streamproc.cli import app
from streamproc.cli.deps import Deps
from streamproc.config import PipelineConfig
from streamproc.errors import ConfigError, KafkaError
from streamproc.kafka.admin import Admin
from streamproc.pipeline.app import ensure_topics
from streamproc.topicplan import desired


@pytest.fixture
def run_id(admin: Admin) -> Iterator[str]:
    run = uuid.uuid4().hex[:8]
    yield run
    admin.delete_topics([t for t in admin.list_topics().topics if run in t])


MODELS = Path(__file__).resolve().parents[2] / "deploy" / "models" / "fraud"


def _pipeline(tmp_path: Path, run: str, policy: dict[str, Any], model: str = "1.0.0",
              **extra: Any) -> Path:  # fmt: skip
    path = tmp_path / f"pipeline-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "fraud", "model": str(MODELS / model), **extra,
        "topics": {"input": f"tx-{run}", "alerts": f"alerts-{run}", "metrics": f"metrics-{run}",
                   "control": f"control-{run}", "feedback": f"labels-{run}", "partitions": 2,
                   "policy": policy},
    }))  # fmt: skip
    return path


def _cli(kafka: str, *args: str) -> Any:
    deps = Deps(env={"STREAMPROC_KAFKA_BOOTSTRAP": kafka}, stack=lambda: None)
    return CliRunner().invoke(app, list(args), obj=deps)


def _configs(admin: Admin, topic: str) -> dict[str, str]:
    [fut] = admin.client.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return {k: e.value for k, e in fut.result(timeout=30).items()}


def test_apply_creates_then_alters_to_the_policy(kafka: str, admin: Admin, tmp_path: Path,
                                                 run_id: str) -> None:  # fmt: skip
    policy = {"default": {"replication_factor": 1, "min_insync_replicas": 1},
              "dlq": {"retention_ms": 3_600_000},
              "metrics": {"retention_ms": 600_000, "config": {"segment.ms": "600000"}},
              "alerts": {"cleanup_policy": "compact,delete"}}  # fmt: skip
    first = _cli(kafka, "topics", "apply", "-c", str(_pipeline(tmp_path, run_id, policy)),
                 "-o", "json")  # fmt: skip
    assert first.exit_code == 0, first.output
    made = {c["topic"]: c for c in json.loads(first.output)}
    # input, predictions, dlq, shadow, alerts, metrics, control + audit + replicas, feedback
    assert len(made) == 10 and {c["action"] for c in made.values()} == {"create"}
    dlq = _configs(admin, f"tx-{run_id}.dlq")
    assert dlq["retention.ms"] == "3600000" and dlq["min.insync.replicas"] == "1"
    assert _configs(admin, f"metrics-{run_id}")["segment.ms"] == "600000"
    assert _configs(admin, f"alerts-{run_id}")["cleanup.policy"] == "compact,delete"
    control = _configs(admin, f"control-{run_id}")
    assert control["cleanup.policy"] == "compact"
    assert _configs(admin, f"control-{run_id}.audit")["retention.ms"] == "-1"
    assert admin.partitions(f"tx-{run_id}") == 2 and admin.partitions(f"alerts-{run_id}") == 1

    # A setting the policy does not name survives an apply (incremental, key by key).
    other = ConfigResource(ResourceType.TOPIC, f"tx-{run_id}.dlq", incremental_configs=[
        ConfigEntry("max.message.bytes", "2000000",
                    incremental_operation=AlterConfigOpType.SET)])  # fmt: skip
    [fut] = admin.client.incremental_alter_configs([other]).values()
    fut.result(timeout=30)

    policy["dlq"] = {"retention_ms": 7_200_000}
    changed = _pipeline(tmp_path, run_id, policy)
    planned = _cli(kafka, "topics", "plan", "-c", str(changed), "-o", "json")
    assert planned.exit_code == 0, planned.output
    alters = {c["topic"]: c for c in json.loads(planned.output) if c["action"] != "ok"}
    assert list(alters) == [f"tx-{run_id}.dlq"]
    assert alters[f"tx-{run_id}.dlq"]["changes"] == {
        "retention.ms": {"now": "3600000", "wanted": "7200000"}}  # fmt: skip
    assert _configs(admin, f"tx-{run_id}.dlq")["retention.ms"] == "3600000"  # plan: no change

    applied = _cli(kafka, "topics", "apply", "-c", str(changed))
    assert applied.exit_code == 0, applied.output
    assert "alter" in applied.output and "retention.ms: 3600000 -> 7200000" in applied.output
    dlq = _configs(admin, f"tx-{run_id}.dlq")
    assert dlq["retention.ms"] == "7200000" and dlq["max.message.bytes"] == "2000000"
    again = _cli(kafka, "topics", "plan", "-c", str(changed), "-o", "json")
    assert {c["action"] for c in json.loads(again.output)} == {"ok"}


def test_the_processor_creates_missing_topics_with_the_policy(
    kafka: str, admin: Admin, tmp_path: Path, run_id: str
) -> None:
    path = _pipeline(tmp_path, run_id, {"predictions": {"retention_ms": 86_400_000}})
    cfg = PipelineConfig.model_validate({**yaml.safe_load(path.read_text()),
                                         "kafka": {"bootstrap": kafka}})  # fmt: skip
    ensure_topics(cfg)  # what build_processor calls at start
    assert _configs(admin, f"tx-{run_id}.predictions")["retention.ms"] == "86400000"
    assert _configs(admin, f"tx-{run_id}.shadow")["retention.ms"] == "86400000"
    # dead letters: 30 days unless the config says otherwise
    assert _configs(admin, f"tx-{run_id}.dlq")["retention.ms"] == str(30 * 86_400_000)


def test_a_replication_factor_above_the_brokers_names_the_topic_and_the_fix(
    kafka: str, admin: Admin, tmp_path: Path, run_id: str
) -> None:
    path = _pipeline(tmp_path, run_id, {"dlq": {"replication_factor": 3}})
    res = _cli(kafka, "topics", "apply", "-c", str(path))
    assert res.exit_code != 0
    assert isinstance(res.exception, ConfigError), res.output
    msg = str(res.exception)
    assert f"topic tx-{run_id}.dlq (dlq): replication factor 3 > the cluster's 1 broker" in msg
    assert "topics.policy.dlq.replication_factor" in msg and "at most 1" in msg
    assert not [t for t in admin.list_topics().topics if run_id in t]  # nothing half made

    cfg = PipelineConfig.model_validate({**yaml.safe_load(path.read_text()),
                                         "kafka": {"bootstrap": kafka}})  # fmt: skip
    with pytest.raises(ConfigError, match=f"tx-{run_id}.dlq"):
        ensure_topics(cfg)
    # The broker's own refusal (a check skipped, a broker gone) is as clear.
    with pytest.raises(KafkaError, match=r"lower its replication factor \(topics.policy"):
        admin.ensure_topics([f"rf-{run_id}"], replication_factor=2)


def test_the_control_topic_stays_compacted() -> None:
    cfg = PipelineConfig.model_validate({"name": "p", "model": "m", "topics": {
        "input": "t", "policy": {"control": {"cleanup_policy": "delete"}}}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"topics\.policy\.control"):
        desired(cfg)


def test_a_window_stores_topics_follow_the_policy(
    kafka: str, admin: Admin, tmp_path: Path, run_id: str
) -> None:
    from streamproc.kafka.topics import ensure_features_topics
    from streamproc.models.spec import load_model_spec

    policy = {"default": {"min_insync_replicas": 1},
              "state": {"config": {"segment.ms": "3600000"}}}  # fmt: skip
    # fraud 2.0.0 computes windowed features: its store's changelog is one of the topics.
    path = _pipeline(tmp_path, run_id, policy, model="2.0.0", group_id=f"g-{run_id}")
    res = _cli(kafka, "topics", "apply", "-c", str(path), "-o", "json")
    assert res.exit_code == 0, res.output
    made = {c["topic"]: c for c in json.loads(res.output)}
    changelog = f"g-{run_id}.fraud.features-changelog"
    assert made[changelog]["action"] == "create" and made[changelog]["kind"] == "state"
    conf = _configs(admin, changelog)
    assert conf["cleanup.policy"] == "compact"  # what it is for, whatever the policy says
    assert (conf["segment.ms"], conf["min.insync.replicas"]) == ("3600000", "1")
    assert admin.partitions(changelog) == 2  # partitioned like the input

    # The processor at start: the same topics, as the policy makes them.
    other = _pipeline(tmp_path, run_id, policy, model="2.0.0", group_id=f"h-{run_id}")
    cfg = PipelineConfig.model_validate({**yaml.safe_load(other.read_text()),
                                         "kafka": {"bootstrap": kafka}})  # fmt: skip
    features = load_model_spec(cfg.model).features
    assert features is not None
    ensure_features_topics(cfg, "fraud", features)
    assert _configs(admin, f"h-{run_id}.fraud.features-changelog")["segment.ms"] == "3600000"


def test_a_changelog_stays_compacted() -> None:
    cfg = PipelineConfig.model_validate({"name": "p", "model": "m", "topics": {
        "input": "t", "policy": {"state": {"cleanup_policy": "delete"}}}})  # fmt: skip
    from streamproc.models.spec import load_model_spec

    features = load_model_spec(MODELS / "2.0.0").features
    desired(cfg)  # without the model's store: no changelog, nothing to refuse
    with pytest.raises(ConfigError, match=r"topics\.policy\.state"):
        desired(cfg, "fraud", features)
