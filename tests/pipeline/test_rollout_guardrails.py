"""The rollout controller live in the stream: automatic rollback, steps, approval gate."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from streamproc import synth
from streamproc.backends.base import Backend
from streamproc.backends.select import load_backend
from streamproc.kafka.control import KafkaControlStore, read_to_end
from streamproc.models.spec import ModelSpec, load_model_spec
from streamproc.pipeline.rollout import RolloutScorer, build_rollout_scorer
from streamproc.rollout.guardrails import Guardrails, GuardrailThresholds
from streamproc.rollout.state import (
    Approve,
    Deploy,
    DeploymentState,
    Status,
    Strategy,
    StrategyParams,
    decode,
)
from streamproc.rollout.store import execute
from tests.pipeline.conftest import MODEL

pytestmark = pytest.mark.kafka

STABLE, CANDIDATE = "1.0.0", "1.1.0"


class _Slow(Backend):
    """Wraps a backend, adding ``delay_s`` to every call (the injected latency)."""

    name = "slow"

    def __init__(self, inner: Backend, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        time.sleep(self.delay_s)  # latency under test, not synchronisation
        return self.inner.infer(batch)


def _loader(slow: set[str], delay_s: float = 0.05) -> Callable[[str], tuple[ModelSpec, Backend]]:
    """Every version is the same model (same scores) under its own version number."""
    base = load_model_spec(MODEL)

    def load(version: str) -> tuple[ModelSpec, Backend]:
        backend: Backend = load_backend(base)
        if version in slow:
            backend = _Slow(backend, delay_s)
        return base.model_copy(update={"version": version}), backend

    return load


def _now_ms() -> int:
    return int(time.time() * 1000)


def _deploy(cfg, strategy: Strategy, params: StrategyParams) -> KafkaControlStore:
    store = KafkaControlStore(cfg.kafka.bootstrap, cfg.topics.control)
    execute(store, Deploy("fraud", STABLE, at_ms=_now_ms()))
    execute(store, Deploy("fraud", CANDIDATE, strategy, params, at_ms=_now_ms()))
    return store


def _produce(producer, n: int, offset: int, keys: int = 400) -> list[dict]:
    records, _ = synth.generate(n, seed=31, offset=offset)
    for i, r in enumerate(records):
        r["account_id"] = f"acct-{(offset + i) % keys:06d}"
        producer.send(r, key=r["account_id"])
    producer.flush()
    return records


def _produce_until_rolled_back(
    store: KafkaControlStore, producer, sent: list[dict], n: int, rounds: int = 40
) -> DeploymentState:
    """Produce ``n`` events at a time until the control topic shows the rollback (at most
    ``rounds`` times); the rolled-back state."""
    for _ in range(rounds):
        sent += _produce(producer, n, offset=len(sent))
        state = store.latest("fraud")
        if state is not None and state.status is Status.ROLLED_BACK:
            return state
    raise AssertionError(f"no rollback after {len(sent)} events: {store.latest('fraud')}")


def _feed_until(producer, event: threading.Event, sent: list[dict], rounds: int = 40) -> None:
    """Produce 200 events at a time until ``event`` is set (at most ``rounds`` times)."""
    for _ in range(rounds):
        sent += _produce(producer, 200, offset=len(sent))
        if event.wait(3):
            return
    raise AssertionError("the controller never got there")


def test_a_slow_candidate_is_rolled_back_with_an_alert(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg = pipeline_config_factory(guarantee="exactly-once", partitions=2)
    # Promotion would need an hour: only a guardrail breach can end this canary.
    params = StrategyParams(percent=50, step_min_seconds=3600, step_min_events=10)
    store = _deploy(cfg, Strategy.CANARY, params)
    rolled = threading.Event()

    def on_applied(s: DeploymentState) -> None:
        if s.status is Status.ROLLED_BACK:
            rolled.set()

    guardrails = Guardrails(GuardrailThresholds(min_events=50, min_latency_samples=50))
    scorer = build_rollout_scorer(
        cfg.kafka.bootstrap, cfg.topics.control, cfg.model, on_applied=on_applied,
        loader=_loader({CANDIDATE}), guardrails=guardrails, decide_interval_s=0.2,
    )  # fmt: skip
    assert scorer is not None
    try:
        running = processor_factory(cfg, scorer=scorer)
        producer = event_producer_factory(cfg.topics.input)
        sent: list[dict] = []
        _feed_until(producer, rolled, sent)
        after = _produce(producer, 500, offset=len(sent))
        sent += after
        preds = read_topic(cfg.topics.predictions, len(sent) + 1, idle_s=5)
        alerts = read_topic(cfg.topics.alerts, 1000, idle_s=3)
        running.stop()
    finally:
        scorer.close()
    final = store.latest("fraud")
    assert final is not None
    assert (final.status, final.candidate, final.stable) == (Status.ROLLED_BACK, CANDIDATE, STABLE)
    assert final.actor == "controller" and final.revision == 3
    assert "p99 latency" in final.reason
    # The automatic rollback is on the audit trail like an operator's command.
    audited = [decode(v) for k, v in read_to_end(cfg.kafka.bootstrap, store.audit_topic)
               if k == b"fraud" and v is not None]  # fmt: skip
    assert [(s.revision, s.actor, s.command) for s in audited][-1] == (3, "controller", "rollback")
    rollbacks = [a.value for a in alerts if a.value["type"] == "rollback"]
    assert len(rollbacks) == 1
    (alert,) = rollbacks
    assert (alert["model_version"], alert["statistic"]) == (CANDIDATE, "p99_latency_ms")
    assert alert["value"] > alert["threshold"] and alert["severity"] == "CRITICAL"
    counts = Counter(p.value["event_id"] for p in preds)
    assert set(counts) == {r["event_id"] for r in sent}
    assert set(counts.values()) == {1}  # exactly once, rollback or not
    late = {r["event_id"] for r in after}
    assert {p.value["model_version"] for p in preds if p.value["event_id"] in late} == {STABLE}
    assert any(p.value["model_version"] == CANDIDATE for p in preds)  # it did serve before


def test_a_gated_gradual_rollout_steps_waits_for_approval_then_promotes(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg = pipeline_config_factory(partitions=2)
    params = StrategyParams(steps=(50, 100), step_min_seconds=0, step_min_events=50,
                            approval=True)  # fmt: skip
    store = _deploy(cfg, Strategy.ROLLOUT, params)
    awaiting = threading.Event()
    promoted = threading.Event()

    def on_applied(s: DeploymentState) -> None:
        if s.status is Status.AWAITING_APPROVAL:
            awaiting.set()
        if s.status is Status.PROMOTED and s.stable == CANDIDATE:
            promoted.set()

    # Same model under both versions: only a real regression could breach these.
    guardrails = Guardrails(GuardrailThresholds(
        min_events=50, min_latency_samples=50, p99_slack_ms=1000, min_drift_samples=50,
        max_psi=1e6,
    ))  # fmt: skip
    scorer = build_rollout_scorer(
        cfg.kafka.bootstrap, cfg.topics.control, cfg.model, on_applied=on_applied,
        loader=_loader(set()), guardrails=guardrails, decide_interval_s=0.2,
    )  # fmt: skip
    assert scorer is not None and scorer.guard is not None
    try:
        running = processor_factory(cfg, scorer=scorer)
        producer = event_producer_factory(cfg.topics.input)
        sent: list[dict] = []
        _feed_until(producer, awaiting, sent)
        # More traffic while gated: every event served, and the controller does not move.
        sent += _produce(producer, 500, offset=len(sent))
        assert len(read_topic(cfg.topics.predictions, len(sent), idle_s=10)) >= len(sent)
        waiting = store.latest("fraud")
        assert waiting is not None and waiting.status is Status.AWAITING_APPROVAL
        decision = scorer.guard.check(now_ms=_now_ms() + 3_600_000)
        assert decision is not None and decision.command is None
        assert decision.note == "waiting: approval"
        assert store.latest("fraud") == waiting
        execute(store, Approve("fraud", at_ms=_now_ms()))
        _feed_until(producer, promoted, sent)
        after = _produce(producer, 300, offset=len(sent))
        sent += after
        preds = read_topic(cfg.topics.predictions, 10**9, idle_s=5)
        running.stop()
    finally:
        scorer.close()
    history = store.history("fraud")
    assert [(s.command, s.actor, s.status) for s in history[2:]] == [
        ("step", "controller", Status.ACTIVE),
        ("promote", "controller", Status.AWAITING_APPROVAL),
        ("approve", "operator", Status.PROMOTED),
    ]
    assert (history[-1].stable, history[-1].previous) == (CANDIDATE, STABLE)
    assert {p.value["event_id"] for p in preds} == {r["event_id"] for r in sent}
    late = {r["event_id"] for r in after}
    assert {p.value["model_version"] for p in preds if p.value["event_id"] in late} == {CANDIDATE}


def test_a_candidate_that_raises_falls_back_to_stable_and_counts_failures():
    from streamproc.pipeline.guard import RolloutGuard
    from streamproc.rollout.controller import RolloutController
    from streamproc.rollout.state import apply
    from streamproc.rollout.store import InMemoryControlStore

    class Broken(Backend):
        name = "broken"

        def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            raise RuntimeError("CUDA error")

    base = load_model_spec(MODEL)

    def load(version: str) -> tuple[ModelSpec, Backend]:
        backend: Backend = load_backend(base) if version == STABLE else Broken()
        return base.model_copy(update={"version": version}), backend

    store = InMemoryControlStore()
    execute(store, Deploy("fraud", STABLE, at_ms=0))
    state = execute(store, Deploy("fraud", CANDIDATE, Strategy.CANARY,
                                  StrategyParams(percent=50), at_ms=0))  # fmt: skip
    scorer = RolloutScorer(apply(None, Deploy("fraud", STABLE, at_ms=0)), load)
    ctl = RolloutController("fraud", Guardrails(GuardrailThresholds(min_events=50)))
    scorer.guard = RolloutGuard(lambda: scorer.snapshot.requested, store, ctl)
    assert scorer.apply(state)
    x = np.zeros((400, len(base.columns)), np.float32)
    out = scorer.score(x, [f"k{i}".encode() for i in range(400)])
    assert not out.version_index.any() and out.scores.shape[0] == 400  # all served by stable
    failed = ctl.stats_of(CANDIDATE).failures_total
    assert 100 < failed < 300  # about half the keys were the candidate's
    decision = scorer.guard.check(now_ms=1)
    assert decision is not None and decision.alert is not None
    assert decision.alert.metric == "error_rate"
    latest = store.latest("fraud")
    assert latest is not None and latest.status is Status.ROLLED_BACK
    assert [a.type for a in scorer.drain_alerts()] == ["rollback"]


class _Broken:
    """A candidate whose every inference fails (a CUDA error, say)."""

    name = "broken"

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        raise RuntimeError("CUDA error")


def test_a_failing_candidate_is_rolled_back_on_the_control_topic(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    """The error-rate rollback live: the real broker's control topic, the pipeline's
    scorer and controller; every event served (by stable) exactly once."""
    cfg = pipeline_config_factory(guarantee="exactly-once", partitions=2)
    params = StrategyParams(percent=50, step_min_seconds=3600, step_min_events=10)
    store = _deploy(cfg, Strategy.CANARY, params)
    rolled = threading.Event()

    def on_applied(s: DeploymentState) -> None:
        if s.status is Status.ROLLED_BACK:
            rolled.set()

    base = load_model_spec(MODEL)

    def load(version: str) -> tuple[ModelSpec, BackendLike]:
        backend: BackendLike = load_backend(base) if version == STABLE else _Broken()
        return base.model_copy(update={"version": version}), backend

    scorer = build_rollout_scorer(
        cfg.kafka.bootstrap, cfg.topics.control, cfg.model, on_applied=on_applied,
        loader=load, guardrails=Guardrails(GuardrailThresholds(min_events=50)),
        decide_interval_s=0.2,
    )  # fmt: skip
    assert scorer is not None
    try:
        running = processor_factory(cfg, scorer=scorer)
        producer = event_producer_factory(cfg.topics.input)
        sent: list[dict] = []
        _feed_until(producer, rolled, sent)
        after = _produce(producer, 500, offset=len(sent))
        sent += after
        preds = read_topic(cfg.topics.predictions, len(sent) + 1, idle_s=5)
        alerts = read_topic(cfg.topics.alerts, 1000, idle_s=3)
        dead = read_topic(cfg.topics.dlq, 1, idle_s=2)
        running.stop()
    finally:
        scorer.close()
    # The control topic (not a store in memory) holds the controller's rollback.
    final = KafkaControlStore(cfg.kafka.bootstrap, cfg.topics.control).latest("fraud")
    assert final is not None
    assert (final.status, final.candidate, final.stable) == (Status.ROLLED_BACK, CANDIDATE, STABLE)
    assert final.actor == "controller" and final.revision == 3
    assert "error rate" in final.reason
    audited = [decode(v) for k, v in read_to_end(cfg.kafka.bootstrap, store.audit_topic)
               if k == b"fraud" and v is not None]  # fmt: skip
    assert [(s.revision, s.actor, s.command) for s in audited][-1] == (3, "controller", "rollback")
    (alert,) = [a.value for a in alerts if a.value["type"] == "rollback"]
    assert (alert["model_version"], alert["statistic"]) == (CANDIDATE, "error_rate")
    assert alert["value"] > alert["threshold"] and alert["severity"] == "CRITICAL"
    # The candidate's failures fell back to stable: nothing dead-lettered, nothing lost.
    assert dead == []
    counts = Counter(p.value["event_id"] for p in preds)
    assert set(counts) == {r["event_id"] for r in sent}
    assert set(counts.values()) == {1}
    assert {p.value["model_version"] for p in preds} == {STABLE}


def test_the_pipeline_configs_rollout_section_sets_the_live_guardrails(
    pipeline_config_factory, processor_factory, event_producer_factory
):
    # A p99 cap no version meets: with the default thresholds this canary (the same model
    # as stable, promotion an hour away) would run on; only the config can roll it back.
    guardrails = {"max_p99_ms": 0.01, "min_events": 20, "min_latency_samples": 20}
    cfg = pipeline_config_factory(
        partitions=1, rollout={"guardrails": guardrails, "decide_interval_s": 0.2}
    )
    params = StrategyParams(percent=50, step_min_seconds=3600, step_min_events=10)
    store = _deploy(cfg, Strategy.CANARY, params)
    running = processor_factory(cfg)  # build_processor finds the deployment, reads cfg.rollout
    producer = event_producer_factory(cfg.topics.input)
    final = _produce_until_rolled_back(store, producer, [], 200)  # at most 8,000 events
    running.stop()
    assert final.actor == "controller" and "p99 latency" in final.reason
    assert "exceeds 0.01 ms" in final.reason  # the configured cap, not a default


def test_labels_on_the_feedback_topic_roll_back_a_candidate_that_gets_them_wrong(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    # The labels say stable was right on every event and the candidate wrong on every
    # event: only the accuracy guardrail, fed from the feedback topic, can end this canary
    # (promotion is an hour away; the drift guardrail is opened wide: the versions differ).
    guardrails = {"min_labels": 50, "min_events": 20, "max_psi": 100.0, "max_ks": 1.0}
    cfg = pipeline_config_factory(
        partitions=1, rollout={"guardrails": guardrails, "decide_interval_s": 0.2}
    )
    params = StrategyParams(percent=50, step_min_seconds=3600, step_min_events=10)
    store = _deploy(cfg, Strategy.CANARY, params)
    running = processor_factory(cfg)  # build_processor wires the monitor to the guard
    events = event_producer_factory(cfg.topics.input)
    sent = _produce(events, 600, offset=0)
    preds = read_topic(cfg.topics.predictions, len(sent))
    assert {p.value["model_version"] for p in preds} == {STABLE, CANDIDATE}
    labels = event_producer_factory(cfg.topics.feedback, schema="Label")
    for p in preds:
        truth = p.value["label"]
        if p.value["model_version"] == CANDIDATE:
            truth = "legit" if truth == "fraud" else "fraud"
        labels.send({"event_id": p.value["event_id"], "label": truth, "time": _now_ms()})
    labels.flush()
    # labels are joined as batches come: keep a trickle of events flowing
    final = _produce_until_rolled_back(store, events, sent, 20)
    running.stop()
    assert final.actor == "controller" and "candidate accuracy 0.00%" in final.reason
    assert "(stable 100.00%)" in final.reason
