"""Explanations in a child process: the pipeline's interpreter never waits for them.

:class:`~streamproc.insight.explain.ExplanationWorker` explains on a thread of the pipeline's
process. Its heavy calls (the coalition rows, the model) release the GIL, but the Python
around them (the requests, the records, the producer's ``send`` per record) does not, and a
thread that wants the GIL makes the pipeline's thread hand it over at its next switch
interval and wait to get it back. :class:`ExplanationProcess` keeps the same interface
(:class:`Explanations`) and explains in a ``spawn``-ed child with its own interpreter: the
pipeline's thread only draws the sample and copies the sampled rows; every ``linger_ms`` (or
``batch`` rows) they go to the child in one message down a non-blocking pipe (what the pipe
has no room for waits in the parent for the next message; past 4 MB waiting, requests are
dropped and counted: it never blocks). Each message wakes the child, and each wake-up of the
other CPU cost the pipeline's thread more than the copy: hence one message per linger, not
one per batch. Measured in benchmarks/RESULTS.md ("Insight").

The child builds its explainers (``explainers(specs)``, specs sent along with the first
request of each model version) and its sink (``sink_factory()``, e.g. a Kafka producer of
its own) itself, so both must pickle: module-level functions, ``functools.partial`` of them,
or dataclasses. It acknowledges each message with how many it explained, dropped or failed;
the parent counts what is outstanding from those acknowledgements and drops a request past
``queue_size`` outstanding, never blocking. Like the thread, it is at most once: a crash
loses what was outstanding.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import pickle
import select
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from streamproc.insight.explain import (
    Explainer,
    ExplainRequest,
    ExplanationWorker,
    WorkerCounts,
)
from streamproc.models.spec import ModelSpec
from streamproc.types import JoinedIds

log = logging.getLogger(__name__)

Sink = Callable[[list[dict[str, Any]]], None]
SinkFactory = Callable[[], tuple[Sink, Callable[[], None]]]  # (sink, close), in the child
ExplainersFactory = Callable[[dict[str, ModelSpec]], Callable[[str], Explainer]]


class Explanations(Protocol):
    """What the pipeline asks of an explanation worker (a thread or a process)."""

    @property
    def counts(self) -> WorkerCounts: ...

    def submit_rows(
        self,
        event_ids: Sequence[str],
        versions: Sequence[str] | str,
        x: npt.NDArray[np.float32],
        rows: npt.NDArray[np.intp],
    ) -> int: ...

    def discard_queued(self) -> int: ...

    def flush_due(self) -> None:
        """Send what waits past its linger (the pipeline found nothing to read: no next
        batch will); never blocks."""
        ...

    def wait_idle(self, timeout_s: float) -> bool: ...

    def close(self, timeout_s: float = 5.0) -> None: ...


def discarding_sink() -> tuple[Sink, Callable[[], None]]:
    """A sink that keeps nothing (benchmarks: the explaining is what they measure)."""
    return (lambda records: None), (lambda: None)


class ExplanationProcess:
    """Explains sampled rows in a child process; the interface of ``ExplanationWorker``.

    ``specs`` is the parent's live map of model versions (the pipeline's monitor adds the
    versions it meets); each version's spec goes to the child before its first request.
    ``max_cpu_share`` and ``nice`` apply to the child as they do to the thread; the child
    lets requests gather for ``linger_ms`` after the first one and explains them together
    (up to ``batch``)."""

    def __init__(
        self,
        explainers: ExplainersFactory,
        specs: dict[str, ModelSpec],
        columns: Sequence[str],
        sink_factory: SinkFactory,
        *,
        queue_size: int = 1_024,
        batch: int = 256,
        model_name: str = "",
        max_cpu_share: float = 1.0,
        nice: int = 0,
        linger_ms: float = 50.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.specs = specs
        self._clock = clock
        # The pipeline's thread submits and flushes when idle; a stop (or a test, a
        # benchmark) may wait_idle from another thread: one at a time on the pipes and
        # their poll object. The idle flush never waits for it.
        self._lock = threading.Lock()
        self.queue_size = queue_size
        self.batch = batch
        self.linger_s = linger_ms / 1000.0
        self._held: list[tuple[npt.NDArray[np.float32], Sequence[str], list[int], Any]] = []
        self._held_rows = 0
        self._held_since: float | None = None
        self._out = b""  # framed messages the pipe has not taken yet
        self._counts = WorkerCounts()
        self._pending = 0  # sent to the child and not yet acknowledged
        self._sent: set[str] = set()  # versions whose spec the child has
        ctx = mp.get_context("spawn")  # no fork: the parent runs librdkafka's and ORT's threads
        # Three one-way pipes, written and read by the callers' threads themselves: a
        # multiprocessing.Queue's feeder thread would take the GIL from the pipeline's
        # thread for every message (measured: benchmarks/RESULTS.md, "Insight").
        req_r, self._req = ctx.Pipe(duplex=False)  # requests: written non-blocking
        spec_r, self._spec = ctx.Pipe(duplex=False)  # model specs: rare, blocking
        self._ack, ack_w = ctx.Pipe(duplex=False)  # the child's acknowledgements
        os.set_blocking(self._req.fileno(), False)
        # One poll object for the acknowledgements (Connection.poll builds a selector a call)
        self._ack_ready = select.poll()
        self._ack_ready.register(self._ack.fileno(), select.POLLIN)
        _widen(self._req.fileno())
        self._epoch: Any = ctx.RawValue("q", 0)  # raised by discard_queued(); the parent writes
        self._proc = ctx.Process(
            target=_child_main,
            name="streamproc-explanations",
            args=(explainers, list(columns), sink_factory, req_r, spec_r, ack_w, self._epoch,
                  batch, model_name, max_cpu_share, nice),
            daemon=True,  # ended with the parent where close() is never called
        )  # fmt: skip
        self._child_ends = (req_r, spec_r, ack_w)
        self._started = False
        self._closed = False

    def start(self) -> ExplanationProcess:
        if not self._started:
            self._started = True
            self._proc.start()
            for end in self._child_ends:  # the child holds its own copies now
                end.close()
        return self

    @property
    def counts(self) -> WorkerCounts:
        """As of the last message sent (the child's acknowledgements are taken then)."""
        return self._counts

    def _drain(self, timeout_s: float) -> None:
        """Take the child's acknowledgements: every one there is, waiting up to
        ``timeout_s`` for the first."""
        try:
            while self._ack_ready.poll(timeout_s * 1000.0):
                timeout_s = 0.0
                done, explained, dropped, failed, busy_s = pickle.loads(self._ack.recv_bytes())
                self._pending -= done
                c = self._counts
                c.explained += explained
                c.dropped += dropped
                c.failed += failed
                c.busy_s += busy_s
        except (EOFError, OSError):  # the child is gone: what it had is lost
            return

    def submit_rows(
        self,
        event_ids: Sequence[str],
        versions: Sequence[str] | str,
        x: npt.NDArray[np.float32],
        rows: npt.NDArray[np.intp],
    ) -> int:
        """Take rows ``rows`` of the batch ``x`` (with their event ids and model versions)
        for the child; returns how many were dropped (``queue_size`` outstanding). Never
        blocks: the rows are copied here and go to the child in one message per
        ``linger_ms`` (or per ``batch`` rows), written to a non-blocking pipe."""
        with self._lock:
            return self._submit(event_ids, versions, x, rows)

    def _submit(
        self,
        event_ids: Sequence[str],
        versions: Sequence[str] | str,
        x: npt.NDArray[np.float32],
        rows: npt.NDArray[np.intp],
    ) -> int:
        took = max(0, min(len(rows), self.queue_size - self._pending))
        dropped = len(rows) - took
        self._counts.dropped += dropped
        if took:
            take = rows[:took].tolist()
            vs = versions if isinstance(versions, str) else [versions[i] for i in take]
            self._held.append((np.asarray(x[rows[:took]], dtype=np.float32), event_ids, take, vs))
            self._held_rows += took
            self._pending += took
            self._counts.queued += took
            if self._held_since is None:
                self._held_since = self._clock()
        if self._held_since is not None and (
            self._held_rows >= self.batch or self._clock() - self._held_since >= self.linger_s
        ):
            self._flush()
        return dropped

    def flush_due(self) -> None:
        """Rows held past ``linger_ms`` go to the child now, and what the pipe did not take
        before is written (an idle stream sends no next batch to carry them)."""
        if not self._lock.acquire(blocking=False):  # another thread is at it: no wait
            return
        try:
            if self._held_since is not None and self._clock() - self._held_since >= self.linger_s:
                self._flush()
            else:
                self._pump()
                self._drain(0.0)
        finally:
            self._lock.release()

    def _flush(self) -> None:
        """Send what is held as one message (the ids found only now, for the rows taken),
        and take the child's acknowledgements."""
        held, self._held, self._held_rows, self._held_since = self._held, [], 0, None
        self._drain(0.0)
        if held:
            parts: list[bytes] = []
            vs: list[str] = []
            one: str | None = held[0][3] if isinstance(held[0][3], str) else None
            for _, event_ids, take, v in held:
                # The ids' bytes only: the child decodes them (JoinedIds: no split here).
                parts.append(event_ids.take_joined(take) if isinstance(event_ids, JoinedIds)
                             else "\0".join(event_ids[i] for i in take).encode())  # fmt: skip
                vs += [v] * len(take) if isinstance(v, str) else v
                if v != one:
                    one = None
            self._send_specs(set(vs))
            xs = np.concatenate([h[0] for h in held]) if len(held) > 1 else held[0][0]
            # Plain types only (bytes, a str): pickled in microseconds.
            payload = pickle.dumps((self._epoch.value, b"\0".join(parts), one or vs,
                                    xs.shape[1], xs.tobytes()), protocol=5)  # fmt: skip
            if len(self._out) > _MAX_BACKLOG:  # the child is far behind: drop, counted
                self._pending -= len(xs)
                self._counts.dropped += len(xs)
            else:
                self._out += struct.pack("!i", len(payload)) + payload  # Connection's framing
        self._pump()

    def _pump(self) -> None:
        """Write what the pipe takes of the pending bytes (the rest waits for the next)."""
        while self._out:
            try:
                n = os.write(self._req.fileno(), self._out)
            except BlockingIOError:
                return
            except OSError:  # the child is gone
                self._out = b""
                return
            self._out = self._out[n:]

    def _send_specs(self, wanted: set[str]) -> None:
        new = {v: self.specs[v] for v in wanted - self._sent if v in self.specs}
        if new:
            self._sent.update(new)
            self._spec.send_bytes(pickle.dumps(new))

    def discard_queued(self) -> int:
        """Drop what is held here, and have the child drop what it has not begun (counted
        as dropped when it says so); returns how many were outstanding."""
        with self._lock:
            n = self._pending
            self._counts.dropped += self._held_rows
            self._pending -= self._held_rows
            self._held, self._held_rows, self._held_since = [], 0, None
            self._epoch.value += 1
            return n

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until the child has acknowledged every request sent."""
        end = time.monotonic() + timeout_s
        with self._lock:
            self._flush()
        while True:
            with self._lock:  # taken a short wait at a time: the pipeline may submit
                if self._pending <= 0:
                    return True
                left = end - time.monotonic()
                if left <= 0 or not self._proc.is_alive():
                    return False
                self._pump()
                self._drain(min(left, 0.05))

    def close(self, timeout_s: float = 5.0) -> None:
        """Explain what is outstanding (up to ``timeout_s``), then stop the child (its sink
        closed: a producer flushes)."""
        if not self._started or self._closed:
            return
        self._closed = True
        if not self.wait_idle(timeout_s):
            log.warning("explanation process: %d requests not explained in %.0f s: lost",
                        self._pending, timeout_s)  # fmt: skip
        with contextlib.suppress(OSError):
            self._spec.send_bytes(pickle.dumps(None))  # stop
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            log.warning("the explanation process did not stop in %.0f s: terminated", timeout_s)
            self._proc.terminate()
            self._proc.join(timeout_s)
        with self._lock:
            self._drain(0.0)
        for end in (self._req, self._spec, self._ack):
            end.close()


_MAX_BACKLOG = 4 << 20  # bytes of messages waiting for room in the pipe; past it, drop


def _widen(fd: int) -> None:
    """Give the requests pipe 1 MiB (Linux; the default 64 kB holds fewer requests than a
    queue of 1,024): a no-op elsewhere."""
    with contextlib.suppress(AttributeError, OSError):
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)  # type: ignore[attr-defined]


def _child_main(
    explainers: ExplainersFactory,
    columns: list[str],
    sink_factory: SinkFactory,
    requests: Any,
    specs_in: Any,
    acks: Any,
    epoch: Any,
    batch: int,
    model_name: str,
    max_cpu_share: float,
    nice: int,
) -> None:  # pragma: no cover - runs in the child (its effects are tested)
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:
            log.debug("the explanation process keeps the pipeline's priority")
    specs: dict[str, ModelSpec] = {}
    sink, close_sink = sink_factory()
    # The thread worker's explaining and records, run here on the child's main thread.
    worker = ExplanationWorker(explainers(specs), columns, sink, batch=batch,
                               model_name=model_name)  # fmt: skip
    parent = mp.parent_process()

    def ack(done: int, explained: int, dropped: int, failed: int, busy_s: float) -> None:
        acks.send_bytes(pickle.dumps((done, explained, dropped, failed, busy_s)))

    waiting: list[tuple[int, bytes, Any, int, bytes]] = []
    try:
        while True:
            ready = mp_connection.wait([requests, specs_in], timeout=1.0)
            if not ready:
                if parent is not None and not parent.is_alive():
                    return  # the pipeline died without closing us
                continue
            if specs_in in ready:  # specs before the requests that need them
                new = pickle.loads(specs_in.recv_bytes())
                if new is None:
                    return
                specs.update(new)
            if requests not in ready:
                continue
            # Every request waiting in the pipe, explained together up to ``batch``.
            while requests.poll() and len(waiting) < batch:
                waiting.append(pickle.loads(requests.recv_bytes()))
            while specs_in.poll():
                new = pickle.loads(specs_in.recv_bytes())
                if new is None:
                    return
                specs.update(new)
            now = epoch.value
            items: list[ExplainRequest] = []
            for at, joined, versions, d, raw in waiting:
                ids = joined.decode("utf-8", "replace").split("\0")
                xs = np.frombuffer(raw, dtype=np.float32).reshape(len(ids), d)
                if at != now:  # discarded while it waited
                    ack(len(ids), 0, len(ids), 0, 0.0)
                    continue
                items += [ExplainRequest(ids[i], versions if isinstance(versions, str) else
                                         versions[i], xs[i]) for i in range(len(ids))]  # fmt: skip
            waiting.clear()
            if not items:
                continue
            before = (worker.counts.explained, worker.counts.failed, worker.counts.busy_s)
            t0 = time.perf_counter()
            worker.explain_items(items)
            c = worker.counts
            ack(len(items), c.explained - before[0], 0, c.failed - before[1],
                c.busy_s - before[2])  # fmt: skip
            if max_cpu_share < 1.0:  # rest so as to use at most this share of a core
                time.sleep((time.perf_counter() - t0) * (1.0 / max_cpu_share - 1.0))
    finally:
        close_sink()
