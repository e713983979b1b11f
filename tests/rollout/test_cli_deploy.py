from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from streamproc.cli.deploy import app
from streamproc.cli.deps import Deps
from streamproc.errors import DeploymentError, ModelError
from streamproc.rollout.ab import VariantData
from streamproc.rollout.state import Status, decode, encode
from streamproc.rollout.store import InMemoryControlStore

T0 = 1_700_000_000_000


class Clock:
    def __init__(self):
        self.ms = T0

    def __call__(self):
        self.ms += 1000
        return self.ms


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A model repository holding fraud 1.0.0, 1.1.0 and 2.0.0 (descriptions only)."""
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        d = tmp_path / "models" / "fraud" / v
        d.mkdir(parents=True)
        spec = {"name": "fraud", "version": v, "inputs": [{"field": "amount"}]}
        (d / "model.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "models"


@pytest.fixture
def cli(repo):
    store = InMemoryControlStore()
    deps = Deps(store=store, clock_ms=Clock(), actor="operator")
    runner = CliRunner()

    def invoke(*args, ok=True):
        result = runner.invoke(app, [*args], obj=deps, env={"STREAMPROC_MODEL_REPO": str(repo)})
        if ok:
            assert result.exit_code == 0, (result.output, result.exception)
        return result

    invoke.store = store
    invoke.deps = deps
    return invoke


def test_canary_deploy_promote_and_history(cli):
    assert "fraud: stable 1.0.0, revision 1" in cli("deploy", "fraud", "1.0.0").output
    out = cli(
        "deploy",
        "fraud",
        "1.1.0",
        "--strategy",
        "canary",
        "--percent",
        "10",
        "--reason",
        "retrained",
    ).output
    assert "candidate 1.1.0 [canary, canary 10%], active" in out and "retrained" in out
    state = json.loads(cli("status", "fraud", "--json").output)[0]
    assert (state["candidate_percent"], state["status"], state["revision"]) == (10.0, "active", 2)
    assert state["updated"] == "2023-11-14T22:13:22+00:00"  # the injected clock
    text = cli("status", "fraud").output
    assert "candidate share  10%" in text and "loaded           1.0.0, 1.1.0" in text
    cli("promote", "fraud")
    hist = json.loads(cli("history", "fraud", "--json").output)
    assert [(h["revision"], h["command"], h["status"], h["stable"]) for h in hist] == [
        (1, "deploy", "promoted", "1.0.0"),
        (2, "deploy", "active", "1.0.0"),
        (3, "promote", "promoted", "1.1.0"),
    ]
    table = cli("history", "fraud").output.splitlines()
    assert table[0].split()[:3] == ["REV", "TIME", "(UTC)"] and len(table) == 4
    assert "retrained" in table[2]


def test_rollout_with_steps_and_approval(cli):
    cli("deploy", "fraud", "1.0.0")
    cli(
        "deploy",
        "fraud",
        "2.0.0",
        "--strategy",
        "rollout",
        "--steps",
        "5,25,100",
        "--step-min-seconds",
        "60",
        "--step-min-events",
        "200",
        "--approval",
    )
    s = cli.store.latest("fraud")
    assert s.params.steps == (5, 25, 100) and s.params.step_min_events == 200 and s.params.approval
    cli("step", "fraud")
    cli("step", "fraud")
    out = cli("promote", "fraud").output
    assert "awaiting_approval" in out and "approve with:" in out and "approve fraud" in out
    cli("approve", "fraud", "--reason", "looked good")
    s = cli.store.latest("fraud")
    assert (s.status, s.stable, s.reason, s.actor) == (
        Status.PROMOTED,
        "2.0.0",
        "looked good",
        "operator",
    )
    out = cli("rollback", "fraud").output
    assert "fraud: stable 1.0.0 (2.0.0 rolled back)" in out


def test_invalid_commands_are_refused_and_change_nothing(cli):
    result = cli("promote", "fraud", ok=False)
    assert isinstance(result.exception, DeploymentError)
    cli("deploy", "fraud", "1.0.0")
    cli("deploy", "fraud", "1.1.0", "--strategy", "shadow")
    for args, match in [
        (("deploy", "fraud", "2.0.0"), "already rolling out"),
        (("approve", "fraud"), "nothing awaits approval"),
        (("step", "fraud"), "has no steps"),
    ]:
        result = cli(*args, ok=False)
        assert isinstance(result.exception, DeploymentError) and match in str(result.exception)
    assert cli.store.latest("fraud").revision == 2
    bad = cli("deploy", "fraud", "1.2.0", ok=False)
    assert isinstance(bad.exception, ModelError) and "not in the model repository" in str(
        bad.exception
    )
    assert cli("deploy", "fraud", "9.9.9", "--strategy", "bogus", ok=False).exit_code == 2
    steps = cli("deploy", "other", "1.0.0", "--no-check-repo", "--steps", "5,x", ok=False)
    assert steps.exit_code == 2 and "comma-separated" in steps.output


def test_a_version_reading_other_inputs_is_refused_against_the_stable(cli, repo):
    # 3.0.0 computes windowed features and imputes amount differently: the pipeline that
    # serves 1.0.0 builds no such matrix.
    d = repo / "fraud" / "3.0.0"
    d.mkdir()
    n_1h = {"name": "n_1h", "agg": "count", "window": {"type": "sliding", "size": "1h"}}
    spec = {"name": "fraud", "version": "3.0.0", "time_field": "ts",
            "inputs": [{"field": "amount", "impute": 5.0}, {"field": "n_1h"}],
            "features": {"definitions": [n_1h]}}  # fmt: skip
    (d / "model.yaml").write_text(yaml.safe_dump(spec))
    cli("deploy", "fraud", "1.0.0")
    bad = cli("deploy", "fraud", "3.0.0", "--strategy", "canary", ok=False)
    assert isinstance(bad.exception, ModelError)
    text = str(bad.exception)
    assert "reads other inputs than the stable 1.0.0" in text and "pipeline of its own" in text
    for change in ("+ input n_1h", "~ input amount.impute", "model features", "time_field"):
        assert change in text
    assert cli.store.latest("fraud").revision == 1  # nothing published
    # A fix that admits more events (a range loosened) builds the same matrix: it rolls out.
    d = repo / "fraud" / "1.1.0"
    spec = {"name": "fraud", "version": "1.1.0", "inputs": [{"field": "amount", "min": -1e6}]}
    (d / "model.yaml").write_text(yaml.safe_dump(spec))
    cli("deploy", "fraud", "1.1.0", "--strategy", "canary")


def test_status_of_all_models(cli):
    assert cli("status").output.strip() == "no deployments"
    cli("deploy", "fraud", "1.0.0")
    cli("deploy", "scorer", "0.1.0", "--no-check-repo")
    lines = cli("status").output.splitlines()
    assert lines == ["fraud: stable 1.0.0, revision 1", "scorer: stable 0.1.0, revision 1"]
    assert isinstance(cli("status", "nope", ok=False).exception, DeploymentError)


def test_store_factory_gets_bootstrap_and_topic(repo):
    seen = []
    store = InMemoryControlStore()

    def factory(kafka, topic):  # the pipeline's whole connection profile, and the topic
        seen.append((kafka.bootstrap, topic))
        return store

    result = CliRunner().invoke(
        app,
        ["deploy", "fraud", "1.0.0", "--bootstrap", "k:9092", "--topic", "ctl"],
        obj=Deps(store_factory=factory),
        env={"STREAMPROC_MODEL_REPO": str(repo)},
    )
    assert result.exit_code == 0, result.output
    assert seen == [("k:9092", "ctl")] and store.latest("fraud").stable == "1.0.0"


class FakeSource:
    def __init__(self):
        rng = np.random.default_rng(3)
        self.data = []
        for name, p in (("control", 0.02), ("treatment", 0.05)):
            pos = rng.random(5000) < p
            self.data.append(
                VariantData(name, "?", np.where(pos, 0.9, 0.1), pos, np.ones(5000), None)
            )

    def variants(self, state):
        return tuple(self.data)


def test_ab_report_with_an_injected_source(cli):
    cli("deploy", "fraud", "1.0.0")
    cli(
        "deploy",
        "fraud",
        "1.1.0",
        "--strategy",
        "ab",
        "--percent",
        "50",
        "--variants",
        "control,treatment",
    )
    cli.deps.ab_source = FakeSource()
    report = json.loads(cli("ab-report", "fraud", "--json").output)
    assert [v["name"] for v in report["variants"]] == ["control", "treatment"]
    assert report["verdict"].startswith("treatment flags more events as positive than control")
    text = cli("ab-report", "fraud").output
    assert "positive_rate: two-proportion z" in text


def test_ab_report_from_exported_records(cli, repo, tmp_path):
    cli("deploy", "fraud", "1.0.0")
    cli("deploy", "fraud", "1.1.0", "--strategy", "ab")
    preds, labels = tmp_path / "p.jsonl", tmp_path / "l.jsonl"
    rng = np.random.default_rng(5)
    lines, truth = [], []
    for i in range(4000):
        version = "1.0.0" if i % 2 else "1.1.0"
        label = "fraud" if rng.random() < 0.1 else "legit"
        lines.append(
            {
                "event_id": f"e{i}",
                "model_version": version,
                "score": 0.5,
                "label": label,
                "latency_ms": 1.0,
            }
        )
        truth.append({"event_id": f"e{i}", "label": label})  # both always right
    preds.write_text("\n".join(json.dumps(x) for x in lines))
    labels.write_text("\n".join(json.dumps(x) for x in truth))
    report = json.loads(
        cli(
            "ab-report", "fraud", "--predictions", str(preds), "--labels", str(labels), "--json"
        ).output
    )
    a, b = report["variants"]
    assert (a["name"], a["count"], a["labelled"], a["accuracy"]) == ("A", 2000, 2000, 1.0)
    assert (b["name"], b["count"], b["accuracy"]) == ("B", 2000, 1.0)
    # the positive label is the score label of the stable spec in the repo: "fraud"
    assert 0.05 < a["positive_rate"] < 0.15
    missing = cli("ab-report", "fraud", ok=False)
    assert missing.exit_code == 2 and "--predictions" in missing.output


def test_a_deployment_carries_its_own_guardrail_thresholds(cli):
    cli("deploy", "fraud", "1.0.0")
    cli("deploy", "fraud", "1.1.0", "--guardrail", "max_p99_ms=50",
        "--guardrail", "drift_statistic=ks")  # fmt: skip
    state = cli.store.latest("fraud")
    assert state.params.guardrails == (("drift_statistic", "ks"), ("max_p99_ms", 50.0))
    assert decode(encode(state)) == state  # they travel on the control topic
    status = json.loads(cli("status", "fraud", "--json").output)[0]
    assert status["params"]["guardrails"] == {"drift_statistic": "ks", "max_p99_ms": 50.0}
    assert "max_p99_ms=50.0" in cli("status", "fraud").output
    cli("rollback", "fraud")
    for bad, match in [("max_p99=50", "max_p99"), ("max_error_rate=2", "max_error_rate")]:
        result = cli("deploy", "fraud", "1.1.0", "--guardrail", bad, ok=False)
        assert isinstance(result.exception, DeploymentError) and match in str(result.exception)
    assert cli("deploy", "fraud", "1.1.0", "--guardrail", "oops", ok=False).exit_code == 2
    assert cli.store.latest("fraud").revision == 3  # nothing refused was published


def test_a_strategy_without_a_stable_version_is_refused_not_ignored(cli):
    result = cli("deploy", "fraud", "1.1.0", "--strategy", "canary", ok=False)
    assert result.exit_code != 0
    assert "no stable version for a canary to run against" in str(result.exception)
    assert cli.store.latest("fraud") is None  # nothing was published


def test_deploy_with_the_pipeline_makes_its_model_stable_then_runs_the_canary(cli, tmp_path):
    model = tmp_path / "models" / "fraud" / "1.0.0"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "fraud", "model": str(model),
                                        "topics": {"input": "t"}}))  # fmt: skip
    out = cli("deploy", "fraud", "1.1.0", "--strategy", "canary", "-c", str(pipeline)).output
    assert "stable 1.0.0, candidate 1.1.0 [canary, canary 10%]" in out
    hist = cli.store.history("fraud")
    assert [(h.stable, h.candidate, h.reason) for h in hist] == [
        ("1.0.0", None, f"the configured model of {pipeline}"),
        ("1.0.0", "1.1.0", "deploy 1.1.0 (canary)"),
    ]


@pytest.mark.parametrize(
    ("strategy", "option"),
    [("shadow", "--percent=20"), ("blue-green", "--percent=20"), ("canary", "--steps=5,50"),
     ("rollout", "--variants=X,Y"), ("canary", "--variants=X,Y")],
)  # fmt: skip
def test_options_a_strategy_does_not_use_are_refused(cli, strategy, option):
    cli("deploy", "fraud", "1.0.0")
    result = cli("deploy", "fraud", "1.1.0", "--strategy", strategy, option, ok=False)
    assert result.exit_code == 2 and "applies to" in result.output
    assert cli.store.latest("fraud").revision == 1


def test_rollback_to_an_earlier_stable_version_and_not_to_others(cli):
    cli("deploy", "fraud", "1.0.0")
    for v in ("1.1.0", "2.0.0"):
        cli("deploy", "fraud", v)
        cli("promote", "fraud")
    out = cli("rollback", "fraud", "--to", "1.0.0").output
    assert "fraud: stable 1.0.0 (2.0.0 rolled back)" in out
    state = cli.store.latest("fraud")
    assert (state.stable, state.status, state.command) == ("1.0.0", Status.ROLLED_BACK, "rollback")
    never = cli("rollback", "fraud", "--to", "3.0.0", ok=False)
    assert "3.0.0 was never its stable version" in str(never.exception)
    again = cli("rollback", "fraud", "--to", "1.0.0", ok=False)
    assert "1.0.0 is already the stable version" in str(again.exception)


def test_status_lists_what_each_replica_reports(cli):
    from streamproc.rollout.replicas import ReplicaStatus

    cli("deploy", "fraud", "1.0.0")
    cli("deploy", "fraud", "1.1.0", "--percent", "20")
    state = cli.store.latest("fraud")
    now = cli.deps.clock_ms()
    cli.store.reports += [
        ReplicaStatus.of(state, state, pipeline="fraud", instance="r1", applied_ms=now,
                         at_ms=now),
        ReplicaStatus(model="fraud", pipeline="fraud", instance="r2", revision=1,
                      stable="1.0.0", candidate=None, candidate_percent=0.0, shadow=False,
                      requested_candidate=None, applied_ms=now - 60_000,
                      updated_ms=now - 60_000),
    ]  # fmt: skip
    text = cli("status", "fraud").output
    assert "replicas (2 reporting):" in text
    assert "r1: serving revision 2 (stable 1.0.0, 1.1.0 at 20%), seen" in text
    assert "r2: serving revision 1 (stable 1.0.0), SILENT for" in text
    assert "[behind: revision 2 pending]" in text
    data = json.loads(cli("status", "fraud", "-o", "json").output)[0]
    assert [r["instance"] for r in data["replicas"]] == ["r1", "r2"]
