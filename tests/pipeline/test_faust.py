"""streamproc's handler in a real Faust app (faust-streaming) on the real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from streamproc.loadgen import produce_synthetic

pytestmark = pytest.mark.kafka

APP = Path(__file__).with_name("faust_app.py")


@pytest.mark.requires_extra("faust", "faust")
def test_a_faust_agent_scores_with_the_pipeline_and_dead_letters(
    pipeline_config_factory, event_producer_factory, read_topic, tmp_path
):
    cfg = pipeline_config_factory(partitions=2)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    counts = tmp_path / "counts.json"
    report = produce_synthetic(event_producer_factory(cfg.topics.input), 2000,
                               malformed=0.05, seed=17)  # fmt: skip
    n_bad = sum(report.malformed.values())
    root = Path(__file__).resolve().parents[2]
    path_env = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "STREAMPROC_FAUST_PIPELINE": str(path),
           "STREAMPROC_FAUST_COUNTS": str(counts), "PYTHONPATH": path_env}  # fmt: skip
    log = (tmp_path / "faust.log").open("wb")
    cmd = [sys.executable, str(APP), "worker", "-l", "warn"]
    worker = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        seen: dict = {}
        while time.monotonic() < deadline and seen.get("events_in", 0) < 2000:
            assert worker.poll() is None, (tmp_path / "faust.log").read_text()[-3000:]
            if counts.exists():
                seen = json.loads(counts.read_text())
            time.sleep(0.1)  # a poll interval: the loop ends on the condition or the deadline
        preds = read_topic(cfg.topics.predictions, 2000 - n_bad, idle_s=30)
        dead = read_topic(cfg.topics.dlq, n_bad, idle_s=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
    assert len(preds) == 2000 - n_bad and len({p.value["event_id"] for p in preds}) == len(preds)
    assert len(dead) == n_bad
    by_reason = Counter(d.value["reason"] for d in dead)
    assert seen["events_in"] == 2000 and seen["events_out"] == 2000 - n_bad
    assert seen["rejected"] == dict(by_reason)
    assert seen["batches"] >= 4  # several take() batches, not one event at a time
