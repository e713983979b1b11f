"""Events produced on a thread while a test does something else (kills, fences)."""

from __future__ import annotations

import threading

from streamproc.loadgen import produce_synthetic

CHUNK = 200
MAX_EVENTS = 100_000  # a bound on the background producer, whatever the machine's speed


class Trickle:
    """Produce events in paced chunks on a thread until stopped (or MAX_EVENTS)."""

    def __init__(self, producer, seed: int, rate: float = 500.0) -> None:
        self.producer, self.seed, self.rate = producer, seed, rate
        self.sent = 0
        self.stopped = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True, name="trickle")
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopped.is_set() and self.sent < MAX_EVENTS:
                produce_synthetic(self.producer, CHUNK, rate=self.rate, seed=self.seed,
                                  offset=self.sent)  # fmt: skip
                self.sent += CHUNK
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> int:
        self.stopped.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "producer thread did not stop"
        if self.errors:
            raise self.errors[0]
        return self.sent
