"""A pipeline's topics on the cluster: read what exists, create what is missing, alter the
configs that differ from the policy (:mod:`streamproc.topicplan`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from streamproc.config import PipelineConfig
from streamproc.errors import KafkaError
from streamproc.features.spec import FeaturesSpec
from streamproc.kafka.admin import Admin
from streamproc.topicplan import (
    TopicChange,
    TopicSpec,
    TopicState,
    check_replication,
    desired,
    diff,
)


def _describe(admin: Admin, names: Iterable[str], timeout_s: float) -> dict[str, TopicState]:
    """The existing topics among ``names``: partitions, replicas and configs."""
    md = admin.list_topics(timeout_s=timeout_s)
    present = [n for n in names if n in md.topics and md.topics[n].error is None]
    if not present:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in present]
    futures = admin.client.describe_configs(resources, request_timeout=timeout_s)
    out: dict[str, TopicState] = {}
    for res, fut in futures.items():
        try:
            entries = fut.result(timeout=timeout_s)
        except KafkaException as exc:
            raise KafkaError(f"could not describe the topic's configs: {exc}",
                             topic=res.name) from exc  # fmt: skip
        parts = md.topics[res.name].partitions
        rf = min((len(p.replicas) for p in parts.values()), default=0)
        conf = {k: e.value for k, e in entries.items() if e.value is not None}
        out[res.name] = TopicState(len(parts), rf, conf)
    return out


def plan(
    cfg: PipelineConfig,
    admin: Admin | None = None,
    timeout_s: float = 30.0,
    *,
    model: str | None = None,
    features: FeaturesSpec | None = None,
) -> list[TopicChange]:
    """What :func:`apply` would do; changes nothing. ``model``, ``features``: see
    :func:`~streamproc.topicplan.desired`."""
    admin = admin or Admin(cfg.kafka)
    specs = desired(cfg, model, features)
    return diff(specs, _describe(admin, [s.name for s in specs], timeout_s))


def _create(admin: Admin, specs: list[TopicSpec], timeout_s: float) -> None:
    for s in specs:
        admin.ensure_topics([s.name], partitions=s.partitions, config=s.config,
                            timeout_s=timeout_s,
                            replication_factor=s.replication_factor or -1)  # fmt: skip


def apply(
    cfg: PipelineConfig,
    timeout_s: float = 30.0,
    *,
    model: str | None = None,
    features: FeaturesSpec | None = None,
) -> list[TopicChange]:
    """Create the missing topics and alter the policy's configs of existing ones
    (incrementalAlterConfigs: the keys the policy does not name are left as they are).
    A replication factor above the number of brokers fails first, naming the topic."""
    admin = Admin(cfg.kafka)
    specs = desired(cfg, model, features)
    check_replication(specs, len(admin.list_topics(timeout_s=timeout_s).brokers))
    changes = diff(specs, _describe(admin, [s.name for s in specs], timeout_s))
    by_name = {s.name: s for s in specs}
    _create(admin, [by_name[c.topic] for c in changes if c.action == "create"], timeout_s)
    alters = [c for c in changes if c.action == "alter"]
    if alters:
        resources = [
            ConfigResource(ResourceType.TOPIC, c.topic, incremental_configs=[
                ConfigEntry(k, wanted, incremental_operation=AlterConfigOpType.SET)
                for k, (_, wanted) in c.changes.items()])
            for c in alters
        ]  # fmt: skip
        futures = admin.client.incremental_alter_configs(resources, request_timeout=timeout_s)
        for res, fut in futures.items():
            try:
                fut.result(timeout=timeout_s)
            except KafkaException as exc:
                raise KafkaError(f"could not alter the topic's configs: {exc}",
                                 topic=res.name) from exc  # fmt: skip
    return changes


def ensure_pipeline_topics(
    cfg: PipelineConfig, timeout_s: float = 30.0, kinds: Collection[str] | None = None
) -> None:
    """At a processor's start: create the missing topics as the policy makes them; existing
    ones are left as they are (``streamproc topics apply`` changes those). ``kinds``: only
    the topics of these kinds (an HTTP server needs only the control topics)."""
    admin = Admin(cfg.kafka)
    specs = [s for s in desired(cfg) if kinds is None or s.kind in kinds]
    existing = set(admin.list_topics(timeout_s=timeout_s).topics)
    missing = [s for s in specs if s.name not in existing]
    if missing:
        check_replication(missing, len(admin.list_topics(timeout_s=timeout_s).brokers))
        _create(admin, missing, timeout_s)


def ensure_features_topics(
    cfg: PipelineConfig, model: str, features: FeaturesSpec, timeout_s: float = 30.0
) -> None:
    """At a processor's start: create the missing topics of a model's window store (its
    changelog, repartition and closed-windows topics) as the policy makes them, with as
    many partitions as the input has (state is partitioned like the input)."""
    admin = Admin(cfg.kafka)
    base = {s.name for s in desired(cfg)}
    parts = admin.partitions(cfg.topics.input)
    specs = [dataclasses.replace(s, partitions=parts)
             for s in desired(cfg, model, features) if s.name not in base]  # fmt: skip
    existing = set(admin.list_topics(timeout_s=timeout_s).topics)
    missing = [s for s in specs if s.name not in existing]
    if missing:
        check_replication(missing, len(admin.list_topics(timeout_s=timeout_s).brokers))
        _create(admin, missing, timeout_s)


__all__ = ["apply", "ensure_features_topics", "ensure_pipeline_topics", "plan"]
