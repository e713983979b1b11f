"""A hand-written at-least-once loop on confluent-kafka, shared by (b) passthrough and (c) naive.

Per batch: ``consume(batch_size, max_wait)``, then for each record ``transform`` it and
``produce`` the result. Every ``commit_interval_s`` (streamproc's default), and when a
consume comes back empty, ``flush`` (every record acknowledged, else fail) and one
synchronous ``commit`` of the next offsets: streamproc's at-least-once protocol. The client
settings are streamproc's own (``streamproc.kafka.configuration``), so the comparison is
about the processing, not librdkafka tuning or commit cadence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from streamproc.config import KafkaSettings
from streamproc.kafka.configuration import consumer_config, producer_config
from streamproc.kafka.runner import RunnerSettings
from systems.shared import WorkerConfig, stop_on_signals, write_report

Transform = Callable[[Message], bytes]


def run_loop(cfg: WorkerConfig, transform: Transform) -> None:
    stop = stop_on_signals()
    settings = KafkaSettings(bootstrap=cfg.bootstrap, client_id=cfg.system)
    errors: list[str] = []

    def on_delivery(err: Any, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    consumer = Consumer(consumer_config(settings, cfg.group_id, eos=False))
    producer = Producer(
        {
            **producer_config(settings),
            "on_delivery": on_delivery,
            "delivery.report.only.error": True,
        }
    )
    consumer.subscribe([cfg.input_topic])
    out_topic = cfg.output_topic
    timeout = cfg.max_wait_ms / 1000.0
    events = batches = 0
    started = time.monotonic()
    interval = RunnerSettings(topic=cfg.input_topic).commit_interval_s
    last: dict[int, int] = {}
    oldest = 0.0  # monotonic time of the oldest batch not yet committed

    def flush_and_commit() -> None:
        if producer.flush(30.0) or errors:
            raise RuntimeError(f"unacknowledged records: {errors[:3]}")
        consumer.commit(
            offsets=[TopicPartition(cfg.input_topic, p, o + 1) for p, o in last.items()],
            asynchronous=False,
        )
        last.clear()

    try:
        while not stop.is_set():
            msgs = consumer.consume(num_messages=cfg.batch_size, timeout=timeout)
            if not msgs:
                if last:
                    flush_and_commit()
                continue
            if not last:
                oldest = time.monotonic()
            for m in msgs:
                if m.error() is not None:
                    continue
                value = transform(m)
                while True:
                    try:
                        producer.produce(out_topic, value, m.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
                last[m.partition()] = m.offset()
            producer.poll(0)
            if last and time.monotonic() - oldest >= interval:
                flush_and_commit()
            events += len(msgs)
            batches += 1
        if last:
            flush_and_commit()
    finally:
        producer.flush(30.0)
        consumer.close()
        write_report(
            cfg,
            {"events": events, "batches": batches, "seconds": time.monotonic() - started},
        )
