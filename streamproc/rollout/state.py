"""Deployment state of one model, the commands that change it, and its control-topic form.

A :class:`DeploymentState` is a full snapshot: the stable version, the candidate under
rollout (if any), the strategy and its parameters, the current step and status. The
reducer :func:`apply` is pure: it takes a state (``None`` before the first deployment)
and a command, and returns the next state with ``revision`` one higher, or raises
:class:`~streamproc.errors.DeploymentError`. Each snapshot is one record on the compacted
control topic, keyed by model name; compaction keeps the newest and every replica converges
on the snapshot with the highest revision (:func:`newer`).

Statuses: ``promoted`` and ``rolled_back`` are at rest (only the stable version serves);
``active`` and ``awaiting_approval`` have a candidate under rollout.

>>> s = apply(None, Deploy("fraud", "1.0.0", at_ms=1_000))
>>> s.status, s.stable, s.revision
(<Status.PROMOTED: 'promoted'>, '1.0.0', 1)
>>> s = apply(s, Deploy("fraud", "1.1.0", Strategy.ROLLOUT,
...                     StrategyParams(steps=(5, 25, 100), approval=True), at_ms=2_000))
>>> s = apply(apply(s, Step("fraud", at_ms=3_000)), Step("fraud", at_ms=4_000))
>>> s.phase, s.candidate_percent
('step 3/3 (100%)', 100.0)
>>> s = apply(s, Promote("fraud", at_ms=5_000))
>>> s.status
<Status.AWAITING_APPROVAL: 'awaiting_approval'>
>>> s = apply(s, Approve("fraud", at_ms=6_000))
>>> s.status, s.stable, s.previous, s.revision
(<Status.PROMOTED: 'promoted'>, '1.1.0', '1.0.0', 6)
>>> decode(encode(s)) == s
True
>>> apply(s, Step("fraud", at_ms=7_000))
Traceback (most recent call last):
...
streamproc.errors.DeploymentError: fraud: cannot step: no rollout in progress (status promoted)
"""

from __future__ import annotations

import enum
import itertools
import json
from collections.abc import Iterable
from dataclasses import KW_ONLY, asdict, dataclass, field, fields, replace
from typing import Any

from streamproc.errors import ConfigError, DeploymentError
from streamproc.models.semver import Version
from streamproc.rollout.guardrails import GuardrailThresholds

FORMAT = 1  # the "format" field of every control record


class Strategy(enum.StrEnum):
    CANARY = "canary"  # a fixed share of keys on the candidate
    SHADOW = "shadow"  # the candidate scores every event; its output goes to the shadow topic
    AB = "ab"  # a fixed split between two named variants, compared by an A/B report
    BLUE_GREEN = "blue-green"  # both loaded; promote switches all traffic at once
    ROLLOUT = "rollout"  # gradual: a share per step, each held for a minimum time and count


class Status(enum.StrEnum):
    ACTIVE = "active"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    AWAITING_APPROVAL = "awaiting_approval"


IN_PROGRESS = frozenset({Status.ACTIVE, Status.AWAITING_APPROVAL})


@dataclass(frozen=True, slots=True)
class StrategyParams:
    """Parameters of a strategy; those a strategy does not use are ignored."""

    percent: float = 10.0  # canary: candidate share; ab: share of the second variant
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)  # rollout: candidate share per step
    # How long, and over how many candidate events, each step (canary, shadow: the whole
    # rollout) must run with passing guardrails before the controller moves on.
    step_min_seconds: float = 300.0
    step_min_events: int = 1000
    variants: tuple[str, str] = ("A", "B")  # ab: names of stable and candidate
    approval: bool = False  # promotion waits for an explicit approve
    # This rollout's guardrail thresholds over each processor's own: (name, value) pairs,
    # names of streamproc.rollout.guardrails.GuardrailThresholds, e.g. (("max_p99_ms", 50),)
    guardrails: tuple[tuple[str, Any], ...] = ()

    def check(self, strategy: Strategy) -> StrategyParams:
        """Self, normalised, or :class:`DeploymentError` naming the bad parameter."""
        params = replace(
            self,
            percent=float(self.percent),
            steps=tuple(float(s) for s in self.steps),
            step_min_seconds=float(self.step_min_seconds),
            step_min_events=int(self.step_min_events),
            variants=(str(self.variants[0]), str(self.variants[1])),
        )
        if params.guardrails:
            pairs = dict(params.guardrails)
            try:
                GuardrailThresholds.from_mapping(pairs)
            except ConfigError as exc:
                raise DeploymentError(str(exc)) from exc
            params = replace(params, guardrails=tuple(sorted(pairs.items())))
        if params.step_min_seconds < 0 or params.step_min_events < 0:
            raise DeploymentError("step minimum seconds and events must not be negative")
        if strategy in (Strategy.CANARY, Strategy.AB) and not 0 < params.percent < 100:
            raise DeploymentError(f"{strategy} percent must lie in (0, 100), got {self.percent}")
        if strategy is Strategy.AB and (
            not all(params.variants) or params.variants[0] == params.variants[1]
        ):
            raise DeploymentError(f"ab needs two distinct variant names, got {self.variants}")
        if strategy is Strategy.ROLLOUT:
            steps = params.steps
            if not steps or any(not 0 < s <= 100 for s in steps):
                raise DeploymentError(f"rollout steps must lie in (0, 100], got {list(steps)}")
            if any(b <= a for a, b in itertools.pairwise(steps)):
                raise DeploymentError(f"rollout steps must increase, got {list(steps)}")
        return params


