"""Write reference_profile.json for each demo model version, from synthetic training data.

Deterministic (seed 0, 50,000 events; for a version with windowed features, 2.x, the raw
payments of 500 accounts over 30 days with their features from features backfill); run
after train_fraud.py:
    python deploy/models/profile_fraud.py
"""

from __future__ import annotations

from pathlib import Path

from train_fraud import payment_columns

from streamproc import synth
from streamproc.models.spec import load_model_spec
from streamproc.pipeline.monitoring import PROFILE_FILE, build_profile

HERE = Path(__file__).resolve().parent


def main() -> None:
    cols = synth.generate_columns(50_000, seed=0)
    for version_dir in sorted((HERE / "fraud").iterdir()):
        spec = load_model_spec(version_dir)
        data = cols if spec.features is None else payment_columns(spec, 500, 0)
        profile = build_profile(spec, synth.feature_matrix(data, spec), data[synth.LABEL])
        path = profile.save(version_dir / PROFILE_FILE)
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
