"""`streamproc models profile` writes a reference profile the drift monitors load."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from streamproc.cli.models import app
from streamproc.models.spec import load_model_spec
from streamproc.pipeline.monitoring import load_profile

FRAUD = Path(__file__).resolve().parents[2] / "deploy" / "models" / "fraud"


def test_profile_from_synthetic_data(tmp_path):
    shutil.copytree(FRAUD / "1.0.0", tmp_path / "fraud" / "1.0.0")
    (tmp_path / "fraud" / "1.0.0" / "reference_profile.json").unlink()
    spec_dir = tmp_path / "fraud" / "1.0.0"
    spec = load_model_spec(spec_dir)
    spec = spec.model_copy(update={"reader_schema": None})
    assert load_profile(spec) is None
    result = CliRunner().invoke(
        app, ["profile", "fraud", "1.0.0", "--rows", "3000", "--repo", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    prof = load_profile(spec)
    assert prof is not None
    assert prof.names == spec.columns
    assert prof.scores is not None and prof.n_rows == 3000
    assert 0.0 < (prof.error_rate or 0.0) < 0.2