@dataclass(frozen=True, slots=True)
class DeploymentState:
    """One model's deployment, as of ``revision``. Times are epoch milliseconds."""

    model: str
    stable: str | None
    candidate: str | None = None  # under rollout; after a rollback, the version rejected
    previous: str | None = None  # the stable version before the last promotion
    strategy: Strategy | None = None
    params: StrategyParams = field(default_factory=StrategyParams)
    step: int = 0  # index into params.steps (rollout)
    status: Status = Status.PROMOTED
    revision: int = 0
    updated_ms: int = 0
    deployed_ms: int = 0  # when the current candidate was deployed
    step_started_ms: int = 0  # when the current step began
    reason: str = ""
    command: str = ""  # the command that produced this revision
    actor: str = ""  # who issued it: "operator", "controller", ...

    @property
    def in_progress(self) -> bool:
        return self.status in IN_PROGRESS and self.candidate is not None

    @property
    def candidate_percent(self) -> float:
        """Share of event keys (0-100) the candidate serves now."""
        if not self.in_progress:
            return 0.0
        if self.strategy in (Strategy.CANARY, Strategy.AB):
            return self.params.percent
        if self.strategy is Strategy.ROLLOUT:
            return self.params.steps[self.step]
        return 0.0  # shadow and blue-green serve from stable until promoted

    @property
    def shadow(self) -> bool:
        """The candidate scores every event, for the shadow topic only."""
        return self.in_progress and self.strategy is Strategy.SHADOW

    @property
    def loaded_versions(self) -> tuple[str, ...]:
        """Versions a processor must hold in memory: [stable, candidate-or-standby]."""
        out = [self.stable] if self.stable else []
        if self.in_progress and self.candidate:
            out.append(self.candidate)
        elif (
            self.strategy is Strategy.BLUE_GREEN
            and self.status is Status.PROMOTED
            and self.previous
        ):
            out.append(self.previous)  # kept warm: a rollback switches straight back
        return tuple(out)

    @property
    def variant_names(self) -> tuple[str, str]:
        if self.strategy is Strategy.AB:
            return self.params.variants
        return ("stable", "candidate")

    @property
    def last_step(self) -> bool:
        return self.strategy is not Strategy.ROLLOUT or self.step >= len(self.params.steps) - 1

    @property
    def phase(self) -> str:
        """What the rollout is doing, in words."""
        if not self.in_progress:
            return str(self.status)
        if self.strategy is Strategy.ROLLOUT:
            n = len(self.params.steps)
            return f"step {self.step + 1}/{n} ({self.candidate_percent:g}%)"
        if self.strategy is Strategy.SHADOW:
            return "shadow (0% served)"
        if self.strategy is Strategy.BLUE_GREEN:
            return "standby (0% until switched)"
        return f"{self.strategy} {self.candidate_percent:g}%"

    def summary(self) -> str:
        """One line for the CLI."""
        if self.in_progress:
            text = (
                f"{self.model}: stable {self.stable}, candidate {self.candidate} "
                f"[{self.strategy}, {self.phase}], {self.status}"
            )
        elif self.status is Status.ROLLED_BACK:
            text = f"{self.model}: stable {self.stable} ({self.candidate} rolled back)"
        else:
            text = f"{self.model}: stable {self.stable}"
        return f"{text}, revision {self.revision}"


# ------------------------------------------------------------------------------ commands


@dataclass(frozen=True, slots=True)
class _Command:
    model: str
    _: KW_ONLY
    at_ms: int
    reason: str = ""
    actor: str = "operator"
    # Apply only on top of this revision (None: any). Replicas deciding on the same state
    # send the same if_revision; the first applied wins and the others are refused.
    if_revision: int | None = None


