"""What a produced record costs the producing thread: headers, and per-record delivery reports.

Against the real local broker, one confluent-kafka producer with streamproc's settings
(``streamproc.kafka.configuration.producer_config``) produces ``--n`` records of 150 bytes
in blocks of 1024 the way the runner does (``map`` over ``produce`` with positional
arguments), with 0, 1 or 4 headers, and either

* ``per-record``: a delivery callback on every record (the at-least-once runner's acks until
  2026-11-26), or
* ``only-error``: ``delivery.report.only.error`` and a ``flush`` every 25 blocks.

The figure is the producing thread's CPU time per record (``time.thread_time``: the
client's own threads and the broker are not in it), for every configuration in turn,
``--rounds`` times; the table shows each round and the median.

``python benchmarks/produce_cost.py [--n 400000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import repeat
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.config import KafkaSettings
from streamproc.kafka.configuration import producer_config
from streamproc.local import LocalStack, from_environment

BLOCK = 1024
FOUR = [("streamproc-model", b"fraud"), ("streamproc-version", b"1.0.0"),
        ("streamproc-batch", b"3f9c2a1b09d4e5f6"), ("streamproc-schema-id", b"7")]  # fmt: skip
ONE = [("streamproc-lineage", b"model=fraud&version=1.0.0&batch=3f9c2a1b09d4e5f6&schema-id=7")]
CONFIGS: list[tuple[str, list[tuple[str, bytes]] | None, bool]] = [
    ("4 headers, per-record acks", FOUR, True),
    ("1 header, per-record acks", ONE, True),
    ("no header, per-record acks", None, True),
    ("4 headers, only-error reports", FOUR, False),
    ("1 header, only-error reports", ONE, False),
    ("no header, only-error reports", None, False),
]


@contextmanager
def bootstrap() -> Iterator[str]:
    external = from_environment()
    if external is not None:
        yield external.bootstrap
        return
    stack = LocalStack(home=Path(mkdtemp(prefix="streamproc-produce-cost-")))
    info = stack.up()
    try:
        yield info.bootstrap
    finally:
        stack.down()


def measure(servers: str, topic: str, n: int, headers: Any, per_record: bool) -> float:
    """The producing thread's CPU microseconds per record."""
    acks = [0]

    def ack(err: Any, msg: Any) -> None:
        acks[0] += 1

    conf = producer_config(KafkaSettings(bootstrap=servers))
    if not per_record:
        conf |= {"delivery.report.only.error": True, "on_delivery": ack}
    p = Producer(conf)
    values = [os.urandom(75).hex().encode()] * BLOCK  # 150 bytes
    keys = [b"account-%04d" % i for i in range(BLOCK)]
    cb = ack if per_record else None
    t0 = time.thread_time()
    for sent in range(BLOCK, n + 1, BLOCK):
        # the runner's call: topic, value, key, partition, callback, timestamp... headers
        deque(map(p.produce, repeat(topic), values, keys, repeat(-1), repeat(cb), repeat(None),
                  repeat(0), repeat(headers)), 0)  # fmt: skip
        p.poll(0)
        if not per_record and sent % (25 * BLOCK) == 0:
            p.flush(30)
        while len(p) > 100_000:
            p.poll(0.01)
    if p.flush(60):
        raise RuntimeError("records not acknowledged")
    cpu = time.thread_time() - t0
    if per_record and acks[0] != n // BLOCK * BLOCK:
        raise RuntimeError(f"{acks[0]} delivery reports for {n} records")
    return cpu / (n // BLOCK * BLOCK) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with bootstrap() as servers:
        admin = AdminClient({"bootstrap.servers": servers})
        topic = f"produce-cost-{os.getpid()}"
        for f in admin.create_topics([NewTopic(topic, 4, 1)]).values():
            f.result()
        measure(servers, topic, 50_000, FOUR, True)  # warm the broker
        runs: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
        for _ in range(args.rounds):
            for name, headers, per_record in CONFIGS:
                runs[name].append(measure(servers, topic, args.n, headers, per_record))
        del admin
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.n:,} records per run, broker on the same machine")  # fmt: skip
    print("| configuration | µs per record, each round | median |")
    print("|---|---|---|")
    for name, values in runs.items():
        each = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {each} | **{statistics.median(values):.2f}** |")


if __name__ == "__main__":
    main()
