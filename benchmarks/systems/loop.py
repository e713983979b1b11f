"""A hand-written at-least-once loop on confluent-kafka, shared by (b) passthrough and (c) naive.

Per batch: ``consume(batch_size, max_wait)``, then for each record ``transform`` it and
``produce`` the result, then ``flush`` (every record acknowledged, else fail) and a
synchronous ``commit`` of the next offsets: the protocol shape of streamproc's runner.
The client settings are streamproc's own (``streamproc.kafka.configuration``), so the
comparison is about the processing, not librdkafka tuning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from streamproc.config import KafkaSettings
from streamproc.kafka.configuration import consumer_config, producer_config
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
    try:
        while not stop.is_set():
            msgs = consumer.consume(num_messages=cfg.batch_size, timeout=timeout)
            if not msgs:
                continue
            last: dict[int, int] = {}
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
            if producer.flush(30.0) or errors:
                raise RuntimeError(f"unacknowledged records: {errors[:3]}")
            if last:
                consumer.commit(
                    offsets=[TopicPartition(cfg.input_topic, p, o + 1) for p, o in last.items()],
                    asynchronous=False,
                )
            events += len(msgs)
            batches += 1
    finally:
        producer.flush(30.0)
        consumer.close()
        write_report(
            cfg,
            {"events": events, "batches": batches, "seconds": time.monotonic() - started},
        )
