"""Decide what a rollout does next from what the stream measures: step, promote or roll back.

:class:`RolloutController` is pure: the pipeline feeds it per-batch statistics
(:meth:`~RolloutController.observe`, :meth:`~RolloutController.observe_feedback`) and asks
:meth:`~RolloutController.decide` with the current state and the time; it never reads a
clock or does I/O. Its commands carry ``if_revision`` so that when several replicas decide
on the same state, the first to publish wins and the others' commands are refused.

- A guardrail breach rolls back at once, with a :class:`RolloutAlert` (reason, metric,
  value, threshold), in any strategy and also while awaiting approval.
- canary, shadow and rollout steps advance once the step has run ``step_min_seconds``
  and the candidate scored ``step_min_events`` in it, with every guardrail passing; the
  last step promotes (the reducer turns that into ``awaiting_approval`` when gated).
- ab and blue-green never advance on their own: an operator promotes them.

``observe`` is cheap (a few microseconds per batch); ``decide`` sorts the score and latency
windows (about 1.4 ms with full 5,000-event windows on a 2-core VM), so call it on a
timer, e.g. once a second, rather than after every batch.

>>> from streamproc.rollout.state import Deploy, Strategy, StrategyParams, apply
>>> s = apply(None, Deploy("fraud", "1.0.0", at_ms=0))
>>> s = apply(s, Deploy("fraud", "1.1.0", Strategy.CANARY,
...     StrategyParams(percent=10, step_min_seconds=60, step_min_events=300), at_ms=0))
>>> ctl = RolloutController("fraud")
>>> rng = np.random.default_rng(0)
>>> for version, n in (("1.0.0", 3000), ("1.1.0", 300)):
...     ctl.observe(version, rng.beta(1, 30, n), latency_ms=rng.gamma(4, 0.5, n))
>>> ctl.decide(s, now_ms=30_000).note
'waiting: step held 30.0/60 s'
>>> d = ctl.decide(s, now_ms=60_000)
>>> type(d.command).__name__, d.command.if_revision, d.command.actor
('Promote', 2, 'controller')
>>> ctl.observe("1.1.0", np.ones(100), latency_ms=1.0, failed=40)
>>> d = ctl.decide(s, now_ms=61_000)
>>> type(d.command).__name__, d.alert.metric, round(d.alert.value, 3), d.alert.threshold
('Rollback', 'error_rate', 0.091, 0.01)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamproc.rollout.guardrails import Guardrails, RolloutStats, Verdict, VersionStats
from streamproc.rollout.state import (
    DeploymentCommand,
    DeploymentState,
    Promote,
    Rollback,
    Status,
    Step,
    Strategy,
)

ACTOR = "controller"
MANUAL = frozenset({Strategy.AB, Strategy.BLUE_GREEN})


@dataclass(frozen=True, slots=True)
class RolloutAlert:
    """Why the controller rolled a candidate back."""

    model: str
    version: str  # the candidate rolled back
    stable: str | None
    reason: str
    metric: str
    value: float
    threshold: float
    window_events: int
    at_ms: int
    revision: int  # the state revision that was rolled back

    @property
    def message(self) -> str:
        return f"{self.model} {self.version} rolled back to {self.stable}: {self.reason}"

    def as_record(self) -> dict[str, Any]:
        """A record for the ``Alert`` Avro schema (alerts topic)."""
        return {
            "alert_id": f"rollback-{self.model}-{self.version}-r{self.revision}",
            "type": "rollback",
            "state": "FIRING",
            "severity": "CRITICAL",
            "model_name": self.model,
            "model_version": self.version,
            "feature": None,
            "statistic": self.metric,
            "value": float(self.value),
            "threshold": float(self.threshold),
            "window_events": int(self.window_events),
            "first_offset": None,
            "last_offset": None,
            "message": self.message,
            "time": int(self.at_ms),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now: ``command`` is None when the rollout should keep running as is."""

    command: DeploymentCommand | None
    verdict: Verdict
    note: str = ""
    alert: RolloutAlert | None = None


