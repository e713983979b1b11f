"""Run a :class:`~streamproc.rollout.controller.RolloutController` live, next to a scorer.

:class:`RolloutGuard` is fed per batch by the scorer (:meth:`~RolloutGuard.observe`: one
call per version per batch, arrays only) and decides on a timer thread, once every
``interval_s`` (:meth:`~RolloutGuard.start`), or when :meth:`~RolloutGuard.check` is called.
Deciding sorts the controller's windows (about a millisecond) and publishing reads the
control topic, so neither runs on the batch path: the batch path only appends to the
controller's rings under a lock held for microseconds.

When the controller returns a command, the guard applies it to the state it decided on
and publishes the result with the store. Commands carry ``if_revision``: when another
replica already moved the state on, the store refuses the stale publish with
:class:`~streamproc.errors.DeploymentError`, which the guard takes as "someone else already
did it" (their alert went out; this replica's does not). A rollback that was published
leaves its alert for :meth:`~RolloutGuard.drain_alerts` (a :class:`~streamproc.types.Alert`).

The controller counts only the events this replica scored, so a step's minimum time is also
held from when this replica first saw the step (a replica that restarts mid-step waits a
full ``step_min_seconds`` of its own before it steps or promotes).

>>> import numpy as np
>>> from streamproc.rollout.state import Deploy, Strategy, StrategyParams
>>> from streamproc.rollout.store import InMemoryControlStore, execute
>>> store = InMemoryControlStore()
>>> _ = execute(store, Deploy("m", "1.0.0", at_ms=0))
>>> state = execute(store, Deploy("m", "2.0.0", Strategy.CANARY,
...     StrategyParams(step_min_seconds=0, step_min_events=10), at_ms=0))
>>> guard = RolloutGuard(lambda: store.latest("m"), store, RolloutController("m"))
>>> guard.observe(state.revision, "1.0.0", np.zeros(300), latency_ms=1.0)
>>> guard.observe(state.revision, "2.0.0", np.zeros(300), latency_ms=1.0, failed=100)
>>> guard.check(now_ms=1_000).note, store.latest("m").status
('guardrail breach', <Status.ROLLED_BACK: 'rolled_back'>)
>>> [(str(a.type), a.statistic) for a in guard.drain_alerts()], guard.drain_alerts()
([('rollback', 'error_rate')], [])
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import numpy.typing as npt

from streamproc.errors import DeploymentError
from streamproc.rollout.controller import Decision, RolloutAlert, RolloutController
from streamproc.rollout.state import DeploymentState, apply
from streamproc.rollout.store import ControlStore
from streamproc.types import Alert, AlertState, AlertType, Severity

log = logging.getLogger(__name__)


def rollback_alert(a: RolloutAlert) -> Alert:
    """The alert a published rollback raises: CRITICAL, on the candidate it rolled back, with
    an id that is the same on every replica (one alert per rollback, however many saw it).
    Its time is the batch's that sends it, as for every alert."""
    return Alert(
        type=AlertType.ROLLBACK,
        state=AlertState.FIRING,
        severity=Severity.CRITICAL,
        feature=None,
        statistic=a.metric,
        value=float(a.value),
        threshold=float(a.threshold),
        window_events=int(a.window_events),
        first_offset=None,
        last_offset=None,
        message=a.message,
        model_name=a.model,
        model_version=a.version,
        alert_id=f"rollback-{a.model}-{a.version}-r{a.revision}",
    )


class RolloutGuard:
    """Feeds a controller from the stream, decides on a timer and publishes its commands."""

    def __init__(
        self,
        current: Callable[[], DeploymentState | None],
        store: ControlStore,
        controller: RolloutController,
        *,
        interval_s: float = 1.0,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000.0,
    ) -> None:
        self._current = current  # the state as published (what commands are decided on)
        self.store = store
        self.controller = controller
        self.interval_s = interval_s
        self.clock_ms = clock_ms
        self._lock = threading.Lock()  # controller state: batch thread vs timer thread
        self._synced = -1  # revision the controller follows; older observations are dropped
        self._tried = -1  # revision a command was already published (or refused) for
        self._alerts: list[Alert] = []
        self._seen: tuple[tuple[object, ...], int] | None = None  # (step identity, first seen)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def observe(
        self,
        revision: int,
        version: str,
        scores: npt.ArrayLike,
        *,
        latency_ms: npt.ArrayLike | float,
        failed: int = 0,
    ) -> None:
        """One batch of ``version``, routed by the state at ``revision``."""
        with self._lock:
            if revision < self._synced:
                return  # routed by a state the controller already left behind
            self.controller.observe(version, scores, latency_ms=latency_ms, failed=failed)

    def observe_feedback(self, version: str, correct: npt.ArrayLike) -> None:
        """Labels joined to ``version``'s predictions: True where it was right (the
        accuracy guardrail's input)."""
        with self._lock:
            self.controller.observe_feedback(version, correct)

    def sync(self, state: DeploymentState) -> None:
        """Follow a newly applied state at once (call after the scorer switched to it)."""
        local = self._local(state, int(self.clock_ms()))
        with self._lock:
            self._synced = max(self._synced, state.revision)
            self.controller.sync(local)

    def _local(self, state: DeploymentState, now_ms: int) -> DeploymentState:
        """``state`` with its step start no earlier than this guard first saw the step.

        The controller counts only the events this replica scored in the step, so the step's
        minimum time is held in this replica's view too: a replica that (re)starts mid-step
        waits ``step_min_seconds`` of its own before it steps or promotes.
        """
        ident = (state.candidate, state.deployed_ms, state.step, state.step_started_ms)
        if self._seen is None or self._seen[0] != ident:
            self._seen = (ident, now_ms)
        first = self._seen[1]
        return replace(state, step_started_ms=first) if first > state.step_started_ms else state

    def check(self, now_ms: int | None = None) -> Decision | None:
        """Decide on the current state; publish the command, if any. None: nothing to do."""
        state = self._current()
        if state is None or state.revision == self._tried:
            return None
        now = int(self.clock_ms()) if now_ms is None else now_ms
        local = self._local(state, now)
        with self._lock:
            self._synced = max(self._synced, state.revision)
            decision = self.controller.decide(local, now)
        if decision.command is None:
            return decision
        try:
            self.store.publish(apply(state, decision.command))
        except DeploymentError as exc:
            self._tried = state.revision
            log.info("%s: another replica moved revision %d on first: %s",
                     state.model, state.revision, exc)  # fmt: skip
            return decision
        self._tried = state.revision
        log.warning("%s: controller published %s (%s)", state.model,
                    type(decision.command).__name__.lower(), decision.command.reason)  # fmt: skip
        if decision.alert is not None:
            with self._lock:
                self._alerts.append(rollback_alert(decision.alert))
        return decision

    def drain_alerts(self) -> list[Alert]:
        """Alerts of the commands this guard published since the last call."""
        with self._lock:
            out, self._alerts = self._alerts, []
        return out

    def start(self) -> RolloutGuard:
        self._thread = threading.Thread(target=self._run, daemon=True, name="rollout-guard")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # a failed check (broker down) must not stop the guard
                log.exception("rollout guard check failed; retrying in %.1f s", self.interval_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout_s)
