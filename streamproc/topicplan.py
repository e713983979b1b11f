"""The topics a pipeline creates, and how each is made, from its config (``topics.policy``).

Pure: :func:`desired` reads a :class:`~streamproc.config.PipelineConfig` and returns one
:class:`TopicSpec` per topic; :func:`diff` compares them with what the cluster has (read by
:mod:`streamproc.kafka.topics`, which also applies the plan).

>>> from streamproc.config import PipelineConfig
>>> cfg = PipelineConfig.model_validate({"name": "p", "model": "m", "topics": {
...     "input": "tx", "policy": {"default": {"replication_factor": 3,
...     "min_insync_replicas": 2}}}})
>>> specs = {s.name: s for s in desired(cfg)}
>>> specs["tx.dlq"].replication_factor, specs["tx.dlq"].config["min.insync.replicas"]
(3, '2')
>>> specs["streamproc.control"].config["cleanup.policy"], specs["tx.shadow"].kind
('compact', 'predictions')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streamproc.config import PipelineConfig, TopicKind, TopicPolicy
from streamproc.errors import ConfigError
from streamproc.features.spec import (
    CHANGELOG_TOPIC_CONFIG,
    FeaturesSpec,
    changelog_topic,
    repartition_topic,
)
from streamproc.rollout.replicas import REPLICAS_TOPIC_CONFIG, replicas_topic
from streamproc.rollout.store import audit_topic

# The control topic holds the latest deployment per model (compacted); its audit topic keeps
# every change forever; the replicas' reports keep the latest per replica. These settings are
# what the topics are for, so the policy cannot change them (it sets the rest).
CONTROL_TOPIC_CONFIG = {"cleanup.policy": "compact"}
AUDIT_TOPIC_CONFIG = {"cleanup.policy": "delete", "retention.ms": "-1"}
_FIXED = {"control": CONTROL_TOPIC_CONFIG, "audit": AUDIT_TOPIC_CONFIG,
          "replicas": REPLICAS_TOPIC_CONFIG, "state": CHANGELOG_TOPIC_CONFIG}  # fmt: skip
# The topic configs a policy names, as Kafka spells them.
POLICY_KEYS = ("min.insync.replicas", "retention.ms", "cleanup.policy")
Action = Literal["create", "alter", "ok"]


@dataclass(frozen=True)
class TopicSpec:
    """One topic as the pipeline wants it. ``replication_factor`` None: the broker's
    default; ``config`` holds only what the policy sets."""

    name: str
    kind: TopicKind
    partitions: int
    replication_factor: int | None
    config: Mapping[str, str]


@dataclass(frozen=True)
class TopicState:
    """One existing topic as the cluster has it; ``config`` holds every key it reported."""

    partitions: int
    replication_factor: int
    config: Mapping[str, str]


@dataclass
class TopicChange:
    """What :func:`diff` found for one topic: ``changes`` maps a config key to (now, wanted)
    (now is None for a topic to create); ``notes`` says what ``apply`` cannot change."""

    topic: str
    kind: TopicKind
    action: Action
    partitions: int
    replication_factor: int | None
    changes: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "kind": self.kind, "action": self.action,
                "partitions": self.partitions, "replication_factor": self.replication_factor,
                "changes": {k: {"now": a, "wanted": b} for k, (a, b) in self.changes.items()},
                "notes": self.notes}  # fmt: skip


def policy_config(policy: TopicPolicy) -> dict[str, str]:
    """A policy's topic configs, as Kafka spells them.

    >>> policy_config(TopicPolicy(min_insync_replicas=2, retention_ms=-1, config={"a": "b"}))
    {'a': 'b', 'min.insync.replicas': '2', 'retention.ms': '-1'}
    """
    out = dict(policy.config)
    values = (policy.min_insync_replicas, policy.retention_ms, policy.cleanup_policy)
    for key, value in zip(POLICY_KEYS, values, strict=True):
        if value is not None:
            out[key] = str(value)
    return out


def desired(
    cfg: PipelineConfig, model: str | None = None, features: FeaturesSpec | None = None
) -> list[TopicSpec]:
    """Every topic the processor creates when it is missing, as the policy makes it.

    ``model`` and ``features``: the pipeline model's name and ``features`` section, whose
    window store adds its changelog (kind ``state``, compacted whatever the policy says), the
    repartition topic of features keyed by event fields (kind ``input``) and the closed
    windows' topic (kind ``predictions``), each with the input's partition count.

    >>> from streamproc.config import PipelineConfig
    >>> cfg = PipelineConfig.model_validate({"name": "p", "model": "m", "group_id": "g",
    ...     "topics": {"input": "tx", "policy": {"default": {"retention_ms": 86400000}}}})
    >>> fs = FeaturesSpec.model_validate({"key": ["account_id"], "definitions": [
    ...     {"name": "n_1h", "agg": "count", "window": {"size": "1h"}}]})
    >>> for s in desired(cfg, "fraud", fs)[-2:]:
    ...     print(s.name, s.kind, s.config.get("cleanup.policy"), s.config["retention.ms"])
    g.fraud.features-changelog state compact 86400000
    tx.repartition.fraud input None 86400000
    """
    t = cfg.topics
    rows: list[tuple[str, TopicKind, int, str | None]] = [
        (t.input, "input", t.partitions, None),
        (t.predictions, "predictions", t.partitions, None),
        (t.dlq, "dlq", t.partitions, None),
        (t.shadow, "predictions", t.partitions, None),
        (t.alerts, "alerts", 1, None),
        (t.metrics, "metrics", 1, None),
        (t.control, "control", 1, "control"),
        (audit_topic(t.control), "control", 1, "audit"),
        (replicas_topic(t.control), "control", 1, "replicas"),
    ]
    if t.feedback:
        rows.append((t.feedback, "feedback", t.partitions, None))
    if features is not None:
        assert model is not None, "the features' model names their topics"
        rows.append((changelog_topic(cfg.group_id, model), "state", t.partitions, "state"))
        if features.key:
            rows.append((repartition_topic(t.input, model), "input", t.partitions, None))
        if features.closed_topic:
            rows.append((features.closed_topic, "predictions", t.partitions, None))
    specs: dict[str, TopicSpec] = {}
    for name, kind, partitions, fixed in rows:
        if name in specs:
            continue  # one topic named for two purposes: the first wins
        policy = t.policy.for_kind(kind)
        conf = policy_config(policy)
        if fixed is not None:
            clash = {k for k, v in _FIXED[fixed].items() if conf.get(k, v) != v}
            if clash and fixed in ("control", "state"):
                raise ConfigError(f"topics.policy.{fixed}: {name} must keep {sorted(clash)} "
                                  f"as {_FIXED[fixed]} (it is compacted state)")  # fmt: skip
            conf.update(_FIXED[fixed])
        specs[name] = TopicSpec(name, kind, partitions, policy.replication_factor, conf)
    return list(specs.values())


def diff(specs: list[TopicSpec], existing: Mapping[str, TopicState]) -> list[TopicChange]:
    """What ``apply`` does to each topic: create it, alter the configs that differ, or
    nothing. A replication factor or partition count that differs is noted, not changed:
    raising either moves data (``kafka-reassign-partitions``) or keys (more partitions).

    >>> spec = TopicSpec("t", "input", 4, 3, {"retention.ms": "1000"})
    >>> [c.action for c in diff([spec], {})]
    ['create']
    >>> [c] = diff([spec], {"t": TopicState(2, 1, {"retention.ms": "604800000"})})
    >>> c.action, c.changes, c.notes  # doctest: +NORMALIZE_WHITESPACE
    ('alter', {'retention.ms': ('604800000', '1000')},
     ['replication factor is 1, the policy wants 3: apply cannot change it (reassign the
       partitions with kafka-reassign-partitions)',
      'has 2 partitions, the pipeline wants 4: apply does not add partitions (it would
       move keys to other partitions)'])
    """
    out = []
    for s in specs:
        state = existing.get(s.name)
        if state is None:
            out.append(TopicChange(s.name, s.kind, "create", s.partitions, s.replication_factor,
                                   {k: (None, v) for k, v in s.config.items()}))  # fmt: skip
            continue
        changes: dict[str, tuple[str | None, str]] = {
            k: (state.config.get(k, ""), v) for k, v in s.config.items()
            if state.config.get(k) != v
        }  # fmt: skip
        notes = []
        rf = s.replication_factor
        if rf is not None and rf != state.replication_factor:
            notes.append(f"replication factor is {state.replication_factor}, the policy wants "
                         f"{rf}: apply cannot change it (reassign the partitions with "
                         "kafka-reassign-partitions)")  # fmt: skip
        if state.partitions < s.partitions:
            notes.append(f"has {state.partitions} partitions, the pipeline wants "
                         f"{s.partitions}: apply does not add partitions (it would move keys "
                         "to other partitions)")  # fmt: skip
        out.append(TopicChange(s.name, s.kind, "alter" if changes else "ok", state.partitions,
                               state.replication_factor, changes, notes))  # fmt: skip
    return out


def check_replication(specs: list[TopicSpec], brokers: int) -> None:
    """Raise :class:`ConfigError` naming the topic and the fix when a policy asks for more
    replicas than the cluster has brokers.

    >>> try:
    ...     check_replication([TopicSpec("t.dlq", "dlq", 1, 3, {})], brokers=1)
    ... except ConfigError as exc:
    ...     print(exc)  # doctest: +NORMALIZE_WHITESPACE
    topic t.dlq (dlq): replication factor 3 > the cluster's 1 broker(s); set
    topics.policy.dlq.replication_factor (or topics.policy.default.replication_factor) to
    at most 1, or add brokers
    """
    for s in specs:
        if s.replication_factor is not None and s.replication_factor > brokers:
            raise ConfigError(
                f"topic {s.name} ({s.kind}): replication factor {s.replication_factor} > the "
                f"cluster's {brokers} broker(s); set topics.policy.{s.kind}.replication_factor "
                f"(or topics.policy.default.replication_factor) to at most {brokers}, or add "
                "brokers"
            )
