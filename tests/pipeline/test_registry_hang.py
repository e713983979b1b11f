"""A registry that accepts connections and never answers holds back only the events that
need a schema the processor has not fetched; the others keep being scored."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any
from urllib.parse import urlparse

import pytest

from streamproc import synth
from streamproc.kafka.clients import EventProducer
from streamproc.telemetry import Sensor

from .proxy import TcpProxy
from .test_registry_outage import unseen_schema

pytestmark = pytest.mark.kafka


class HangingProxy:
    """A loopback proxy in front of the registry that either forwards or hangs: while
    hanging it accepts connections and never answers on them (nor closes them)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.hanging = False
        self.held = 0  # connections accepted and never answered
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(client)
                if self.hanging:
                    self.held += 1
                    continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=TcpProxy._pipe, args=(a, b), daemon=True).start()

    def hang(self) -> None:
        """From now on, connections are held unanswered; the forwarding ones are dropped
        (a client's kept-alive connection would otherwise still reach the registry)."""
        with self._lock:
            self.hanging = True
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def forward(self) -> None:
        with self._lock:
            self.hanging = False
            conns, self._conns = self._conns, []
        for s in conns:  # the held ones: their clients gave up on them long ago
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.forward()
        self._listener.close()


class Holds(Sensor):
    def __init__(self) -> None:
        self.retries = 0

    def on_registry_retry(self, attempt: int, delay_s: float) -> None:
        self.retries += 1


def send(producer: EventProducer, n: int, partition: int, offset: int) -> set[str]:
    """``n`` events to one partition; their event ids."""
    records, _ = synth.generate(n, seed=31, offset=offset)
    now_ms = int(time.time() * 1000)
    for rec in records:
        rec["event_time"] = now_ms
        producer.producer.produce(producer.topic, producer.encode(rec), rec["account_id"],
                                  partition=partition)  # fmt: skip
    producer.flush()
    return {r["event_id"] for r in records}


def wait_for(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_hanging_registry_holds_back_only_the_events_of_a_new_schema(
    schema_registry, pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    # The hang lasts as long as the test needs to see every state of it, not 30 s: with the
    # lookup bounded at request_timeout_s (2 s here), the first lookup is given up after one
    # timeout, and the test waits until the registry was asked at least 3 times in all
    # (lookups in the background timed out and were started again) and A events produced
    # after that were scored; a longer hang only repeats that cycle.
    url = urlparse(schema_registry)
    proxy = HangingProxy(str(url.hostname), int(url.port or 80))
    try:
        cfg = pipeline_config_factory(partitions=3)
        proxied = f"http://127.0.0.1:{proxy.port}{url.path}"
        via_proxy = cfg.registry.model_copy(update={"url": proxied, "request_timeout_s": 2.0})
        holds = Holds()
        running = processor_factory(cfg.with_overrides(registry=via_proxy), extra_sensor=holds)
        a = event_producer_factory(cfg.topics.input)  # schema A: the processor learns it now
        seen: set[str] = set()

        def scored() -> set[str]:
            got = read_topic(cfg.topics.predictions, 100_000, idle_s=1)
            seen.update(p.value["event_id"] for p in got)
            return seen

        warm = send(a, 20, 0, 0) | send(a, 20, 1, 20)
        wait_for(lambda: warm <= scored(), 60, "schema A never scored")

        proxy.hang()
        b = event_producer_factory(cfg.topics.input, schema=unseen_schema())  # schema B
        new = send(b, 30, 2, 1000)
        first = send(a, 30, 0, 2000) | send(a, 30, 1, 2030)
        wait_for(lambda: holds.retries >= 1, 60, "the events of schema B were never held")
        wait_for(lambda: first <= scored(), 60, "schema A events not scored during the hang")
        wait_for(lambda: proxy.held >= 3, 60, "the registry was not asked again")
        later = send(a, 30, 0, 3000) | send(a, 30, 1, 3030)
        wait_for(lambda: later <= scored(), 60, "schema A events not scored later in the hang")
        assert proxy.hanging
        assert not new & scored(), "schema B events scored while the registry hung"
        assert read_topic(cfg.topics.dlq, 1, idle_s=1) == []

        proxy.forward()
        wait_for(lambda: new <= scored(), 90, "schema B events not scored after the hang")
        running.stop()
        assert read_topic(cfg.topics.dlq, 1, idle_s=2) == []
        assert seen == warm | new | first | later
    finally:
        proxy.close()