@dataclass(frozen=True, slots=True)
class Deploy(_Command):
    """Roll out ``version`` by ``strategy`` against the stable version (default: canary).

    A model with no stable version yet takes ``version`` as stable at once, and only when no
    strategy is named: a strategy needs a stable version to compare with, and is refused
    rather than ignored. (A processor makes its pipeline's configured model the stable version
    when it starts, so a first ``deploy --strategy canary`` finds one.)
    """

    version: str
    strategy: Strategy | None = None
    params: StrategyParams = field(default_factory=StrategyParams)

    def __post_init__(self) -> None:
        if self.strategy is not None:
            object.__setattr__(self, "strategy", _strategy(self.strategy))


@dataclass(frozen=True, slots=True)
class Promote(_Command):
    """Make the candidate stable (or wait for approval when the gate is on)."""


@dataclass(frozen=True, slots=True)
class Rollback(_Command):
    """Drop the candidate; after a promotion, return to the previous stable version; with
    ``to``, make that (earlier) version stable instead. The reducer checks only that ``to``
    is a version other than the stable one; the CLI checks that it was stable before."""

    to: str | None = None


@dataclass(frozen=True, slots=True)
class Approve(_Command):
    """Let a rollout that awaits approval be promoted."""


@dataclass(frozen=True, slots=True)
class Step(_Command):
    """Move a gradual rollout to its next traffic share."""


DeploymentCommand = Deploy | Promote | Rollback | Approve | Step


def command_name(command: DeploymentCommand) -> str:
    return type(command).__name__.lower()


def _strategy(value: Strategy | str) -> Strategy:
    try:
        return Strategy(value)
    except ValueError:
        names = ", ".join(s.value for s in Strategy)
        raise DeploymentError(f"unknown strategy {value!r} (one of: {names})") from None


# ------------------------------------------------------------------------------- reducer


def apply(state: DeploymentState | None, command: DeploymentCommand) -> DeploymentState:
    """The state after ``command``; :class:`DeploymentError` when it is not allowed now."""
    name = command.model
    verb = command_name(command)
    if state is not None and state.model != name:
        raise DeploymentError(f"command for {name!r} applied to the state of {state.model!r}")
    revision = state.revision if state is not None else 0
    if command.if_revision is not None and command.if_revision != revision:
        raise DeploymentError(
            f"{name}: stale {verb}: decided on revision {command.if_revision}, "
            f"the state is at revision {revision}"
        )

    def fail(why: str) -> DeploymentError:
        return DeploymentError(f"{name}: cannot {verb}: {why}")

    stamp: dict[str, Any] = {
        "revision": revision + 1,
        "updated_ms": command.at_ms,
        "command": verb,
        "actor": command.actor,
    }
    if isinstance(command, Deploy):
        if not Version.is_valid(command.version):
            raise fail(f"{command.version!r} is not a semantic version")
        if state is None or state.stable is None:
            if command.strategy is not None:
                raise fail(
                    f"{name} has no stable version for a {command.strategy} to run against; "
                    "start the pipeline's processor (its configured model becomes the stable "
                    f"version), or deploy without a strategy to make {command.version} stable"
                )
            return DeploymentState(
                model=name,
                stable=command.version,
                status=Status.PROMOTED,
                deployed_ms=command.at_ms,
                reason=command.reason or f"initial deployment of {command.version}",
                **stamp,
            )
        if state.in_progress:
            raise fail(
                f"{state.candidate} is already rolling out ({state.strategy}, {state.status}); "
                "promote or roll it back first"
            )
        if command.version == state.stable:
            raise fail(f"{command.version} is already the stable version")
        strategy = command.strategy or Strategy.CANARY
        return replace(
            state,
            candidate=command.version,
            strategy=strategy,
            params=command.params.check(strategy),
            step=0,
            status=Status.ACTIVE,
            deployed_ms=command.at_ms,
            step_started_ms=command.at_ms,
            reason=command.reason or f"deploy {command.version} ({strategy})",
            **stamp,
        )

    if state is None:
        raise fail("the model has never been deployed")

    if isinstance(command, Step):
        if not state.in_progress:
            raise fail(f"no rollout in progress (status {state.status})")
        if state.status is Status.AWAITING_APPROVAL:
            raise fail("the rollout awaits approval")
        if state.strategy is not Strategy.ROLLOUT:
            raise fail(f"{state.strategy} has no steps (only rollout does)")
        if state.last_step:
            raise fail("already at the last step; promote instead")
        nxt = state.step + 1
        return replace(
            state,
            step=nxt,
            step_started_ms=command.at_ms,
            reason=command.reason or f"step {nxt + 1}: {state.params.steps[nxt]:g}%",
            **stamp,
        )

    if isinstance(command, Promote | Approve):
        if isinstance(command, Approve) and state.status is not Status.AWAITING_APPROVAL:
            raise fail(f"nothing awaits approval (status {state.status})")
        if isinstance(command, Promote):
            if state.status is Status.AWAITING_APPROVAL:
                raise fail("it already awaits approval; approve it")
            if not state.in_progress:
                raise fail(f"no rollout in progress (status {state.status})")
            if state.params.approval:
                return replace(
                    state,
                    status=Status.AWAITING_APPROVAL,
                    reason=command.reason or f"{state.candidate} awaits approval",
                    **stamp,
                )
        return replace(
            state,
            stable=state.candidate,
            candidate=None,
            previous=state.stable,
            step=0,
            status=Status.PROMOTED,
            reason=command.reason or f"promote {state.candidate}",
            **stamp,
        )

    # Rollback
    if command.to is not None:
        if not Version.is_valid(command.to):
            raise fail(f"{command.to!r} is not a semantic version")
        if command.to == state.stable:
            raise fail(f"{command.to} is already the stable version")
        return replace(
            state,
            stable=command.to,
            # The version turned away: a rollout's candidate, else the stable one.
            candidate=state.candidate if state.in_progress else state.stable,
            previous=None,
            step=0,
            status=Status.ROLLED_BACK,
            reason=command.reason or f"roll back to {command.to} from {state.stable}",
            **stamp,
        )
    if state.in_progress:
        return replace(
            state,
            status=Status.ROLLED_BACK,
            reason=command.reason or f"roll back {state.candidate}",
            **stamp,
        )
    if state.status is Status.PROMOTED:
        if state.previous is None:
            raise fail(f"{state.stable} has no previous version to return to")
        return replace(
            state,
            stable=state.previous,
            candidate=state.stable,
            previous=None,
            step=0,
            status=Status.ROLLED_BACK,
            reason=command.reason or f"revert {state.stable}, back to {state.previous}",
            **stamp,
        )
    raise fail(f"nothing to roll back (status {state.status})")


