"""The asyncio batcher: the stream's window policy over concurrent requests."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from streamproc.batching import WindowPolicy
from streamproc.serving.batcher import AsyncBatcher, Batch, QueueFull, Request, Scores, ShuttingDown

LIMIT_S = 60  # generous: waits end on conditions, this only bounds a hang


class Recorder:
    """Scores a row as twice its value; records each batch's size and release reason."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.sizes: list[int] = []
        self.reasons: list[str] = []
        self.gate = gate

    def __call__(self, batch: Batch) -> Scores:
        if self.gate is not None:
            assert self.gate.wait(LIMIT_S)
        self.sizes.append(len(batch))
        self.reasons.append(batch.reason.value)
        x = batch.features()
        return Scores(x[:, :1] * 2, ["1.0.0"] * len(x))


def req(*values: float) -> Request:
    return Request(np.array([[v] for v in values], np.float32), [None] * len(values))


async def test_concurrent_requests_fill_batches_by_size():
    score = Recorder()
    b = AsyncBatcher(WindowPolicy(max_size=16, max_wait_ms=60_000), score, max_queue_rows=1000)
    b.start()
    done = await asyncio.wait_for(asyncio.gather(*(b.submit(req(i)) for i in range(64))), LIMIT_S)
    assert [r.scores.ravel().tolist() for r in done] == [[2.0 * i] for i in range(64)]
    assert score.sizes == [16, 16, 16, 16] and set(score.reasons) == {"size"}
    assert b.queued_rows == 0 and b.max_batch_rows == 16
    await b.close()


async def test_a_request_spans_batches_and_the_rest_leaves_on_time():
    score = Recorder()
    b = AsyncBatcher(WindowPolicy(max_size=4, max_wait_ms=1), score, max_queue_rows=100)
    b.start()
    r = await asyncio.wait_for(b.submit(req(*range(10))), LIMIT_S)
    assert r.scores.ravel().tolist() == [2.0 * i for i in range(10)]
    assert score.sizes == [4, 4, 2] and score.reasons == ["size", "size", "time"]
    await b.close()


async def test_full_queue_refuses_then_accepts_again():
    gate = threading.Event()
    score = Recorder(gate)
    b = AsyncBatcher(WindowPolicy(max_size=1, max_wait_ms=0), score, max_queue_rows=3)
    b.start()
    held = [asyncio.ensure_future(b.submit(req(i))) for i in range(3)]
    await asyncio.sleep(0)  # let the three submit
    assert b.queued_rows == 3
    with pytest.raises(QueueFull):
        await b.submit(req(9))
    gate.set()
    done = await asyncio.wait_for(asyncio.gather(*held), LIMIT_S)
    assert [r.scores.item() for r in done] == [0.0, 2.0, 4.0]
    assert (await b.submit(req(5))).scores.item() == 10.0
    await b.close()


async def test_close_answers_every_accepted_request():
    gate = threading.Event()
    score = Recorder(gate)
    b = AsyncBatcher(WindowPolicy(max_size=2, max_wait_ms=60_000), score, max_queue_rows=100)
    b.start()
    held = [asyncio.ensure_future(b.submit(req(i))) for i in range(5)]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(b.close())
    await asyncio.sleep(0)
    with pytest.raises(ShuttingDown):
        await b.submit(req(9))
    gate.set()
    await asyncio.wait_for(closing, LIMIT_S)
    assert [r.result().scores.item() for r in held] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert score.reasons == ["size", "size", "shutdown"]


async def test_a_failing_batch_fails_its_requests_only():
    calls = []

    def score(batch: Batch) -> Scores:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("model failed")
        x = batch.features()
        return Scores(x, ["1.0.0"] * len(x))

    b = AsyncBatcher(WindowPolicy(max_size=2, max_wait_ms=60_000), score, max_queue_rows=100)
    b.start()
    out = await asyncio.wait_for(
        asyncio.gather(*(b.submit(req(i)) for i in range(4)), return_exceptions=True), LIMIT_S
    )
    assert [type(o).__name__ for o in out] == ["RuntimeError", "RuntimeError", "Request", "Request"]
    assert b.queued_rows == 0
    await b.close()
