"""streamproc's batch handler inside a Faust (faust-streaming) agent.

An existing Faust app can score a topic with a streamproc pipeline: the same decoder,
validation and reason codes, model, drift monitors and dead letters as ``streamproc run``,
over the batches that ``stream.take_events(n, within=s)`` gives (``take`` with the events'
positions, which dead letters name). Predictions go to the pipeline's predictions topic, dead
letters to its DLQ, alerts to its alerts topic, all through the Faust app's own producer;
the counters (:attr:`FaustScorer.counters`, and any :class:`~streamproc.telemetry.Sensor`,
such as Prometheus's) are fed after a batch's records are acknowledged. Faust's guarantee
holds: at-least-once, an event is acknowledged once the agent has handled its batch.

A runnable app (``pip install 'streamproc[faust]'``; ``python app.py worker -l info``)::

    import faust
    from streamproc.config import load_config
    from streamproc.integrations.faust import FaustScorer

    cfg = load_config("deploy/pipelines/fraud.yaml")
    app = faust.App("fraud-in-faust", broker=f"kafka://{cfg.kafka.bootstrap}",
                    web_enabled=False)
    scorer = FaustScorer.from_config(cfg)
    events = scorer.topic(app)                     # raw bytes: streamproc decodes them

    @app.agent(events)
    async def score(stream):
        async for outputs in scorer.take(app, stream, n=1000, within=0.05):
            print(f"{outputs.n_predictions} predictions, {outputs.n_dead_letters} dead letters")

    if __name__ == "__main__":
        app.main()

``tests/pipeline/faust_app.py`` is this app, run by ``tests/pipeline/test_faust.py`` on the
real broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from streamproc.telemetry import CountingSensor, Sensor, SensorGroup
from streamproc.types import Outputs, RawBatch, ReleaseReason

if TYPE_CHECKING:
    from streamproc.config import PipelineConfig
    from streamproc.pipeline.handler import BatchHandler


def _headers(raw: Any) -> list[tuple[str, bytes | None]] | None:
    if not raw:
        return None
    items = raw.items() if isinstance(raw, dict) else raw
    return [(str(k), v if isinstance(v, bytes) or v is None else str(v).encode())
            for k, v in items]  # fmt: skip


class FaustScorer:
    """A :class:`~streamproc.pipeline.handler.BatchHandler` for Faust agents."""

    def __init__(
        self,
        handler: BatchHandler,
        *,
        sensor: Sensor | None = None,
        closers: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.handler = handler
        self.counters: CountingSensor = handler.counters
        self.sensor = SensorGroup([self.counters, *([sensor] if sensor else [])])
        self.closers = list(closers)
        self.batches = 0
        self.input_topic: str | None = None  # the pipeline's, when built from_config

    @classmethod
    def from_config(
        cls, cfg: PipelineConfig, *, scorer: str = "single", sensor: Sensor | None = None
    ) -> FaustScorer:
        """The pipeline's handler, writing to the pipeline's topics (made if missing).
        ``scorer="rollout"`` follows the control topic's deployment, as ``streamproc run``."""
        from streamproc.pipeline.app import ensure_topics
        from streamproc.pipeline.batchscore import build_handler
        from streamproc.pipeline.handler import OutputTopics

        ensure_topics(cfg)
        t = cfg.topics
        handler, closers = build_handler(
            cfg, OutputTopics(t.predictions, t.dlq, t.alerts, t.metrics, t.shadow),
            scorer="rollout" if scorer == "rollout" else "single",
            instance=cfg.instance_id or "faust",
        )  # fmt: skip
        scorer_ = cls(handler, sensor=sensor, closers=closers)
        scorer_.input_topic = t.input
        return scorer_

    def topic(self, app: Any, name: str | None = None) -> Any:
        """The input topic (default: the pipeline's) as raw bytes, for ``@app.agent``."""
        name = name or self.input_topic
        if name is None:
            raise ValueError("name the input topic: this scorer was not built from a config")
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw")  # fmt: skip

    def raw_batch(self, events: Sequence[Any]) -> RawBatch:
        """Faust events as the handler's input: their bytes, keys and positions."""
        msgs = [e.message for e in events]
        n = len(msgs)
        return RawBatch(
            topic=msgs[0].topic if msgs else "",
            values=[m.value for m in msgs],
            keys=[m.key for m in msgs],
            partitions=np.fromiter((m.partition for m in msgs), np.int32, n),
            offsets=np.fromiter((m.offset for m in msgs), np.int64, n),
            headers=[_headers(m.headers) for m in msgs],
            batch_id=f"faust-{self.batches}",
            release=ReleaseReason.SIZE,
        )

    async def process(self, app: Any, events: Sequence[Any]) -> Outputs:
        """Score a batch of events, send its outputs through ``app``'s producer, wait for
        their acknowledgements, then count the batch."""
        raw = self.raw_batch(events)
        self.batches += 1
        # Decoding and inference hold the CPU (and a registry lookup may block): off the
        # event loop, so Faust keeps its heartbeats and fetches going.
        out = await asyncio.to_thread(self.handler, raw)
        metrics = self.handler.topics.metrics
        send = app.producer.send
        pending = []
        for b in out.blocks:
            hdrs = list(b.headers)
            for k, v in zip(b.keys, b.values, strict=True):
                pending.append(await send(b.topic, k, v, None, None, hdrs))
        for r in out.records:
            if r.topic == metrics:  # snapshots: the counters report them here instead
                continue
            pending.append(await send(r.topic, r.key, r.value, r.partition, None,
                                      list(r.headers or [])))  # fmt: skip
        if pending:
            await asyncio.gather(*pending)
        if out.stats is not None:
            self.sensor.on_batch(out.stats)
        return out

    async def take(
        self, app: Any, stream: Any, *, n: int = 1000, within: float = 0.05
    ) -> AsyncIterator[Outputs]:
        """``async for outputs in scorer.take(app, stream, n=..., within=...)``: each batch of
        ``stream.take_events(n, within)`` processed (:meth:`process`)."""
        async for events in stream.take_events(n, within=within):
            if events:
                yield await self.process(app, events)

    def close(self) -> None:
        for close in self.closers:
            close()
