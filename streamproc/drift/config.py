"""``DriftConfig``: the ``drift:`` section of a pipeline YAML file.

The defaults are the one default configuration the benchmark measures.

>>> cfg = DriftConfig.model_validate({"detector": "cusum", "false_alarms_per_million": 0.5})
>>> cfg.detector, cfg.false_alarms_per_million, cfg.recovery_events
('cusum', 0.5, 2000)
>>> DriftConfig().design_arl(n_features=16)  # events between false alarms, per feature
32000000.0
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DetectorName = Literal["cusum", "psi", "ks", "adwin", "kswin", "page_hinkley", "null"]
BinaryDetectorName = Literal["cusum", "ddm", "eddm", "hddm_a", "hddm_w", "fhddm", "adwin", "null"]


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True  # False: every monitor uses NullDetector
    detector: DetectorName = "cusum"  # input and prediction drift
    # System-wide budget: false alarms per million events, summed over all monitored
    # features of one model version. Thresholds are designed for budget * margin so that
    # estimation error in the reference does not push the real rate over the budget.
    false_alarms_per_million: float = Field(1.0, gt=0)
    calibration_margin: float = Field(0.5, gt=0, le=1)
    target_shift_sigma: float = Field(0.5, gt=0)  # mean shift the CUSUMs are tuned for
    target_variance_ratio: float = Field(2.0, gt=1)  # variance increase they are tuned for
    # Share of each feature's budget: (mean up, mean down, variance up).
    arm_weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
    # Hysteresis: a FIRING alert resolves after this many events without a new detection.
    recovery_events: int = Field(2000, ge=1)
    critical_shift_sigma: float = Field(1.0, gt=0)  # estimated shift that makes it CRITICAL
    critical_variance_ratio: float = Field(4.0, gt=1)
    # Reference profile built from the stream when none is stored with the model.
    reference_events: int = Field(10_000, ge=100)
    min_events: int = Field(1_000, ge=20)  # fewest reference rows a monitor accepts
    # Windowed detectors (psi, ks).
    window_events: int = Field(2_000, ge=50)
    psi_bins: int = Field(10, ge=2)
    ks_bins: int = Field(50, ge=2)
    # river detectors: constructor arguments, e.g. {"delta": 0.002} for adwin.
    river_params: dict[str, float | int | str | bool] = Field(default_factory=dict)
    # Prediction (score) drift: its own budget, one stream.
    score_false_alarms_per_million: float = Field(0.1, gt=0)
    # Accuracy drift.
    accuracy_detector: BinaryDetectorName = "cusum"
    accuracy_false_alarms_per_million: float = Field(0.1, gt=0)  # per million labels
    target_error_ratio: float = Field(1.5, gt=1)  # error rate p0 -> p0 * ratio
    reference_error_rate: float | None = Field(None, gt=0, lt=1)
    accuracy_warmup_labels: int = Field(5_000, ge=100)  # estimate p0 when not given
    accuracy_recovery_labels: int = Field(10_000, ge=1)
    label_retention: int = Field(100_000, ge=1)  # the last N predictions, for the label join
    # Data quality (tumbling windows).
    quality_window_events: int = Field(1_000, ge=1)
    quality_ratio: float = Field(3.0, ge=1)  # alert above max(ratio * ref, ref + margin)
    quality_margin: float = Field(0.01, ge=0)
    quality_critical_rate: float = Field(0.2, gt=0, le=1)
    quality_recovery_windows: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _check(self) -> DriftConfig:
        if any(w < 0 for w in self.arm_weights) or sum(self.arm_weights) <= 0:
            raise ValueError("arm_weights must be non-negative with a positive sum")
        if self.reference_events < self.min_events:
            raise ValueError("reference_events must be >= min_events")
        return self

    def design_arl(self, n_features: int, budget: float | None = None) -> float:
        """In-control events between false alarms that each feature's detector must reach."""
        b = self.false_alarms_per_million if budget is None else budget
        return 1e6 * max(n_features, 1) / (b * self.calibration_margin)
