"""Least privilege from the pipeline config: the Kafka ACLs each role needs, and no more.

Pure: :func:`plan` reads a :class:`~streamproc.config.PipelineConfig` and returns
:class:`AclEntry` rows; :mod:`streamproc.kafka.acls` creates them on the cluster.

- ``processor`` (``streamproc run``): reads its input and feedback topics, writes its
  predictions, dead letters, shadow predictions, alerts and metrics, reads and writes the
  control topic with its audit and replicas topics (a guard's rollback is published there,
  each replica reports there); its consumer group and the groups derived from it (the label
  reader's ``<group>-labels-<instance>``, by prefix); the control reader's ``control-``
  groups; its transactional ids for exactly-once (``<group>-<instance>``, by prefix, or the
  configured one) and the control store's ``streamproc-control-`` prefix. No Create: the
  topics exist before it runs (``--create-topics`` adds Create on them by name). No cluster
  IdempotentWrite: since Kafka 3.0 (KIP-679) Write on a topic lets an idempotent producer
  start. With ``insight.explanations`` on, it writes the explanations topic too.
- ``serve`` (``streamproc serve`` following the control topic, its default): reads and
  writes the control topic with its audit and replicas topics (the rollout state, its
  guard's rollback, its replica reports), writes the alerts topic (the guard's alerts),
  with the control reader's groups and the control store's transactional ids. HTTP
  requests and replies do not touch Kafka; with ``--no-follow-control`` it needs no ACL.
- ``consumer``: reads the predictions topic, in groups with the given prefix (the CLI's and
  Python readers' default ``streamproc-reader-``).
- ``alerts``: reads the alerts topic, in groups with the given prefix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from streamproc.config import PipelineConfig
from streamproc.errors import ConfigError
from streamproc.features.spec import (
    FeaturesSpec,
    changelog_topic,
    repartition_group,
    repartition_topic,
)
from streamproc.rollout.replicas import replicas_topic
from streamproc.rollout.store import audit_topic

Role = Literal["processor", "serve", "consumer", "alerts"]
Operation = Literal["READ", "WRITE", "DESCRIBE", "CREATE", "IDEMPOTENT_WRITE"]
ROLES: tuple[Role, ...] = ("processor", "serve", "consumer", "alerts")
READER_GROUP_PREFIX = "streamproc-reader-"
CONTROL_GROUP_PREFIX = "control-"
CONTROL_TXN_PREFIX = "streamproc-control-"


@dataclass(frozen=True, order=True)
class AclEntry:
    """One ALLOW ACL: ``principal`` may do ``operation`` on the resource."""

    resource_type: Literal["TOPIC", "GROUP", "TRANSACTIONAL_ID", "CLUSTER"]
    name: str
    pattern_type: Literal["LITERAL", "PREFIXED"]
    operation: Operation
    principal: str
    host: str = "*"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.principal} ALLOW {self.operation} on {self.resource_type} "
                f"{self.pattern_type} {self.name}")  # fmt: skip


def _check_principal(principal: str) -> None:
    kind, _, name = principal.partition(":")
    if not kind or not name:
        raise ConfigError(f"principal {principal!r}: expected TYPE:NAME, e.g. User:fraud-processor")


def plan(
    cfg: PipelineConfig,
    principal: str,
    role: Role = "processor",
    *,
    group_prefix: str = READER_GROUP_PREFIX,
    create_topics: bool = False,
    model: str = "",
    features: FeaturesSpec | None = None,
) -> list[AclEntry]:
    """The ACLs ``principal`` needs to act as ``role`` for the pipeline, sorted, unique.
    ``model`` and ``features``: the pipeline model's name and ``features`` section, whose
    window store writes and reads a changelog topic (the processor creates it at start),
    re-keys an input through a repartition topic and may send closed windows to a topic."""
    _check_principal(principal)
    t = cfg.topics
    out: set[AclEntry] = set()

    def topic(name: str, *ops: Operation) -> None:
        for op in ops:
            out.add(AclEntry("TOPIC", name, "LITERAL", op, principal))

    def group(name: str, pattern: Literal["LITERAL", "PREFIXED"]) -> None:
        out.add(AclEntry("GROUP", name, pattern, "READ", principal))

    if role == "processor":
        topic(t.input, "READ", "DESCRIBE")
        if t.feedback:
            topic(t.feedback, "READ", "DESCRIBE")
        explain = [cfg.explanations_topic] if cfg.insight.explanations.enabled else []
        for name in (t.predictions, t.dlq, t.shadow, t.alerts, t.metrics, *explain):
            topic(name, "WRITE", "DESCRIBE")
        for name in (t.control, audit_topic(t.control), replicas_topic(t.control)):
            topic(name, "READ", "WRITE", "DESCRIBE")
        if create_topics:
            names = [t.input, t.predictions, t.dlq, t.shadow, t.alerts, t.metrics, t.control,
                     audit_topic(t.control), replicas_topic(t.control), *explain]  # fmt: skip
            for name in [*names, *([t.feedback] if t.feedback else [])]:
                topic(name, "CREATE")
        group(cfg.group_id, "LITERAL")
        group(f"{cfg.group_id}-", "PREFIXED")  # <group>-labels-<instance>
        group(CONTROL_GROUP_PREFIX, "PREFIXED")
        if features is not None:
            changelog = changelog_topic(cfg.group_id, model)
            topic(changelog, "READ", "WRITE", "DESCRIBE", "CREATE")  # created at start
            if features.key:
                topic(repartition_topic(t.input, model), "READ", "WRITE", "DESCRIBE", "CREATE")
                group(repartition_group(cfg.group_id), "LITERAL")
            if features.closed_topic:
                topic(features.closed_topic, "WRITE", "DESCRIBE", "CREATE")
        txns: list[tuple[str, Literal["LITERAL", "PREFIXED"]]] = [(CONTROL_TXN_PREFIX, "PREFIXED")]
        if cfg.delivery.guarantee == "exactly-once":
            txn = cfg.delivery.transactional_id
            txns.append((txn, "LITERAL") if txn else (f"{cfg.group_id}-", "PREFIXED"))
            if txn and features is not None and features.key:  # the repartition stage's
                txns.append((f"{txn}.repartition", "LITERAL"))
        for name, pattern in txns:
            out.add(AclEntry("TRANSACTIONAL_ID", name, pattern, "WRITE", principal))
            out.add(AclEntry("TRANSACTIONAL_ID", name, pattern, "DESCRIBE", principal))
    elif role == "serve":
        topic(t.alerts, "WRITE", "DESCRIBE")
        control = (t.control, audit_topic(t.control), replicas_topic(t.control))
        for name in control:
            topic(name, "READ", "WRITE", "DESCRIBE")
            if create_topics:
                topic(name, "CREATE")
        group(CONTROL_GROUP_PREFIX, "PREFIXED")
        for op in ("WRITE", "DESCRIBE"):
            out.add(AclEntry("TRANSACTIONAL_ID", CONTROL_TXN_PREFIX, "PREFIXED", op, principal))
    elif role in ("consumer", "alerts"):
        topic(t.predictions if role == "consumer" else t.alerts, "READ", "DESCRIBE")
        group(group_prefix, "PREFIXED")
    else:
        raise ConfigError(f"role {role!r}: choose one of {', '.join(ROLES)}")
    return sorted(out)


__all__ = ["ROLES", "AclEntry", "Operation", "Role", "plan"]
