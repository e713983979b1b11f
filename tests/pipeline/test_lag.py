"""The consumer-lag gauge (streamproc_consumer_lag) against a backlog of known size.

The model is held on one event while 1,000 more are produced behind it; once released,
the first lag report must say exactly 1,000 for that partition, on /metrics.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from confluent_kafka import TopicPartition

from streamproc.backends.select import load_backend
from streamproc.loadgen import produce_synthetic
from streamproc.models.spec import ModelSpec, load_model_spec
from streamproc.pipeline.scoring import Scored, Scorer, SingleScorer
from streamproc.telemetry.sensor import Sensor
from tests.pipeline.conftest import MODEL

pytestmark = pytest.mark.kafka
BACKLOG = 1_000


class GatedScorer(Scorer):
    """Scores with the demo model; once armed, the next batch waits until released."""

    def __init__(self) -> None:
        spec = load_model_spec(MODEL)
        self.inner = SingleScorer(spec, load_backend(spec))
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    @property
    def primary(self) -> ModelSpec:
        return self.inner.primary

    @property
    def backend_name(self) -> str:
        return self.inner.backend_name

    def score(self, features: npt.NDArray[np.float32], keys: Sequence[bytes | None]) -> Scored:
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.release.wait(120), "never released"
        return self.inner.score(features, keys)


class LagProbe(Sensor):
    """Once armed, holds the pipeline at its next lag report until the test has read
    /metrics (sensors are called in order: the Prometheus gauge is already set)."""

    def __init__(self) -> None:
        self.armed = False
        self.reported: dict[int, int] | None = None
        self.held = threading.Event()
        self.resume = threading.Event()

    def on_lag(self, topic: str, lag: Mapping[int, int]) -> None:
        if self.armed and self.reported is None:
            self.reported = dict(lag)
            self.held.set()
            self.resume.wait(120)


def _gauge(body: str, pipeline: str, topic: str, partition: int) -> float:
    labels = (f'pipeline="{pipeline}"', f'topic="{topic}"', f'partition="{partition}"')
    for line in body.splitlines():
        if line.startswith("streamproc_consumer_lag{") and all(x in line for x in labels):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no streamproc_consumer_lag for {labels} in /metrics")


def test_consumer_lag_gauge_reports_a_known_backlog(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg = pipeline_config_factory(partitions=1, metrics={"port": 0})
    scorer, probe = GatedScorer(), LagProbe()
    running = processor_factory(cfg, scorer=scorer, extra_sensor=probe)
    try:
        producer = event_producer_factory(cfg.topics.input)
        produce_synthetic(producer, 200, seed=71)
        assert len(read_topic(cfg.topics.predictions, 200)) == 200  # caught up
        scorer.armed = True
        produce_synthetic(producer, 1, seed=71, offset=200)  # offset 200: held in the model
        assert scorer.entered.wait(60), "the held event never reached the model"
        entered = time.monotonic()
        produce_synthetic(producer, BACKLOG, seed=71, offset=201)  # the backlog behind it
        # Release only once the consumer has fetched past the backlog (its cached high
        # watermark), so the lag it reports is measured against the true end.
        consumer = running.processor.runner.consumer
        tp = TopicPartition(cfg.topics.input, 0)
        deadline = time.monotonic() + 60
        while consumer.get_watermark_offsets(tp, cached=True)[1] != 201 + BACKLOG:
            assert time.monotonic() < deadline, consumer.get_watermark_offsets(tp, cached=True)
            time.sleep(0.05)  # polling a condition, with a deadline
        # The last report came before the model was entered: once an interval has passed
        # since, the step that finishes the held batch reports, before consuming more.
        interval = running.processor.runner.settings.lag_interval_s
        while time.monotonic() < entered + interval:
            time.sleep(0.05)  # waiting out the report interval, a condition on the clock
        probe.armed = True
        scorer.release.set()
        assert probe.held.wait(60), "no lag reported"
        port = running.processor.metrics_port
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        # Offsets 0..200 consumed, 201..1200 behind: exactly the backlog.
        assert probe.reported == {0: BACKLOG}
        assert _gauge(body.decode(), cfg.name, cfg.topics.input, 0) == BACKLOG
    finally:
        scorer.release.set()
        probe.resume.set()
    read_topic(cfg.topics.predictions, 1201)
    running.stop()
