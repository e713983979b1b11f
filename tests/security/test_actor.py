"""Who did it: the deployment commands record the authenticated principal (the profile's
SASL user) as the actor, else the OS user; never a made-up name."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from streamproc.cli import app
from streamproc.cli.deps import Deps
from streamproc.errors import DeploymentError
from streamproc.rollout.store import InMemoryControlStore


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000_000

    def __call__(self) -> int:
        self.t += 1000
        return self.t


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    import yaml

    for v in ("1.0.0", "2.0.0"):
        d = tmp_path / "models" / "fraud" / v
        d.mkdir(parents=True)
        spec = {"name": "fraud", "version": v, "inputs": [{"field": "amount"}]}
        (d / "model.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "models"


def _actors(repo: Path, *extra: str) -> list[str]:
    store = InMemoryControlStore()
    deps = Deps(store=store, clock_ms=Clock(), env={})
    runner = CliRunner()
    env = {"STREAMPROC_MODEL_REPO": str(repo)}
    for args in (["deploy", "fraud", "1.0.0"], ["deploy", "fraud", "2.0.0", "--approval"],
                 ["promote", "fraud"], ["approve", "fraud"], ["rollback", "fraud"]):  # fmt: skip
        result = runner.invoke(app, [*args, *extra], obj=deps, env=env)
        assert result.exit_code == 0, (args, result.output, result.exception)
    return [s.actor for s in store.history("fraud")]


def test_the_sasl_principal_is_the_actor(repo: Path, tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text("bootstrap.servers=127.0.0.1:1\nsecurity.protocol=SASL_SSL\n"
                     "sasl.mechanism=SCRAM-SHA-512\nsasl.username=alice\n"
                     "sasl.password=not-printed\n")  # fmt: skip
    actors = _actors(repo, "--kafka-config", str(props))
    assert len(actors) == 5 and set(actors) == {"User:alice"}


def test_without_sasl_the_os_user_is_the_actor(repo: Path) -> None:
    actors = _actors(repo)
    assert len(actors) == 5 and set(actors) == {getpass.getuser()} != {"operator"}


def _props(tmp_path: Path, user: str) -> Path:
    props = tmp_path / f"{user}.properties"
    props.write_text("bootstrap.servers=127.0.0.1:1\nsecurity.protocol=SASL_SSL\n"
                     f"sasl.mechanism=SCRAM-SHA-512\nsasl.username={user}\n"
                     "sasl.password=not-printed\n")  # fmt: skip
    return props


def test_only_the_approvers_may_approve_or_promote(repo: Path, tmp_path: Path) -> None:
    import yaml

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": "fraud", "model": str(repo / "fraud" / "1.0.0"), "topics": {"input": "tx"},
        "rollout": {"approvers": ["User:alice", "User:carol"]},
    }))  # fmt: skip
    store = InMemoryControlStore()
    deps = Deps(store=store, clock_ms=Clock(), env={})
    runner = CliRunner()
    env = {"STREAMPROC_MODEL_REPO": str(repo)}

    def invoke(user: str, *args: str) -> Any:
        return runner.invoke(app, [*args, "-c", str(pipeline), "--kafka-config",
                                   str(_props(tmp_path, user))], obj=deps, env=env)  # fmt: skip

    # Anyone may deploy (and wait for approval); bob may not approve nor promote.
    assert invoke("bob", "deploy", "fraud", "1.0.0").exit_code == 0
    assert invoke("bob", "deploy", "fraud", "2.0.0", "--approval").exit_code == 0
    for verb in ("approve", "promote"):
        res = invoke("bob", verb, "fraud")
        assert res.exit_code != 0
        assert isinstance(res.exception, DeploymentError)
        assert str(res.exception).startswith(
            f"User:bob may not {verb} fraud: rollout.approvers of {pipeline} allows only "
            "User:alice, User:carol")  # fmt: skip
    assert store.latest("fraud").stable == "1.0.0"  # nothing changed
    for user, verb in (("carol", "promote"), ("alice", "approve")):
        res = invoke(user, verb, "fraud")
        assert res.exit_code == 0, (res.output, res.exception)
    assert store.latest("fraud").stable == "2.0.0"
    assert [s.actor for s in store.history("fraud")][-2:] == ["User:carol", "User:alice"]
