"""Exactly-once against a live predecessor: a replica paused (SIGSTOP), replaced by one
with the same instance id (so the same transactional id), then resumed (SIGCONT). The
resumed one is fenced: nothing it writes afterwards is committed, and read_committed
output holds exactly one prediction per event."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from tests.pipeline.trickle import Trickle

pytestmark = pytest.mark.kafka


def _wait_committed(read_topic, topic: str, n: int, deadline_s: float = 120.0) -> int:
    """Wait until read_committed shows at least ``n`` records on ``topic``; how many."""
    deadline = time.monotonic() + deadline_s
    while True:
        got = len(read_topic(topic, n, idle_s=5))
        if got >= n:
            return got
        assert time.monotonic() < deadline, f"only {got} of {n} committed records on {topic}"


def test_a_paused_replica_is_fenced_by_its_successor(
    pipeline_config_factory, subprocess_factory, event_producer_factory, read_topic, tmp_path
):
    cfg = pipeline_config_factory(guarantee="exactly-once", partitions=2)
    trickle = Trickle(event_producer_factory(cfg.topics.input), seed=51)
    first = subprocess_factory(cfg, instance="p1")
    read_topic(cfg.topics.predictions, 300, idle_s=60, committed=False)  # it is at work
    first.send_signal(signal.SIGSTOP)  # alive, holding its transactional id, frozen
    try:
        before = len(read_topic(cfg.topics.predictions, 10**9, idle_s=3))
        second = subprocess_factory(cfg, instance="p1")  # same id: fences the paused one
        # Only the second can commit now: committed output grows past what the first left.
        _wait_committed(read_topic, cfg.topics.predictions, before + 500)
    finally:
        first.send_signal(signal.SIGCONT)
    # Resumed, the first finds its producer fenced: it stops instead of writing on.
    assert first.wait(120) != 0, "the fenced replica kept running"
    assert second.poll() is None, "the successor died"
    n = trickle.stop()
    out = read_topic(cfg.topics.predictions, n + 1, idle_s=20)
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0
    counts = Counter(p.value["event_id"] for p in out)
    assert set(counts) == {f"ev-51-{i:010d}" for i in range(n)}  # nothing lost
    duplicates = {k: c for k, c in counts.items() if c > 1}
    assert duplicates == {}  # the fenced replica's writes never became visible
    log = (tmp_path / "p1.log").read_text(errors="replace")
    assert "fenc" in log.lower(), log[-3000:]
