"""Windowed features per key over event time (issue #27).

``spec``: the ``features:`` section of ``model.yaml`` (definitions travel with the model
version). ``api``: what the pipeline asks of a window store (:class:`WindowStore`).
``reference``: the plain-Python statement of the semantics, the oracle of the differential
tests; the compiled store must give the same values.
"""

from .api import ClosedWindow, FeatureResult, StoreStats, WindowStore
from .spec import Aggregation, FeatureDef, FeaturesSpec, WindowSpec, parse_duration_ms

__all__ = [
    "Aggregation",
    "ClosedWindow",
    "FeatureDef",
    "FeatureResult",
    "FeaturesSpec",
    "StoreStats",
    "WindowSpec",
    "WindowStore",
    "parse_duration_ms",
]
