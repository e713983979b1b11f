"""Which :class:`~streamproc.features.api.WindowStore` the pipeline, the backfill and the
benchmarks open: one place, so online and offline values come from the same code."""

from __future__ import annotations

from .api import WindowStore
from .reference import ReferenceStore
from .spec import FeaturesSpec


def open_store(spec: FeaturesSpec) -> WindowStore:
    """The window store for ``spec`` (for now the reference; the compiled store replaces it
    once it equals the reference on the differential tests)."""
    return ReferenceStore(spec)