class RolloutController:
    """Per-model rollout decisions; see the module docstring."""

    def __init__(
        self, model: str, guardrails: Guardrails | None = None, window: int = 5000
    ) -> None:
        self.model = model
        self.guardrails = guardrails or Guardrails()
        self.window = window
        self._stats: dict[str, VersionStats] = {}
        self._rollout: tuple[str | None, int] | None = None  # (candidate, deployed_ms)
        self._step: tuple[int, int] | None = None  # (step, step_started_ms)
        self._step_events: dict[str, int] = {}

    def stats_of(self, version: str) -> VersionStats:
        if version not in self._stats:
            self._stats[version] = VersionStats(self.window)
        return self._stats[version]

    def observe(
        self,
        version: str,
        scores: npt.ArrayLike,
        *,
        latency_ms: npt.ArrayLike | float,
        failed: int = 0,
    ) -> None:
        """One batch scored by ``version`` (served or shadow): scores, latency, failures."""
        self.stats_of(version).record(scores, latency_ms=latency_ms, failed=failed)
        n = int(np.size(scores)) + failed
        self._step_events[version] = self._step_events.get(version, 0) + n

    def observe_feedback(self, version: str, correct: npt.ArrayLike) -> None:
        """Labelled outcomes of events ``version`` predicted: True where it was right."""
        self.stats_of(version).record_feedback(correct)

    def step_events(self, version: str) -> int:
        """Events ``version`` scored since the current step began (as last synced)."""
        return self._step_events.get(version, 0)

    def sync(self, state: DeploymentState) -> None:
        """Follow a new state: a new deployment or step restarts the candidate's counts.

        :meth:`decide` calls it; call it too as soon as a new state arrives, so that no
        batch routed by the new state is counted in the old step. What was observed
        before the first state seen is kept.
        """
        first = self._rollout is None
        rollout = (state.candidate, state.deployed_ms)
        if rollout != self._rollout:
            # A new deployment starts the candidate from scratch, even if the same version
            # was rolled out (and rolled back) before.
            if state.candidate is not None and not first:
                self._stats.pop(state.candidate, None)
            self._rollout = rollout
            self._step = None
        step = (state.step, state.step_started_ms)
        if step != self._step:
            self._step = step
            if not first:
                self._step_events = {}
        keep = set(state.loaded_versions)
        for version in [v for v in self._stats if v not in keep]:
            del self._stats[version]

    def rollout_stats(self, state: DeploymentState) -> RolloutStats:
        stable = self.stats_of(state.stable) if state.stable else VersionStats(self.window)
        cand = self.stats_of(state.candidate) if state.candidate else VersionStats(self.window)
        return RolloutStats(stable, cand)

    def decide(self, state: DeploymentState | None, now_ms: int) -> Decision:
        """The next command for ``state`` at time ``now_ms`` (epoch milliseconds)."""
        if state is None or not state.in_progress or state.candidate is None:
            if state is not None:
                self.sync(state)
            return Decision(None, Verdict("ok"), "no rollout in progress")
        self.sync(state)
        stats = self.rollout_stats(state)
        # the deployment's own thresholds (deploy --guardrail) over this controller's
        verdict = self.guardrails.overridden(state.params.guardrails).evaluate(stats)
        common: dict[str, Any] = {"at_ms": now_ms, "actor": ACTOR, "if_revision": state.revision}
        if verdict.breach:
            alert = RolloutAlert(
                model=state.model,
                version=state.candidate,
                stable=state.stable,
                reason=verdict.reason,
                metric=verdict.metric or "",
                value=float(verdict.value if verdict.value is not None else np.nan),
                threshold=float(verdict.threshold if verdict.threshold is not None else np.nan),
                window_events=stats.candidate.events,
                at_ms=now_ms,
                revision=state.revision,
            )
            command = Rollback(state.model, reason=f"guardrail breach: {verdict.reason}", **common)
            return Decision(command, verdict, "guardrail breach", alert)
        if state.status is Status.AWAITING_APPROVAL:
            return Decision(None, verdict, "waiting: approval")
        if state.strategy in MANUAL:
            return Decision(None, verdict, f"waiting: {state.strategy} is promoted by an operator")
        held_s = (now_ms - state.step_started_ms) / 1000
        events = self.step_events(state.candidate)
        params = state.params
        waits = []
        if held_s < params.step_min_seconds:
            waits.append(f"step held {held_s:.1f}/{params.step_min_seconds:g} s")
        if events < params.step_min_events:
            waits.append(f"{events}/{params.step_min_events} candidate events in this step")
        if not verdict.ok:
            waits.append(f"guardrails: {verdict.reason}")
        if waits:
            return Decision(None, verdict, "waiting: " + "; ".join(waits))
        why = (
            f"{state.phase} held {held_s:.0f} s over {events} candidate events, guardrails passing"
        )
        if not state.last_step:
            return Decision(Step(state.model, reason=why, **common), verdict, "step")
        return Decision(Promote(state.model, reason=why, **common), verdict, "promote")
