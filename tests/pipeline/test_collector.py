"""settle_collector: the start-up frozen, the young generation's threshold raised."""

from __future__ import annotations

import gc

from streamproc.pipeline.app import settle_collector


def test_settle_collector_freezes_and_raises_the_young_threshold():
    before = gc.get_threshold()
    try:
        settle_collector(young_threshold=50_000)
        assert gc.get_threshold() == (50_000, 10, 10)
        assert gc.get_freeze_count() > 0  # what existed is out of the collector's reach
        objs = [[] for _ in range(5_000)]  # tracked allocations, far below the threshold
        assert gc.get_count()[0] >= 5_000  # no young collection ran yet
        del objs
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
