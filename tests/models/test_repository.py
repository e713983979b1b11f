from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.backends.select import load_backend
from streamproc.errors import ModelError
from streamproc.models.repository import (
    Inferer,
    ModelRepository,
    PerfReport,
    diff_specs,
    measure_performance,
    synthetic_sample,
)
from streamproc.models.semver import Version
from streamproc.models.spec import ModelSpec
from tests.models.conftest import write_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def _measure(spec: ModelSpec) -> PerfReport:
    backend = load_backend(spec, prefer=["onnxruntime"])
    try:
        return measure_performance(backend, synthetic_sample(spec, 64), [1, 8], budget_s=0.0)
    finally:
        backend.close()


def test_add_stores_an_immutable_version_with_perf(tmp_path, model_dir):
    repo = ModelRepository(tmp_path / "repo")
    stored = repo.add(model_dir, measure=_measure)
    assert (stored.name, str(stored.version)) == ("fraud", "1.0.0")
    assert stored.path == tmp_path / "repo" / "fraud" / "1.0.0"
    assert sorted(p.name for p in stored.path.iterdir()) == [
        "model.onnx",
        "model.yaml",
        "perf.json",
    ]
    perf = PerfReport.model_validate_json((stored.path / "perf.json").read_text())
    assert perf.backend == "onnxruntime" and perf.n_features == 3 and perf.n_outputs == 2
    assert [b.batch_size for b in perf.batches] == [1, 8]
    assert all(b.p50_ms > 0 and b.p99_ms >= b.p50_ms and b.throughput_eps > 0 for b in perf.batches)
    with pytest.raises(ModelError, match=r"immutable.*1\.0\.1"):
        repo.add(model_dir)
    # nothing half-written is left behind
    assert [p.name for p in (tmp_path / "repo" / "fraud").iterdir()] == ["1.0.0"]


def test_add_under_another_name_and_version_rewrites_the_spec(tmp_path, model_dir):
    repo = ModelRepository(tmp_path)
    stored = repo.add(model_dir, name="scorer", version="2.0.0-rc.1")
    assert stored.spec.name == "scorer" and stored.spec.version == "2.0.0-rc.1"
    assert yaml.safe_load((stored.path / "model.yaml").read_text())["version"] == "2.0.0-rc.1"
    assert repo.latest("scorer") == Version.parse("2.0.0-rc.1")
    assert repo.latest("scorer", prerelease=False) is None


def test_add_refuses_bad_input_and_leaves_no_trace(tmp_path, model_dir):
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(ModelError, match="not a semantic version"):
        repo.add(model_dir, version="1.0")
    with pytest.raises(ModelError, match="invalid model name"):
        repo.add(model_dir, name="../evil")
    (model_dir / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"model file .* is missing"):
        repo.add(model_dir)

    def broken(spec):
        raise ModelError("backend exploded")

    write_model(model_dir)
    with pytest.raises(ModelError, match="exploded"):
        repo.add(model_dir, measure=broken)
    assert repo.versions("fraud") == []
    assert list((tmp_path / "repo" / "fraud").iterdir()) == []


def test_files_outside_the_directory_are_copied_in(tmp_path, model_dir):
    schema = tmp_path / "shared" / "Transaction.avsc"
    schema.parent.mkdir()
    schema.write_text('{"type": "record", "name": "T", "fields": []}')
    raw = yaml.safe_load((model_dir / "model.yaml").read_text())
    raw["reader_schema"] = "../shared/Transaction.avsc"
    (model_dir / "model.yaml").write_text(yaml.safe_dump(raw))
    stored = ModelRepository(tmp_path / "repo").add(model_dir)
    assert stored.spec.reader_schema == "Transaction.avsc"
    assert stored.spec.reader_schema_path.read_text() == schema.read_text()


def test_versions_sorted_by_precedence_previous_and_latest(tmp_path, model_dir):
    repo = ModelRepository(tmp_path)
    for v in ["1.10.0", "1.2.0", "1.10.0-rc.1", "1.9.0"]:
        repo.add(model_dir, version=v)
    (tmp_path / "fraud" / "not-a-version").mkdir()
    (tmp_path / "fraud" / "3.0.0").mkdir()  # no model.yaml: not a version
    assert [str(v) for v in repo.versions("fraud")] == ["1.2.0", "1.9.0", "1.10.0-rc.1", "1.10.0"]
    assert str(repo.previous("fraud", "1.10.0")) == "1.10.0-rc.1"
    assert repo.previous("fraud", "1.2.0") is None
    assert str(repo.latest("fraud")) == "1.10.0"
    assert repo.has("fraud", "1.9.0") and not repo.has("fraud", "3.0.0")
    assert repo.names() == ["fraud"]
    with pytest.raises(ModelError, match=r"no version 4\.0\.0.*stored: 1\.2\.0"):
        repo.get("fraud", "4.0.0")


