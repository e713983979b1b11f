from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.errors import DeploymentError
from streamproc.rollout.state import (
    Approve,
    Deploy,
    DeploymentCommand,
    DeploymentState,
    Promote,
    Rollback,
    Status,
    Step,
    Strategy,
    StrategyParams,
    apply,
    converge,
    decode,
    encode,
    key,
    newer,
)

M = "fraud"


def _stable(version="1.0.0", at=0):
    return apply(None, Deploy(M, version, at_ms=at))


def _run(state, *commands):
    for c in commands:
        state = apply(state, c)
    return state


def test_first_deploy_is_stable_at_once():
    s = _stable()
    assert (s.stable, s.candidate, s.status, s.revision) == ("1.0.0", None, Status.PROMOTED, 1)
    assert not s.in_progress and s.candidate_percent == 0 and s.loaded_versions == ("1.0.0",)


def test_canary_promote_then_revert():
    s = apply(_stable(), Deploy(M, "1.1.0", Strategy.CANARY, StrategyParams(percent=10), at_ms=5))
    assert (s.status, s.candidate, s.candidate_percent, s.deployed_ms) == (
        Status.ACTIVE,
        "1.1.0",
        10.0,
        5,
    )
    assert s.loaded_versions == ("1.0.0", "1.1.0")
    s = apply(s, Promote(M, at_ms=6))
    assert (s.stable, s.previous, s.candidate, s.status, s.revision) == (
        "1.1.0",
        "1.0.0",
        None,
        Status.PROMOTED,
        3,
    )
    s = apply(s, Rollback(M, at_ms=7, reason="bad in prod"))
    assert (s.stable, s.candidate, s.previous, s.status, s.reason) == (
        "1.0.0",
        "1.1.0",
        None,
        Status.ROLLED_BACK,
        "bad in prod",
    )
    with pytest.raises(DeploymentError, match="nothing to roll back"):
        apply(s, Rollback(M, at_ms=8))


def test_rollback_of_an_active_rollout_keeps_stable_and_records_the_candidate():
    s = apply(_stable(), Deploy(M, "1.1.0", Strategy.SHADOW, at_ms=1))
    assert s.shadow and s.candidate_percent == 0
    s = apply(s, Rollback(M, at_ms=2, actor="controller"))
    assert (s.stable, s.candidate, s.status, s.actor, s.command) == (
        "1.0.0",
        "1.1.0",
        Status.ROLLED_BACK,
        "controller",
        "rollback",
    )
    assert not s.in_progress and not s.shadow and s.loaded_versions == ("1.0.0",)
    # the same version may be deployed again after a rollback
    assert apply(s, Deploy(M, "1.1.0", at_ms=3)).status is Status.ACTIVE


def test_gradual_rollout_steps_then_awaits_approval():
    params = StrategyParams(steps=(5, 25, 100), approval=True)
    s = apply(_stable(), Deploy(M, "2.0.0", Strategy.ROLLOUT, params, at_ms=10))
    shares = [s.candidate_percent]
    for t in (20, 30):
        s = apply(s, Step(M, at_ms=t))
        shares.append(s.candidate_percent)
        assert s.step_started_ms == t
    assert shares == [5, 25, 100]
    with pytest.raises(DeploymentError, match="last step; promote"):
        apply(s, Step(M, at_ms=40))
    with pytest.raises(DeploymentError, match="nothing awaits approval"):
        apply(s, Approve(M, at_ms=40))
    s = apply(s, Promote(M, at_ms=40))
    assert s.status is Status.AWAITING_APPROVAL and s.in_progress and s.candidate_percent == 100
    with pytest.raises(DeploymentError, match="already awaits approval"):
        apply(s, Promote(M, at_ms=41))
    with pytest.raises(DeploymentError, match="awaits approval"):
        apply(s, Step(M, at_ms=41))
    done = apply(s, Approve(M, at_ms=42))
    assert (done.status, done.stable, done.previous) == (Status.PROMOTED, "2.0.0", "1.0.0")
    # awaiting approval may still be rolled back
    assert apply(s, Rollback(M, at_ms=42)).status is Status.ROLLED_BACK


def test_blue_green_keeps_the_old_version_warm_after_the_switch():
    s = apply(_stable(), Deploy(M, "1.1.0", Strategy.BLUE_GREEN, at_ms=1))
    assert s.candidate_percent == 0 and s.loaded_versions == ("1.0.0", "1.1.0")
    s = apply(s, Promote(M, at_ms=2))
    assert s.stable == "1.1.0" and s.loaded_versions == ("1.1.0", "1.0.0")
    s = apply(s, Rollback(M, at_ms=3))
    assert s.stable == "1.0.0" and s.loaded_versions == ("1.0.0",)


def test_ab_uses_named_variants():
    params = StrategyParams(percent=50, variants=("control", "treatment"))
    s = apply(_stable(), Deploy(M, "1.1.0", Strategy.AB, params, at_ms=1))
    assert s.variant_names == ("control", "treatment") and s.candidate_percent == 50
    assert _stable().variant_names == ("stable", "candidate")


