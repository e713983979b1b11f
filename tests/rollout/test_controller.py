from __future__ import annotations

import numpy as np
import pytest

from streamproc.errors import DeploymentError
from streamproc.rollout.controller import RolloutController
from streamproc.rollout.guardrails import Guardrails, GuardrailThresholds
from streamproc.rollout.state import (
    Deploy,
    DeploymentState,
    Promote,
    Rollback,
    Status,
    Step,
    Strategy,
    StrategyParams,
    apply,
)
from streamproc.rollout.store import InMemoryControlStore

M = "fraud"
S = 1000  # ms


class Clock:
    """An injected clock: tests move it; nothing sleeps."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.ms = start_ms

    def advance(self, seconds: float) -> int:
        self.ms += int(seconds * S)
        return self.ms


def _deploy(clock, strategy=Strategy.ROLLOUT, **params) -> DeploymentState:
    s = apply(None, Deploy(M, "1.0.0", at_ms=clock.ms))
    p = {"steps": (10, 50, 100), "step_min_seconds": 60, "step_min_events": 500, **params}
    return apply(s, Deploy(M, "1.1.0", strategy, StrategyParams(**p), at_ms=clock.ms))


class Traffic:
    """Feeds the controller batches as the router would split them."""

    def __init__(self, ctl: RolloutController, seed: int = 0) -> None:
        self.ctl = ctl
        self.rng = np.random.default_rng(seed)

    def batch(
        self, state: DeploymentState, n=1000, *, cand_latency=0.0, cand_failed=0, cand_wrong=0.0
    ):
        share = state.candidate_percent / 100
        n_c = 0 if state.candidate is None else max(int(n * share), 0)
        if state.shadow:
            n_c = n
        for version, k, extra in (
            (state.stable, n - (0 if state.shadow else n_c), 0.0),
            (state.candidate, n_c, cand_latency),
        ):
            if version is None or k == 0:
                continue
            self.ctl.observe(
                version,
                self.rng.beta(2, 30, k),
                latency_ms=self.rng.gamma(4, 0.5, k) + extra,
                failed=cand_failed if version == state.candidate else 0,
            )
            wrong = cand_wrong if version == state.candidate else 0.05
            self.ctl.observe_feedback(version, self.rng.random(k // 2) >= wrong)


def test_gradual_rollout_steps_and_promotes_on_the_injected_clock():
    clock = Clock()
    state = _deploy(clock)
    ctl = RolloutController(M)
    traffic = Traffic(ctl)
    shares = [state.candidate_percent]
    notes = []
    for _ in range(40):
        clock.advance(15)
        traffic.batch(state, 1000)
        d = ctl.decide(state, clock.ms)
        notes.append(d.note)
        assert d.alert is None
        if d.command is None:
            continue
        assert d.command.if_revision == state.revision and d.command.actor == "controller"
        state = apply(state, d.command)
        if isinstance(d.command, Promote):
            break
        shares.append(state.candidate_percent)
    assert shares == [10, 50, 100]
    assert state.status is Status.PROMOTED and state.stable == "1.1.0"
    # a step at 10% needs 500 candidate events: 100 per batch -> 5 batches (75 s > 60 s)
    first_step = next(i for i, n in enumerate(notes) if n == "step")
    assert first_step == 4
    assert "candidate events in this step" in notes[0]


def test_waits_for_the_minimum_time_even_with_plenty_of_events():
    clock = Clock()
    state = _deploy(clock, step_min_seconds=300, step_min_events=10)
    ctl = RolloutController(M)
    traffic = Traffic(ctl)
    for _ in range(5):
        traffic.batch(state, 5000)
    clock.advance(299)
    d = ctl.decide(state, clock.ms)
    assert d.command is None and d.note == "waiting: step held 299.0/300 s"
    d = ctl.decide(state, clock.advance(1))
    assert isinstance(d.command, Step)


def test_step_events_restart_at_each_step():
    clock = Clock()
    state = _deploy(clock, step_min_seconds=0, step_min_events=300)
    ctl = RolloutController(M)
    traffic = Traffic(ctl)
    for _ in range(3):
        traffic.batch(state, 1000)  # 100 candidate events each
    d = ctl.decide(state, clock.advance(1))
    assert isinstance(d.command, Step)
    state = apply(state, d.command)
    ctl.sync(state)
    assert ctl.step_events("1.1.0") == 0
    traffic.batch(state, 400)  # 200 at 50%: not enough yet
    assert ctl.decide(state, clock.advance(1)).command is None
    traffic.batch(state, 400)
    assert isinstance(ctl.decide(state, clock.advance(1)).command, Step)


def test_breach_rolls_back_with_an_alert():
    clock = Clock()
    state = _deploy(clock, Strategy.CANARY, percent=20)
    ctl = RolloutController(M)
    traffic = Traffic(ctl)
    for _ in range(5):
        traffic.batch(state, 1000, cand_latency=40.0)
    d = ctl.decide(state, clock.advance(10))
    assert isinstance(d.command, Rollback)
    assert d.command.reason.startswith("guardrail breach: candidate p99 latency")
    alert = d.alert
    assert (alert.model, alert.version, alert.stable, alert.metric) == (
        M,
        "1.1.0",
        "1.0.0",
        "p99_latency_ms",
    )
    assert alert.value > alert.threshold and alert.window_events == 1000
    record = alert.as_record()
    assert record["type"] == "rollback" and record["severity"] == "CRITICAL"
    assert record["statistic"] == "p99_latency_ms" and record["time"] == clock.ms
    state = apply(state, d.command)
    assert state.status is Status.ROLLED_BACK and state.stable == "1.0.0"
    assert ctl.decide(state, clock.advance(1)).command is None


def test_wrong_outputs_on_labelled_events_roll_back():
    clock = Clock()
    state = _deploy(clock, Strategy.SHADOW)
    ctl = RolloutController(M)
    traffic = Traffic(ctl)
    for _ in range(3):
        traffic.batch(state, 500, cand_wrong=0.4)
    d = ctl.decide(state, clock.advance(1))
    assert isinstance(d.command, Rollback) and d.alert.metric == "accuracy"


def test_approval_gate_then_breach_while_waiting():
    clock = Clock()
    state = _deploy(
        clock, Strategy.CANARY, percent=50, step_min_seconds=10, step_min_events=100, approval=True
    )
    ctl = RolloutController(M)
    traffic = Traffic(ctl)
    traffic.batch(state, 1000)
    d = ctl.decide(state, clock.advance(10))
    assert isinstance(d.command, Promote)
    state = apply(state, d.command)
    assert state.status is Status.AWAITING_APPROVAL
    traffic.batch(state, 1000)
    assert ctl.decide(state, clock.advance(600)).note == "waiting: approval"
    traffic.batch(state, 1000, cand_failed=100)
    d = ctl.decide(state, clock.advance(1))
    assert isinstance(d.command, Rollback) and d.alert.metric == "error_rate"


@pytest.mark.parametrize("strategy", [Strategy.AB, Strategy.BLUE_GREEN])
def test_manual_strategies_never_advance(strategy):
    clock = Clock()
    state = _deploy(clock, strategy, percent=50, step_min_seconds=0, step_min_events=0)
    ctl = RolloutController(M)
    traffic = Traffic(ctl)
    for _ in range(5):
        traffic.batch(state, 1000)
    d = ctl.decide(state, clock.advance(3600))
    assert d.command is None and "promoted by an operator" in d.note


def test_insufficient_data_blocks_progress():
    clock = Clock()
    state = _deploy(clock, Strategy.CANARY, percent=1, step_min_seconds=0, step_min_events=0)
    ctl = RolloutController(M)
    Traffic(ctl).batch(state, 1000)  # 10 candidate events
    d = ctl.decide(state, clock.advance(10))
    assert d.command is None and d.verdict.insufficient and "guardrails:" in d.note


def test_replicas_deciding_on_the_same_state_publish_once():
    clock = Clock()
    store = InMemoryControlStore()
    state = _deploy(clock, step_min_seconds=0, step_min_events=50)
    store.publish(state)
    decisions = []
    for seed in (1, 2):  # two replicas, each seeing its own partitions
        ctl = RolloutController(M)
        Traffic(ctl, seed).batch(state, 3000)
        decisions.append(ctl.decide(state, clock.advance(1)).command)
    assert all(isinstance(c, Step) for c in decisions)
    store.publish(apply(store.latest(M), decisions[0]))
    with pytest.raises(DeploymentError, match="stale"):
        apply(store.latest(M), decisions[1])
    assert store.latest(M).step == 1


def test_redeploy_after_rollback_starts_the_candidate_afresh():
    clock = Clock()
    state = _deploy(clock, Strategy.CANARY, percent=50, step_min_seconds=0, step_min_events=0)
    ctl = RolloutController(M)
    traffic = Traffic(ctl)
    traffic.batch(state, 1000, cand_failed=200)
    d = ctl.decide(state, clock.advance(1))
    state = apply(state, d.command)
    ctl.sync(state)
    params = StrategyParams(percent=50, step_min_seconds=0, step_min_events=0)
    state = apply(state, Deploy(M, "1.1.0", Strategy.CANARY, params, at_ms=clock.advance(1)))
    ctl.sync(state)
    assert ctl.decide(state, clock.ms).verdict.insufficient  # the old failures are gone
    traffic.batch(state, 1000)
    assert isinstance(ctl.decide(state, clock.advance(1)).command, Promote)


def test_custom_guardrails_are_used():
    clock = Clock()
    state = _deploy(clock, Strategy.CANARY, percent=50, step_min_seconds=0, step_min_events=0)
    strict = Guardrails(GuardrailThresholds(max_p99_ms=1.0))
    ctl = RolloutController(M, guardrails=strict)
    Traffic(ctl).batch(state, 1000)
    d = ctl.decide(state, clock.advance(1))
    assert isinstance(d.command, Rollback) and d.alert.threshold == 1.0


def test_a_deployments_own_thresholds_override_the_controllers():
    # The same traffic, candidate as fast as stable: only a deployment's p99 cap breaches.
    clock = Clock()
    for own, rolled_back in [((("max_p99_ms", 1.0),), True), ((), False)]:
        state = _deploy(clock, Strategy.CANARY, percent=20, guardrails=own)
        ctl = RolloutController(M)
        traffic = Traffic(ctl, seed=3)
        for _ in range(5):
            traffic.batch(state, 1000)
        d = ctl.decide(state, clock.advance(10))
        assert isinstance(d.command, Rollback) is rolled_back
        if rolled_back:
            assert d.alert.metric == "p99_latency_ms" and d.alert.threshold == 1.0