def test_diff_shows_input_constraint_output_and_perf_changes(tmp_path, model_dir):
    repo = ModelRepository(tmp_path / "repo")
    repo.add(model_dir, measure=_measure)
    raw = yaml.safe_load((model_dir / "model.yaml").read_text())
    raw["version"] = "1.1.0"
    raw["inputs"][0]["min"] = 1  # amount: tighter
    raw["inputs"][1]["max"] = 2  # merchant_risk: looser
    raw["inputs"][2] = {"field": "channel", "encoding": "onehot", "symbols": ["POS", "ECOM"]}
    raw["outputs"] = {"threshold": 0.7}
    raw["changelog"] = "channel replaces hour"
    new_dir = write_model(tmp_path / "src-1.1.0", spec=raw, weights=[0.5, 0.5, 1, -1])
    repo.add(new_dir, measure=_measure)

    diff = repo.diff("fraud")
    assert (diff.old, diff.new) == ("1.0.0", "1.1.0")
    found = {(c.section, c.item, c.kind): c for c in diff.changes}
    assert ("input", "channel", "added") in found
    assert ("input", "hour_of_day", "removed") in found
    assert "tightened" in found[("input", "amount.min", "changed")].note
    assert "loosened" in found[("input", "merchant_risk.max", "changed")].note
    out = found[("output", "threshold", "changed")]
    assert (out.old, out.new) == (0.5, 0.7)
    assert diff.breaking
    assert {(d.batch_size, d.metric) for d in diff.perf} == {
        (b, m) for b in (1, 8) for m in ("p50_ms", "p99_ms", "throughput_eps")
    }
    assert diff.changelog == "channel replaces hour"
    assert json.loads(json.dumps(diff.as_dict()))["changes"]


def test_diff_of_identical_specs_is_empty_and_first_version_has_nothing_to_diff(
    tmp_path, model_dir
):
    repo = ModelRepository(tmp_path)
    repo.add(model_dir)
    with pytest.raises(ModelError, match="first version"):
        repo.diff("fraud")
    repo.add(model_dir, version="1.0.1")
    diff = repo.diff("fraud")
    assert diff.changes == [] and not diff.breaking
    assert diff.perf == [] and diff.perf_missing == ["1.0.0", "1.0.1"]


def test_column_order_change_is_breaking():
    inputs = [{"field": "a"}, {"field": "b"}]
    old = ModelSpec.model_validate({"name": "m", "version": "1.0.0", "inputs": inputs})
    new = ModelSpec.model_validate({"name": "m", "version": "1.0.1", "inputs": inputs[::-1]})
    assert [c.item for c in diff_specs(old, new)] == ["column order"]


def test_the_shipped_fraud_models_diff_cleanly(tmp_path):
    src = REPO_ROOT / "deploy" / "models" / "fraud"
    shutil.copytree(src, tmp_path / "fraud")
    diff = ModelRepository(tmp_path).diff("fraud", "1.1.0")
    assert diff.old == "1.0.0"
    assert not diff.breaking
    assert "Retrained" in diff.changelog
    # same inputs, constraints and outputs: only files differ (the weights, at least)
    assert {c.section for c in diff.changes} == {"file"}
    (onnx,) = [c for c in diff.changes if c.item == "model.onnx"]
    assert onnx.kind == "changed"
    assert onnx.old.startswith("sha256:") and onnx.old != onnx.new


def test_diff_lists_added_removed_and_changed_files(tmp_path, model_dir):
    repo = ModelRepository(tmp_path / "repo")
    (model_dir / "reference_profile.json").write_text("{}")
    (model_dir / "notes.txt").write_text("a")
    repo.add(model_dir)
    (model_dir / "reference_profile.json").write_text('{"columns": []}')
    (model_dir / "notes.txt").unlink()
    (model_dir / "calibration.json").write_text("{}")
    repo.add(model_dir, version="1.0.1")
    got = [(c.item, c.kind) for c in repo.diff("fraud").changes]
    assert got == [
        ("calibration.json", "added"),
        ("notes.txt", "removed"),
        ("reference_profile.json", "changed"),
    ]


def test_measure_checks_outputs():
    class Wrong:
        def infer(self, x):
            return np.zeros(len(x))

    class Nan:
        def infer(self, x):
            return np.full((len(x), 2), np.nan)

    x = np.ones((4, 2), np.float32)
    with pytest.raises(ModelError, match="expected"):
        measure_performance(Wrong(), x, [1], budget_s=0)
    with pytest.raises(ModelError, match="NaN"):
        measure_performance(Nan(), x, [1], budget_s=0)


def test_measure_uses_the_injected_clock_and_cycles_the_sample():
    seen = []

    class Echo(Inferer):
        def infer(self, x):
            seen.append(x.shape)
            return np.zeros((len(x), 1))

    ticks = iter(range(100_000))
    report = measure_performance(
        Echo(),
        np.ones((3, 2), np.float32),
        [5],
        clock=lambda: next(ticks) / 1000,
        budget_s=0.010,
        warmup=1,
        min_iterations=1,
    )
    (b,) = report.batches
    assert set(seen) == {(5, 2)}
    assert b.p50_ms == b.p99_ms == 1.0  # every call takes exactly one tick
    assert b.throughput_eps == 5000.0
    assert b.iterations == 4  # 3 ticks per iteration: stops once 10 ms have passed


_bound = st.one_of(st.none(), st.floats(-1e3, 1e3))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(_bound, _bound),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, 2**16),
)
def test_synthetic_sample_respects_declared_ranges(bounds, seed):
    inputs = []
    for i, (a, b) in enumerate(bounds):
        lo, hi = (b, a) if a is not None and b is not None and a > b else (a, b)
        inputs.append({"field": f"f{i}", "min": lo, "max": hi})
    spec = ModelSpec.model_validate({"name": "m", "version": "1.0.0", "inputs": inputs})
    x = synthetic_sample(spec, rows=32, seed=seed)
    assert x.shape == (32, len(inputs)) and x.dtype == np.float32
    assert np.isfinite(x).all()
    for i, f in enumerate(spec.inputs):
        if f.min is not None:
            assert (x[:, i] >= np.float32(f.min)).all()
        if f.max is not None:
            assert (x[:, i] <= np.float32(f.max)).all()
    np.testing.assert_array_equal(x, synthetic_sample(spec, rows=32, seed=seed))
