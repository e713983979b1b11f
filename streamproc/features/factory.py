"""Which :class:`~streamproc.features.api.WindowStore` the pipeline, the backfill and the
benchmarks open: one place, so online and offline values come from the same code."""

from __future__ import annotations

from .api import WindowStore
from .spec import FeaturesSpec
from .store import CompiledStore


def open_store(spec: FeaturesSpec, *, warm: bool = True) -> WindowStore:
    """The window store for ``spec``: the compiled in-memory store (``store.py``), which
    equals the reference (``reference.py``) on the differential tests in tests/features/.
    ``warm``: compile its kernels now (or load them from numba's cache), so that the first
    batch of a partition does not wait for the compiler."""
    store = CompiledStore(spec)
    if warm:
        store.warm()
    return store