# --------------------------------------------------------------------- control records


def key(state: DeploymentState) -> bytes:
    """The control-topic key: the model name."""
    return state.model.encode()


def encode(state: DeploymentState) -> bytes:
    """The control-topic value: compact JSON with sorted keys (byte-stable)."""
    data = asdict(state)
    data["strategy"] = state.strategy.value if state.strategy else None
    data["status"] = state.status.value
    data["format"] = FORMAT
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def decode(value: bytes | str) -> DeploymentState:
    """Parse a control record; :class:`DeploymentError` when it is not one."""
    try:
        data = json.loads(value)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        fmt = data.pop("format", None)
        if fmt != FORMAT:
            raise ValueError(f"unsupported format {fmt!r}")
        raw_params = data.pop("params")
        params = StrategyParams(
            percent=float(raw_params["percent"]),
            steps=tuple(float(s) for s in raw_params["steps"]),
            step_min_seconds=float(raw_params["step_min_seconds"]),
            step_min_events=int(raw_params["step_min_events"]),
            variants=(str(raw_params["variants"][0]), str(raw_params["variants"][1])),
            approval=bool(raw_params["approval"]),
            guardrails=tuple((str(k), v) for k, v in raw_params.get("guardrails", ())),
        )
        strategy = Strategy(data.pop("strategy")) if data.get("strategy") else None
        data.pop("strategy", None)
        status = Status(data.pop("status"))
        # Fields a newer writer added are ignored, so replicas can be upgraded one by one.
        known = {k: v for k, v in data.items() if k in _STATE_FIELDS}
        return DeploymentState(**known, params=params, strategy=strategy, status=status)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise DeploymentError(f"invalid control record: {exc}") from exc


_STATE_FIELDS = frozenset(f.name for f in fields(DeploymentState)) - {
    "params",
    "strategy",
    "status",
}


def newer(a: DeploymentState | None, b: DeploymentState | None) -> DeploymentState | None:
    """The snapshot every replica keeps: highest revision, then latest update, then bytes.

    The tie-breaks make the choice deterministic even if two writers raced to the same
    revision, so all replicas still agree.
    """
    if a is None or b is None:
        return a if b is None else b
    return max(a, b, key=lambda s: (s.revision, s.updated_ms, encode(s)))


def converge(
    records: Iterable[tuple[bytes | None, bytes | None]],
) -> dict[str, DeploymentState]:
    """Fold ``(key, value)`` control records, in any order, to the state of each model.

    A tombstone (``value`` None) forgets the model.

    >>> a = apply(None, Deploy("m", "1.0.0", at_ms=1))
    >>> b = apply(a, Deploy("m", "2.0.0", Strategy.SHADOW, at_ms=2))
    >>> converge([(key(b), encode(b)), (key(a), encode(a))])["m"].revision
    2
    """
    out: dict[str, DeploymentState] = {}
    for k, v in records:
        if v is None:
            if k is not None:
                out.pop(k.decode(errors="replace"), None)
            continue
        state = decode(v)
        best = newer(out.get(state.model), state)
        assert best is not None
        out[state.model] = best
    return out
