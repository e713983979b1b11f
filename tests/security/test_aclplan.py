"""The pure ACL plan: what each role gets from the pipeline config, and nothing more."""

from __future__ import annotations

import pytest

from streamproc.aclplan import AclEntry, plan
from streamproc.config import PipelineConfig
from streamproc.errors import ConfigError


def _cfg(**over: object) -> PipelineConfig:
    return PipelineConfig.model_validate({"name": "fraud", "model": "m",
                                          "topics": {"input": "tx"}, **over})  # fmt: skip


def test_the_processor_reads_inputs_writes_outputs_and_no_more() -> None:
    acls = plan(_cfg(), "User:p")
    topics = {(e.name, e.operation) for e in acls if e.resource_type == "TOPIC"}
    assert ("tx", "READ") in topics and ("tx", "WRITE") not in topics
    for out in ("tx.predictions", "tx.dlq", "tx.shadow", "streamproc.alerts"):
        assert (out, "WRITE") in topics and (out, "READ") not in topics
    assert ("streamproc.control.audit", "WRITE") in topics
    assert not [e for e in acls if e.operation in ("CREATE", "IDEMPOTENT_WRITE")]
    txns = {(e.name, e.pattern_type) for e in acls if e.resource_type == "TRANSACTIONAL_ID"}
    assert txns == {("streamproc-control-", "PREFIXED")}  # at-least-once: no pipeline txn
    assert all(e.principal == "User:p" for e in acls) and acls == sorted(set(acls))


def test_exactly_once_adds_the_transactional_id() -> None:
    prefixed = plan(_cfg(delivery={"guarantee": "exactly-once"}), "User:p")
    assert AclEntry("TRANSACTIONAL_ID", "streamproc-fraud-", "PREFIXED", "WRITE",
                    "User:p") in prefixed  # fmt: skip
    named = plan(_cfg(delivery={"guarantee": "exactly-once", "transactional_id": "t1"}), "User:p")
    assert AclEntry("TRANSACTIONAL_ID", "t1", "LITERAL", "WRITE", "User:p") in named


@pytest.mark.parametrize(("role", "topic"), [("consumer", "tx.predictions"),
                                             ("alerts", "streamproc.alerts")])  # fmt: skip
def test_readers_only_read(role: str, topic: str) -> None:
    acls = plan(_cfg(), "User:r", role, group_prefix="dash-")  # type: ignore[arg-type]
    assert {(e.resource_type, e.name, e.operation) for e in acls} == {
        ("TOPIC", topic, "READ"), ("TOPIC", topic, "DESCRIBE"), ("GROUP", "dash-", "READ")
    }  # fmt: skip


def test_explanations_add_their_topic_to_the_processor() -> None:
    on = _cfg(insight={"explanations": {"enabled": True, "share": 0.01}})
    extra = set(plan(on, "User:p")) - set(plan(_cfg(), "User:p"))
    assert {(e.name, e.operation) for e in extra} == {
        ("tx.explanations", "WRITE"), ("tx.explanations", "DESCRIBE")}  # fmt: skip
    named = _cfg(insight={"explanations": {"enabled": True, "topic": "why"}})
    assert AclEntry("TOPIC", "why", "LITERAL", "CREATE", "User:p") in plan(
        named, "User:p", create_topics=True)  # fmt: skip


def test_serve_gets_the_rollout_state_and_the_alerts_and_nothing_of_the_stream() -> None:
    acls = plan(_cfg(), "User:s", "serve")
    topics = {(e.name, e.operation) for e in acls if e.resource_type == "TOPIC"}
    assert topics == {
        (name, op)
        for name in ("streamproc.control", "streamproc.control.audit",
                     "streamproc.control.replicas")
        for op in ("READ", "WRITE", "DESCRIBE")
    } | {("streamproc.alerts", "WRITE"), ("streamproc.alerts", "DESCRIBE")}  # fmt: skip
    assert {(e.resource_type, e.name) for e in acls if e.resource_type != "TOPIC"} == {
        ("GROUP", "control-"), ("TRANSACTIONAL_ID", "streamproc-control-")}  # fmt: skip
    # Everything serve needs, the processor has: one principal can run both.
    assert set(acls) <= {AclEntry(e.resource_type, e.name, e.pattern_type, e.operation,
                                  "User:s") for e in plan(_cfg(), "User:p")}  # fmt: skip


def test_a_principal_needs_a_type() -> None:
    with pytest.raises(ConfigError, match="TYPE:NAME"):
        plan(_cfg(), "alice")


def test_a_model_with_windowed_features_adds_its_store_topics() -> None:
    from streamproc.features.spec import FeaturesSpec

    count = {"name": "n", "agg": "count", "window": {"size": "1h"}}
    plain = FeaturesSpec.model_validate({"definitions": [count]})
    keyed = FeaturesSpec.model_validate({"key": ["account_id"], "closed_topic": "tx.windows",
                                         "definitions": [count]})  # fmt: skip
    assert plan(_cfg(), "User:p", model="fraud") == plan(_cfg(), "User:p")  # no features

    def topics(features: FeaturesSpec) -> set[tuple[str, str]]:
        acls = plan(_cfg(), "User:p", model="fraud", features=features)
        return {(e.name, e.operation) for e in acls if e.resource_type == "TOPIC"}

    changelog = "streamproc-fraud.fraud.features-changelog"
    assert {(changelog, op) for op in ("READ", "WRITE", "CREATE")} <= topics(plain)
    assert not any(name.startswith("tx.repartition") for name, _ in topics(plain))
    got = topics(keyed)
    assert {("tx.repartition.fraud", "READ"), ("tx.repartition.fraud", "WRITE"),
            ("tx.windows", "WRITE")} <= got and ("tx.windows", "READ") not in got  # fmt: skip
    groups = {e.name for e in plan(_cfg(), "User:p", model="fraud", features=keyed)
              if e.resource_type == "GROUP"}  # fmt: skip
    assert "streamproc-fraud.repartition" in groups
