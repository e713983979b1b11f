"""A scorer that serves a model's deployment: stable, candidate, shadow, switched live.

:class:`RolloutScorer` holds one loaded backend per version the deployment state needs
and routes each row by its key (:func:`streamproc.rollout.router.assign`). A new state
(from the control topic, applied on the watcher thread) is prepared off the hot path —
new versions are loaded *before* the switch — and then installed by replacing one
immutable :class:`Snapshot`, so a batch is scored entirely by one state. A version that
fails to load never takes traffic: if it is the candidate, stable serves everything;
if it is the stable version, the state is not applied at all. Either way the reason is
logged.

Rows without a key are served by the stable version (the router hashes keys; the scorer
does not see event ids).

>>> import numpy as np
>>> from streamproc.models.spec import FeatureSpec, ModelSpec
>>> from streamproc.rollout.state import Deploy, Rollback, Strategy, apply
>>> from streamproc.backends.base import Backend
>>> class Const(Backend):
...     name, device = "const", "dev:0"
...     def __init__(self, v: float) -> None: self.v = v
...     def infer(self, x): return np.full((len(x), 1), self.v, np.float32)
>>> def spec(v): return ModelSpec(name="m", version=v, inputs=(FeatureSpec(field="x"),))
>>> loads = {"1.0.0": 0.0, "2.0.0": 1.0}
>>> s = apply(None, Deploy("m", "1.0.0", at_ms=0))
>>> scorer = RolloutScorer(s, lambda v: (spec(v), Const(loads[v])))
>>> s = apply(s, Deploy("m", "2.0.0", Strategy.SHADOW, at_ms=1))
>>> scorer.apply(s)
True
>>> scorer.backend_name, scorer.device  # the stable version's
('const', 'dev:0')
>>> out = scorer.score(np.zeros((3, 1), np.float32), [b"a", b"b", None])
>>> out.scores.ravel().tolist(), [sp.version for sp, _, _ in out.shadow]
([0.0, 0.0, 0.0], ['2.0.0'])

A candidate that cannot be loaded takes no traffic (and the reason is logged):

>>> s = apply(apply(s, Rollback("m", at_ms=2)), Deploy("m", "3.0.0", at_ms=3))
>>> scorer.apply(s), scorer.snapshot.state.in_progress, sorted(scorer.snapshot.backends)
(True, False, ['1.0.0'])
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streamproc.backends.base import Backend
from streamproc.config import KafkaSettings, RolloutSettings
from streamproc.errors import ModelError, StreamprocError
from streamproc.models.diff import input_changes
from streamproc.models.spec import ModelSpec, load_model_spec
from streamproc.rollout.controller import RolloutController
from streamproc.rollout.guardrails import Guardrails, GuardrailThresholds
from streamproc.rollout.router import assign, buckets
from streamproc.rollout.state import DeploymentState, Status
from streamproc.types import Alert

from .guard import RolloutGuard
from .scoring import Scored, Scorer, SingleScorer

log = logging.getLogger(__name__)

Loader = Callable[[str], tuple[ModelSpec, Backend]]

# Latency is timed per inference call inside a busy process: a call can wait a GIL switch
# interval (5 ms) or a scheduler slice on top of its work, so the live guard's default
# slack is wider than the package default; everything else keeps the package defaults.
LIVE_THRESHOLDS = GuardrailThresholds(p99_slack_ms=25.0)


def live_guard_settings(section: RolloutSettings) -> tuple[Guardrails, float]:
    """The guardrails and the decision interval from a pipeline config's ``rollout:``
    section (validated with the file: :class:`~streamproc.config.RolloutSettings`): the
    ``guardrails`` it names override :data:`LIVE_THRESHOLDS` key by key, and
    ``decide_interval_s`` (default 1 s) is how often the guard judges the candidate.

    >>> section = RolloutSettings.model_validate({"guardrails": {"max_error_rate": 0.02}})
    >>> guard, every = live_guard_settings(section)
    >>> guard.thresholds.max_error_rate, guard.thresholds.p99_slack_ms, every
    (0.02, 25.0, 1.0)
    """
    given = section.guardrails.model_dump(include=section.guardrails.model_fields_set)
    guardrails = Guardrails(LIVE_THRESHOLDS).overridden(tuple(given.items()))
    return guardrails, float(section.decide_interval_s)


@dataclass(frozen=True)
class Snapshot:
    """What one batch is scored with: the state to route by and the loaded versions."""

    state: DeploymentState  # as applied (a candidate that failed to load is dropped)
    specs: Mapping[str, ModelSpec]
    backends: Mapping[str, Backend]
    requested: DeploymentState  # the state as published


def repository_loader(repo: Path, name: str) -> Loader:
    """Load ``<repo>/<name>/<version>/`` on the backend its spec prefers."""

    def load(version: str) -> tuple[ModelSpec, Backend]:
        from streamproc.backends.select import load_backend

        spec = load_model_spec(repo / name / version)
        return spec, load_backend(spec)

    return load


class RolloutScorer(Scorer):
    """A :class:`~streamproc.pipeline.scoring.Scorer` that follows a deployment state."""

    def __init__(
        self,
        state: DeploymentState,
        loader: Loader,
        *,
        on_applied: Callable[[DeploymentState], None] | None = None,
        contract: ModelSpec | None = None,
    ) -> None:
        """``contract``: the spec the pipeline builds its input matrix from (its decoder's and
        window store's); a version whose inputs differ from it (:func:`input_changes`) fails
        to load: it could only be scored with inputs it was not trained on."""
        if state.stable is None:
            raise StreamprocError(f"{state.model} has no stable version to serve")
        # Compile (or load from numba's cache: ~0.3 s) the key hash now, not in the first
        # batch of a rollout that starts mid-stream.
        buckets([b""])
        self._loader = loader
        self._on_applied = on_applied
        self._contract = contract
        self._lock = threading.Lock()  # serialises appliers, never the hot path
        snap = self._prepare(state, None)
        if snap is None:
            raise StreamprocError(f"{state.model}: stable {state.stable} failed to load")
        self._snap = snap
        self.applied_ms = time.time_ns() // 1_000_000  # when the snapshot was installed
        self.closers: list[Callable[[], None]] = []
        # Set by build_rollout_scorer (or a test) to run the controller live.
        self.guard: RolloutGuard | None = None

    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    @property
    def primary(self) -> ModelSpec:
        snap = self._snap
        return snap.specs[snap.state.stable or ""]

    @property
    def backend_name(self) -> str:
        snap = self._snap
        return snap.backends[snap.state.stable or ""].name

    @property
    def device(self) -> str:
        """Where the stable version runs (``"cpu"``, ``"cuda:0"``, ...)."""
        snap = self._snap
        return snap.backends[snap.state.stable or ""].device

    @property
    def asynchronous(self) -> bool:
        """Whether the stable version's backend works apart from the host (a GPU running
        CUDA graphs): then :meth:`start` returns before its scores are there."""
        snap = self._snap
        return snap.backends[snap.state.stable or ""].asynchronous

    def start(
        self, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]
    ) -> Callable[[], Scored]:
        """Begin scoring; the returned call gives the scores (see
        :meth:`~streamproc.pipeline.scoring.Scorer.start`).

        With no rollout in progress every row goes to stable, and on an asynchronous backend
        the batch is submitted and waited for in the returned call. During a rollout the
        batch is scored at once (:meth:`score`): the guard compares the versions' latencies,
        each measured around its own inference. Outside a rollout, stable's latency for the
        guard is the time from submitting to having the scores, which includes what the host
        did meanwhile: an upper bound, so that a candidate is never judged slower than a
        stable version measured short."""
        snap = self._snap  # one read: the whole batch uses one state
        stable = snap.state.stable or ""
        backend = snap.backends[stable]
        if snap.state.in_progress or not len(features) or not backend.asynchronous:
            scored = self.score(features, keys)
            return lambda: scored
        spec = snap.specs[stable]
        t0 = time.perf_counter()
        scoring = SingleScorer(spec, backend).start(features, keys)

        def finish() -> Scored:
            scored = scoring()
            self._observe_scores(snap, spec, scored.scores, (time.perf_counter() - t0) * 1000.0)
            return scored

        return finish

    def _prepare(self, state: DeploymentState, old: Snapshot | None) -> Snapshot | None:
        specs: dict[str, ModelSpec] = {}
        backends: dict[str, Backend] = {}
        failed: set[str] = set()
        for version in state.loaded_versions:
            if old is not None and version in old.backends:
                specs[version], backends[version] = old.specs[version], old.backends[version]
                continue
            try:
                specs[version], backends[version] = self._loader(version)
                self._check_inputs(specs[version])
            except Exception as exc:  # any load failure keeps the version off traffic
                log.error("%s %s failed to load, it takes no traffic: %s",
                          state.model, version, exc)  # fmt: skip
                failed.add(version)
        if state.stable in failed:
            return None
        routed = state
        if state.candidate is not None and state.candidate in failed and state.in_progress:
            routed = replace(state, status=Status.ROLLED_BACK,
                             reason=f"{state.candidate} failed to load")  # fmt: skip
        return Snapshot(routed, specs, backends, state)

    def _check_inputs(self, spec: ModelSpec) -> None:
        changed = [] if self._contract is None else input_changes(self._contract, spec)
        if changed:
            said = "; ".join(c.describe() for c in changed[:3])
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            raise ModelError(
                f"its inputs differ from those this pipeline builds for "
                f"{self._contract.version if self._contract else ''} ({said}{more}): "
                "run it in a pipeline of its own"
            )

    def apply(self, state: DeploymentState) -> bool:
        """Install ``state`` if it is newer; True when it was installed."""
        with self._lock:
            old = self._snap
            if state.model != old.state.model or state.revision <= old.requested.revision:
                return False
            snap = self._prepare(state, old)
            if snap is None:
                log.error("%s revision %d not applied: stable %s failed to load",
                          state.model, state.revision, state.stable)  # fmt: skip
                return False
            self._snap = snap  # the switch: one reference assignment
            self.applied_ms = time.time_ns() // 1_000_000
        log.info("applied %s", state.summary())
        if self.guard is not None:
            self.guard.sync(state)
        if self._on_applied is not None:
            self._on_applied(state)
        return True

    def close(self) -> None:
        for close in self.closers:
            close()

    def score(self, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]) -> Scored:
        snap = self._snap  # one read: the whole batch uses one state
        state = snap.state
        n = len(features)
        # Keyless rows go to stable: route them by an empty key with variant forced to 0.
        # Only a rollout in progress routes by key, so only then are the keys looked at.
        keyless = state.in_progress and None in keys
        a = assign([b"" if k is None else k for k in keys] if keyless else keys, state)
        variant = a.variant  # assign's own array: changed below only for this batch
        if keyless:
            variant[[i for i, k in enumerate(keys) if k is None]] = 0
        stable = state.stable or ""
        versions = [snap.specs[stable]]
        cand = state.candidate if state.in_progress else None
        if cand is not None:
            versions.append(snap.specs[cand])
        infer_s: dict[str, float] = {}
        outs: dict[int, tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]] = {}
        # The candidate first: rows it fails on fall back to stable (and count as failures).
        for vi in reversed(range(len(versions))):
            spec = versions[vi]
            rows = np.flatnonzero(variant == vi)
            if not len(rows):
                continue
            x = features if len(rows) == n else features[rows]  # one version: no copy
            try:
                out, infer_s[spec.version] = self._infer(snap, spec, x)
            except Exception as exc:
                if vi == 0:
                    raise  # stable failing dead-letters the batch (see BatchHandler)
                log.warning("%s %s failed on %d rows, served by stable: %s",
                            spec.name, spec.version, len(rows), exc)  # fmt: skip
                self._observe(snap, spec.version, None, 0.0, failed=len(rows))
                variant[rows] = 0
                continue
            outs[vi] = (rows, out)
        scores: npt.NDArray[np.float32] | None = None
        for rows, out in outs.values():
            if len(rows) == n:  # one version scored every row
                scores = out
                break
            if scores is None:
                scores = np.zeros((n, out.shape[1]), np.float32)
            scores[rows] = out
        scored = Scored(
            scores=scores if scores is not None else np.zeros((0, 0), np.float32),
            version_index=variant,
            versions=versions,
            infer_s=infer_s,
        )
        if a.shadow and cand is not None and n:
            try:
                out, infer_s[f"{cand} (shadow)"] = self._infer(snap, snap.specs[cand], features)
            except Exception as exc:  # the shadow never affects what users get
                log.warning("%s shadow %s failed on %d rows: %s", state.model, cand, n, exc)
                self._observe(snap, cand, None, 0.0, failed=n)
            else:
                scored.shadow.append((snap.specs[cand], np.arange(n, dtype=np.intp), out))
        return scored

    def _infer(
        self, snap: Snapshot, spec: ModelSpec, x: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], float]:
        """Scores of ``x`` by ``spec``'s version and the seconds it took (fed to the guard)."""
        t = time.perf_counter()
        out = np.asarray(snap.backends[spec.version].infer(x), np.float32)
        took = time.perf_counter() - t
        self._observe_scores(snap, spec, out, took * 1000.0)
        return out, took

    def _observe_scores(
        self, snap: Snapshot, spec: ModelSpec, out: npt.NDArray[np.float32], latency_ms: float
    ) -> None:
        if self.guard is not None and out.ndim == 2 and out.shape[1]:
            col = min(spec.outputs.score_index, out.shape[1] - 1)
            self._observe(snap, spec.version, out[:, col], latency_ms)

    def _observe(
        self,
        snap: Snapshot,
        version: str,
        scores: npt.NDArray[np.float32] | None,
        latency_ms: float,
        failed: int = 0,
    ) -> None:
        guard = self.guard
        if guard is None:
            return
        s = scores if scores is not None else np.zeros(0, np.float32)
        guard.observe(snap.requested.revision, version, s, latency_ms=latency_ms, failed=failed)

    def drain_alerts(self) -> list[Alert]:
        """The alerts of the guard's published rollbacks since the last call."""
        return self.guard.drain_alerts() if self.guard is not None else []

    def route(self, keys: Sequence[bytes | None]) -> list[ModelSpec]:
        """The version each key's row goes to now, as :meth:`score` routes it (keyless rows
        to stable; one read of the snapshot)."""
        snap = self._snap
        state = snap.state
        stable = snap.specs[state.stable or ""]
        if not state.in_progress or state.candidate is None:
            return [stable] * len(keys)
        a = assign([b"" if k is None else k for k in keys], state)
        cand = snap.specs[state.candidate]
        return [cand if v and k is not None else stable
                for v, k in zip(a.variant, keys, strict=True)]  # fmt: skip


