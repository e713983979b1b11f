"""``DriftConfig``: the ``drift:`` section of a pipeline YAML file.

It is defined with the other sections in :mod:`streamproc.config` (validated when the file
is loaded); this module keeps its name for the drift package.

The defaults are the one default configuration the benchmark measures.

>>> cfg = DriftConfig.model_validate({"detector": "cusum", "false_alarms_per_million": 0.5})
>>> cfg.detector, cfg.false_alarms_per_million, cfg.recovery_events
('cusum', 0.5, 2000)
>>> DriftConfig().design_arl(n_features=16)  # events between false alarms, per feature
32000000.0
"""

from __future__ import annotations

from streamproc.config import BinaryDetectorName, DetectorName, DriftConfig

__all__ = ["BinaryDetectorName", "DetectorName", "DriftConfig"]
