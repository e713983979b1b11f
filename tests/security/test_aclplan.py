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


def test_a_principal_needs_a_type() -> None:
    with pytest.raises(ConfigError, match="TYPE:NAME"):
        plan(_cfg(), "alice")