@pytest.mark.parametrize(
    ("strategy", "params", "match"),
    [
        (Strategy.CANARY, StrategyParams(percent=0), "percent"),
        (Strategy.CANARY, StrategyParams(percent=100), "percent"),
        (Strategy.AB, StrategyParams(percent=150), "percent"),
        (Strategy.AB, StrategyParams(variants=("A", "A")), "distinct"),
        (Strategy.ROLLOUT, StrategyParams(steps=()), "steps"),
        (Strategy.ROLLOUT, StrategyParams(steps=(10, 5)), "increase"),
        (Strategy.ROLLOUT, StrategyParams(steps=(50, 120)), r"\(0, 100\]"),
        (Strategy.SHADOW, StrategyParams(step_min_events=-1), "negative"),
    ],
)
def test_invalid_parameters(strategy, params, match):
    with pytest.raises(DeploymentError, match=match):
        apply(_stable(), Deploy(M, "1.1.0", strategy, params, at_ms=1))


def test_invalid_transitions():
    s = _stable()
    for cmd, match in [
        (Promote(M, at_ms=1), "no rollout in progress"),
        (Approve(M, at_ms=1), "nothing awaits approval"),
        (Step(M, at_ms=1), "no rollout in progress"),
        (Rollback(M, at_ms=1), "no previous version"),
        (Deploy(M, "1.0.0", at_ms=1), "already the stable version"),
        (Deploy(M, "1.1", at_ms=1), "not a semantic version"),
        (Deploy("other", "1.1.0", at_ms=1), "applied to the state of"),
    ]:
        with pytest.raises(DeploymentError, match=match):
            apply(s, cmd)
    active = apply(s, Deploy(M, "1.1.0", at_ms=1))
    with pytest.raises(DeploymentError, match="already rolling out"):
        apply(active, Deploy(M, "1.2.0", at_ms=2))
    with pytest.raises(DeploymentError, match="has no steps"):
        apply(active, Step(M, at_ms=2))
    for cmd in (Promote(M, at_ms=1), Rollback(M, at_ms=1), Approve(M, at_ms=1), Step(M, at_ms=1)):
        with pytest.raises(DeploymentError, match="never been deployed"):
            apply(None, cmd)
    with pytest.raises(DeploymentError, match="unknown strategy"):
        Deploy(M, "1.1.0", "big-bang", at_ms=1)  # type: ignore[arg-type]


def test_if_revision_refuses_stale_commands():
    s = apply(_stable(), Deploy(M, "1.1.0", at_ms=1))
    ok = apply(s, Promote(M, at_ms=2, if_revision=s.revision))
    with pytest.raises(DeploymentError, match="stale"):
        apply(ok, Rollback(M, at_ms=3, if_revision=s.revision))


def test_control_record_round_trip_and_convergence():
    s = apply(
        _stable(), Deploy(M, "1.1.0", Strategy.ROLLOUT, StrategyParams(steps=(1, 50)), at_ms=1)
    )
    s2 = apply(s, Step(M, at_ms=2))
    assert key(s2) == b"fraud"
    assert decode(encode(s2)) == s2
    assert encode(decode(encode(s2))) == encode(s2)
    other = apply(None, Deploy("other", "0.1.0", at_ms=0))
    records = [(key(x), encode(x)) for x in (s2, other, s, _stable())]
    state = converge(records)
    assert state == {"fraud": s2, "other": other}
    assert converge([*records, (b"other", None)]) == {"fraud": s2}
    # two writers racing to the same revision: every replica picks the same one
    rival = apply(s, Rollback(M, at_ms=2))
    assert newer(rival, s2) == newer(s2, rival)


def test_decode_ignores_fields_a_newer_writer_added():
    s = _stable()
    raw = json.loads(encode(s))
    raw["shiny_new_field"] = {"x": 1}
    assert decode(json.dumps(raw).encode()) == s


@pytest.mark.parametrize(
    "value", [b"", b"[]", b'{"format": 99}', b'{"format": 1, "model": "m"}', b"\xff"]
)
def test_decode_refuses_garbage(value):
    with pytest.raises(DeploymentError, match="invalid control record"):
        decode(value)


# ---------------------------------------------------------------------------- property

_commands = st.lists(
    st.tuples(
        st.sampled_from(["deploy", "promote", "rollback", "approve", "step"]),
        st.sampled_from(list(Strategy)),
        st.sampled_from(["1.0.0", "1.1.0", "2.0.0-rc.1", "2.0.0"]),
        st.booleans(),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(_commands)
def test_any_command_sequence_keeps_the_invariants(commands):
    state: DeploymentState | None = None
    history = []
    for t, (verb, strategy, version, approval) in enumerate(commands):
        params = StrategyParams(percent=20, steps=(10, 50, 100), approval=approval)
        cmd: DeploymentCommand
        if verb == "deploy":
            # A strategy needs a stable version: the first deployment names none.
            cmd = Deploy(M, version, strategy if state else None, params, at_ms=t)
        else:
            kind = {"promote": Promote, "rollback": Rollback, "approve": Approve, "step": Step}
            cmd = kind[verb](M, at_ms=t)
        try:
            nxt = apply(state, cmd)
        except DeploymentError:
            continue
        assert nxt.revision == (state.revision if state else 0) + 1
        assert nxt.updated_ms == t and nxt.command == verb
        assert nxt.stable is not None
        assert 0 <= nxt.candidate_percent <= 100
        if nxt.in_progress:
            assert nxt.candidate not in (None, nxt.stable)
            assert len(nxt.loaded_versions) == 2
        else:
            assert nxt.candidate_percent == 0 and not nxt.shadow
        assert decode(encode(nxt)) == nxt
        state = nxt
        history.append(nxt)
    if history:
        shuffled = [(key(s), encode(s)) for s in history]
        random.Random(len(history)).shuffle(shuffled)
        assert converge(shuffled)[M] == history[-1]
