"""Build the configured detector for a set of reference columns.

>>> import numpy as np
>>> from streamproc.drift.config import DriftConfig
>>> from streamproc.drift.profile import ReferenceProfile
>>> prof = ReferenceProfile.from_matrix(np.random.default_rng(0).normal(size=(2_000, 3)),
...                                     ["a", "b", "c"])
>>> make_detector(DriftConfig(), prof).name
'cusum'
>>> make_detector(DriftConfig(enabled=False), prof).name
'null'
"""

from __future__ import annotations

from collections.abc import Sequence

from streamproc.drift.base import Detector, NullDetector
from streamproc.drift.config import DriftConfig
from streamproc.drift.cusum import BernoulliCusumDetector, CusumDetector
from streamproc.drift.profile import ColumnProfile, ReferenceProfile
from streamproc.drift.river_detectors import RiverDetector
from streamproc.drift.window import WindowDetector


def make_detector(
    config: DriftConfig,
    profile: ReferenceProfile,
    *,
    columns: Sequence[ColumnProfile] | None = None,
    budget: float | None = None,
    univariate: bool = False,
) -> Detector:
    """The detector ``config.detector`` over ``columns`` (default: all profile columns).

    ``budget`` (false alarms per million events, summed over the columns) defaults to
    ``config.false_alarms_per_million``.
    """
    cols = list(profile.columns if columns is None else columns)
    d = len(cols)
    name = config.detector if config.enabled else "null"
    if name == "null":
        return NullDetector(None if univariate else d)
    arl = config.design_arl(d, budget)
    if name == "cusum":
        return CusumDetector(
            cols,
            profile.grid,
            arl=arl,
            target_shift=config.target_shift_sigma,
            variance_ratio=config.target_variance_ratio,
            weights=config.arm_weights,
            recovery=config.recovery_events,
            univariate=univariate,
        )
    if name in ("psi", "ks"):
        return WindowDetector(
            cols,
            profile.grid,
            kind=name,
            arl=arl,
            window=config.window_events,
            bins=config.psi_bins if name == "psi" else config.ks_bins,
            recovery=config.recovery_events,
            univariate=univariate,
        )
    return RiverDetector(
        name,
        None if univariate else d,
        params=config.river_params,
        recovery=config.recovery_events,
    )


def make_error_detector(config: DriftConfig, p0: float) -> Detector:
    """The error-rate detector ``config.accuracy_detector`` for reference error rate ``p0``."""
    name = config.accuracy_detector if config.enabled else "null"
    if name == "null":
        return NullDetector()
    if name == "cusum":
        return BernoulliCusumDetector(
            p0,
            arl=config.design_arl(1, config.accuracy_false_alarms_per_million),
            ratio=config.target_error_ratio,
            recovery=config.accuracy_recovery_labels,
        )
    return RiverDetector(name, None, recovery=config.accuracy_recovery_labels)
