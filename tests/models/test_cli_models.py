from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from streamproc.cli.deps import Deps
from streamproc.cli.models import app
from streamproc.errors import ModelError

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST = ["--prefer", "onnxruntime", "--budget-s", "0", "--rows", "64"]


@pytest.fixture
def runner():
    return CliRunner()


def _ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_add_list_show_diff_on_the_shipped_fraud_models(runner, tmp_path):
    repo = tmp_path / "repo"
    src = REPO_ROOT / "deploy" / "models" / "fraud"
    for v in ("1.0.0", "1.1.0"):
        out = _ok(runner.invoke(app, ["add", str(src / v), "--repo", str(repo), *FAST]))
        assert f"added fraud {v}" in out and "onnxruntime (cpu)" in out

    listing = json.loads(_ok(runner.invoke(app, ["list", "--repo", str(repo), "--json"])))
    assert listing == [{"name": "fraud", "versions": ["1.0.0", "1.1.0"], "latest": "1.1.0"}]
    text = _ok(runner.invoke(app, ["list", "fraud", "--repo", str(repo)]))
    assert text.splitlines()[0].split()[:2] == ["VERSION", "BACKEND"]
    assert [line.split()[0] for line in text.splitlines()[1:]] == ["1.0.0", "1.1.0"]

    shown = json.loads(
        _ok(runner.invoke(app, ["show", "fraud", "1.0.0", "--repo", str(repo), "--json"]))
    )
    assert shown["spec"]["version"] == "1.0.0"
    assert shown["perf"]["backend"] == "onnxruntime"
    assert [b["batch_size"] for b in shown["perf"]["batches"]] == [1, 8, 32, 64, 128, 256, 1024]
    # the shared reader schema was copied in: the version is self-contained
    src_files = {p.name for p in (src / "1.0.0").iterdir()}
    assert set(shown["files"]) == src_files | {"Transaction.avsc", "perf.json"}
    show_text = _ok(runner.invoke(app, ["show", "fraud", "--repo", str(repo)]))
    assert show_text.startswith("fraud 1.1.0")
    assert "device_trust_score" in show_text and "impute 0.5" in show_text

    diff = json.loads(_ok(runner.invoke(app, ["diff", "fraud", "--repo", str(repo), "--json"])))
    assert (diff["old"], diff["new"], diff["breaking"]) == ("1.0.0", "1.1.0", False)
    # same inputs, constraints and outputs; files differ (the weights, at least)
    assert {c["section"] for c in diff["changes"]} == {"file"}
    assert ("model.onnx", "changed") in {(c["item"], c["kind"]) for c in diff["changes"]}
    assert len(diff["perf"]) == 3 * 7 and diff["perf_missing"] == []
    diff_text = _ok(runner.invoke(app, ["diff", "fraud", "--repo", str(repo)]))
    assert "fraud 1.0.0 -> 1.1.0" in diff_text and "throughput_eps" in diff_text


def test_repo_from_environment_and_bump(runner, tmp_path, model_dir):
    env = {"STREAMPROC_MODEL_REPO": str(tmp_path / "envrepo")}
    _ok(runner.invoke(app, ["add", str(model_dir), "--no-measure"], env=env))
    raw = yaml.safe_load((model_dir / "model.yaml").read_text())
    raw["inputs"][0]["max"] = 500
    (model_dir / "model.yaml").write_text(yaml.safe_dump(raw))
    out = _ok(
        runner.invoke(app, ["add", str(model_dir), "--bump", "minor", "--no-measure"], env=env)
    )
    assert "added fraud 1.1.0" in out
    assert "~ input amount.max: 10000.0 -> 500.0 (constraint tightened" in out
    assert "performance not measured for: 1.0.0, 1.1.0" in out
    assert (tmp_path / "envrepo" / "fraud" / "1.1.0" / "model.yaml").is_file()
    assert not (tmp_path / "envrepo" / "fraud" / "1.1.0" / "perf.json").exists()


def test_add_measures_with_the_injected_loader_on_a_given_sample(runner, tmp_path, model_dir):
    calls = []

    class Fake:
        name, device = "fake", "cpu"

        def infer(self, x):
            calls.append(x.copy())
            return np.column_stack([1 - x[:, 1], x[:, 1]])

        def close(self):
            calls.append("closed")

    def loader(spec, prefer):
        assert prefer == ["torch"]
        return Fake()

    sample = tmp_path / "sample.csv"
    sample.write_text("amount,merchant_risk,hour_of_day\n1,0.25,3\n2,0.5,4\n")
    args = [
        "add",
        str(model_dir),
        "--repo",
        str(tmp_path / "r"),
        "--sample",
        str(sample),
        "--prefer",
        "torch",
        "--budget-s",
        "0",
        "--json",
    ]
    out = json.loads(_ok(runner.invoke(app, args, obj=Deps(loader=loader))))
    assert out["perf"]["backend"] == "fake" and out["perf"]["sample_rows"] == 2
    assert out["diff"] is None
    assert calls[-1] == "closed"
    assert {c.shape for c in calls[:-1]} == {(1, 3), (8, 3), (32, 3)}  # the spec's buckets
    eight = next(c for c in calls[:-1] if len(c) == 8)
    np.testing.assert_array_equal(eight[:3], [[1, 0.25, 3], [2, 0.5, 4], [1, 0.25, 3]])


def test_add_refuses_a_sample_with_other_columns(runner, tmp_path, model_dir):
    sample = tmp_path / "sample.csv"
    sample.write_text("amount,hour_of_day,merchant_risk\n1,3,0.25\n")
    result = runner.invoke(
        app, ["add", str(model_dir), "--repo", str(tmp_path / "r"), "--sample", str(sample)]
    )
    assert isinstance(result.exception, ModelError)
    assert "amount,merchant_risk,hour_of_day" in str(result.exception)
    assert not (tmp_path / "r" / "fraud" / "1.0.0").exists()


def test_errors(runner, tmp_path, model_dir):
    repo = ["--repo", str(tmp_path / "r")]
    result = runner.invoke(app, ["show", "fraud", *repo])
    assert isinstance(result.exception, ModelError)
    _ok(runner.invoke(app, ["add", str(model_dir), "--no-measure", *repo]))
    again = runner.invoke(app, ["add", str(model_dir), "--no-measure", *repo])
    assert isinstance(again.exception, ModelError) and "immutable" in str(again.exception)
    both = runner.invoke(
        app, ["add", str(model_dir), "--version", "2.0.0", "--bump", "major", *repo]
    )
    assert both.exit_code == 2 and "not both" in both.output
    nothing = runner.invoke(app, ["diff", "fraud", *repo])
    assert isinstance(nothing.exception, ModelError) and "first version" in str(nothing.exception)


def test_diff_against_an_explicit_version(runner, tmp_path, model_dir):
    repo = tmp_path / "r"
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        _ok(
            runner.invoke(
                app, ["add", str(model_dir), "--version", v, "--no-measure", "--repo", str(repo)]
            )
        )
    shutil.rmtree(model_dir)
    d = json.loads(
        _ok(
            runner.invoke(
                app, ["diff", "fraud", "2.0.0", "--against", "1.0.0", "--repo", str(repo), "--json"]
            )
        )
    )
    assert (d["old"], d["new"]) == ("1.0.0", "2.0.0")
    d = json.loads(
        _ok(runner.invoke(app, ["diff", "fraud", "1.1.0", "--repo", str(repo), "--json"]))
    )
    assert (d["old"], d["new"]) == ("1.0.0", "1.1.0")