def build_rollout_scorer(
    bootstrap: KafkaSettings | str,
    topic: str,
    model_dir: str | Path,
    *,
    on_applied: Callable[[DeploymentState], None] | None = None,
    loader: Loader | None = None,
    guardrails: Guardrails | None = None,
    decide_interval_s: float = 1.0,
    controller: bool = True,
    pipeline: str = "",
    instance: str = "",
    report_interval_s: float = 5.0,
) -> RolloutScorer:
    """A scorer following the control topic from the start.

    When the topic holds no deployment of the model yet, the configured model (``model_dir``)
    is published as its stable version (an ``initial`` deploy by ``processor <instance>``), so
    that a first ``streamproc deploy --strategy canary`` rolls out against it; if that cannot
    be published (a race with another replica is fine: its state is used), the processor
    serves the configured model and still follows the topic. Versions other than the configured
    one load from the repository, the parent of the model directory's parent
    (``<repo>/<name>/<version>/``). With ``controller`` (the default) a
    :class:`~streamproc.pipeline.guard.RolloutGuard` judges the candidate with ``guardrails``
    (default :data:`LIVE_THRESHOLDS`) every ``decide_interval_s`` and publishes steps,
    promotions and rollbacks. With an ``instance``, the replica reports what it serves on
    ``<topic>.replicas`` (:class:`~streamproc.kafka.control.ReplicaReporter`). Call
    :meth:`RolloutScorer.close` to stop following."""
    from streamproc.kafka.control import ControlWatcher, KafkaControlStore, ReplicaReporter
    from streamproc.rollout.replicas import ReplicaStatus
    from streamproc.rollout.state import Deploy, apply
    from streamproc.rollout.store import execute

    spec = load_model_spec(model_dir)
    store = KafkaControlStore(bootstrap, topic)
    state = store.latest(spec.name)
    if state is None or state.stable is None:
        initial = Deploy(spec.name, spec.version, at_ms=time.time_ns() // 1_000_000,
                         actor=f"processor {instance}".strip(), if_revision=0,
                         reason="the pipeline's configured model")  # fmt: skip
        try:
            state = execute(store, initial)
            log.info("published %s as the stable version of %s", spec.version, spec.name)
        except StreamprocError as exc:  # another replica was first, or no right to publish
            state = store.latest(spec.name)
            if state is None:
                log.warning("serving the configured %s %s unpublished: %s",
                            spec.name, spec.version, exc)  # fmt: skip
                state = apply(None, initial)
    configured = Path(model_dir)
    repo_load = loader or repository_loader(configured.parent.parent, spec.name)

    def load(version: str) -> tuple[ModelSpec, Backend]:
        if loader is None and version == spec.version:
            from streamproc.backends.select import load_backend

            return spec, load_backend(spec)  # the configured directory, wherever it is
        return repo_load(version)

    reporter: ReplicaReporter | None = None

    def applied(s: DeploymentState) -> None:
        if reporter is not None:
            reporter.report()
        if on_applied is not None:
            on_applied(s)

    scorer = RolloutScorer(state, load, on_applied=applied, contract=spec)
    scorer.closers.append(store.close)
    if controller:
        scorer.guard = RolloutGuard(
            lambda: scorer.snapshot.requested,
            store,
            RolloutController(spec.name, guardrails or Guardrails(LIVE_THRESHOLDS)),
            interval_s=decide_interval_s,
        )
        scorer.guard.sync(state)
    if instance:

        def current() -> ReplicaStatus:
            snap, now_ms = scorer.snapshot, time.time_ns() // 1_000_000
            return ReplicaStatus.of(snap.state, snap.requested, pipeline=pipeline,
                                    instance=instance, applied_ms=scorer.applied_ms,
                                    at_ms=now_ms)  # fmt: skip

        reporter = ReplicaReporter(bootstrap, topic, current, interval_s=report_interval_s)
        scorer.closers.append(reporter.start().close)

    def on_state(s: DeploymentState) -> None:
        if s.model == spec.name:
            scorer.apply(s)

    watcher = ControlWatcher(bootstrap, topic, on_state).start()
    scorer.closers.insert(0, watcher.stop)
    if scorer.guard is not None:
        scorer.closers.insert(1, scorer.guard.start().stop)
    return scorer
