"""Request-reply over Kafka on the real stack: each caller gets its own replies."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from streamproc import lineage, synth
from streamproc.errors import StreamprocError
from streamproc.kafka.admin import Admin
from streamproc.kafka.reqreply import (
    AsyncRequestClient,
    ReplyServer,
    RequestClient,
    RequestRejectedError,
    RequestTimeoutError,
    _Encoder,
    wait_ready,
)
from streamproc.pipeline.batchscore import build_handler
from streamproc.pipeline.handler import OutputTopics
from streamproc.types import RawBatch

pytestmark = pytest.mark.kafka


def _topics(cfg) -> OutputTopics:
    t = cfg.topics
    return OutputTopics(t.predictions, t.dlq, t.alerts, t.metrics, t.shadow)


@pytest.fixture
def served(pipeline_config_factory) -> Iterator[tuple]:
    cfg = pipeline_config_factory(partitions=4)
    topic = f"{cfg.topics.input}.requests"
    Admin(cfg.kafka).ensure_topics([topic], partitions=4)
    handler, closers = build_handler(cfg, _topics(cfg))
    server = ReplyServer(cfg.kafka, topic, handler, group_id=f"{cfg.group_id}-rr")
    errors: list[BaseException] = []

    def target() -> None:
        try:
            server.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    wait_ready(server, 60)
    yield cfg, topic, server
    server.stop()
    thread.join(60)
    for close in closers:
        close()
    assert not errors, errors


def _expected(cfg, topic: str, records: list[dict]) -> dict[str, float]:
    """The scores the pipeline's handler gives the same events, run here in one batch."""
    handler, _ = build_handler(cfg, _topics(cfg))
    enc = _Encoder(cfg.registry, topic, "Transaction")
    n = len(records)
    raw = RawBatch(topic, [enc.encode(r) for r in records], [None] * n,
                   np.zeros(n, np.int32), np.arange(n, dtype=np.int64), [None] * n)  # fmt: skip
    out = handler(raw)
    import io

    import fastavro

    from streamproc import schemas

    parsed = schemas.parsed("Prediction")
    scores = {}
    for b in out.blocks:
        for v in b.values:
            rec = fastavro.schemaless_reader(io.BytesIO(v[5:]), parsed, None)
            scores[rec["event_id"]] = rec["score"]
    return scores


def test_10000_requests_from_8_callers_each_get_their_own_reply(served):
    cfg, topic, server = served
    records, _ = synth.generate(10_000, seed=44)
    for i in range(0, 10_000, 997):  # a few the model's checks reject
        records[i] = {**records[i], "amount": -1.0}
    rejected_ids = {records[i]["event_id"] for i in range(0, 10_000, 997)}
    expected = _expected(cfg, topic, records)
    assert len(expected) == 10_000 - len(rejected_ids)
    results: dict[int, dict[str, object]] = {}
    errors: list[BaseException] = []

    def caller(k: int) -> None:
        mine = records[k::8]
        got: dict[str, object] = {}
        try:
            with RequestClient(cfg.kafka, cfg.registry, topic, timeout_s=60) as client:
                for w in range(0, len(mine), 250):  # 250 in flight at a time
                    window = mine[w : w + 250]
                    futs = [client.submit(r, key=r["account_id"]) for r in window]
                    for r, f in zip(window, futs, strict=True):
                        try:
                            p = client.result(f)
                            got[r["event_id"]] = p
                        except RequestRejectedError as exc:
                            got[r["event_id"]] = exc
        except BaseException as exc:
            errors.append(exc)
        results[k] = got

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    assert sum(len(r) for r in results.values()) == 10_000
    for k, got in results.items():
        assert set(got) == {r["event_id"] for r in records[k::8]}  # only its own requests
        for eid, reply in got.items():
            if eid in rejected_ids:
                assert isinstance(reply, RequestRejectedError) and reply.reason == "OUT_OF_RANGE"
                continue
            assert reply.event_id == eid  # the reply to this very request
            assert reply.score == pytest.approx(expected[eid], abs=1e-6)
            assert lineage.decode(reply.headers[lineage.HEADER])["model"] == "fraud"
    assert server.answered == 10_000 and server.rejected == len(rejected_ids)


async def test_the_asyncio_client_matches_concurrent_requests(served):
    cfg, topic, _ = served
    records, _ = synth.generate(300, seed=45)
    expected = _expected(cfg, topic, records)
    async with AsyncRequestClient(cfg.kafka, cfg.registry, topic, timeout_s=60) as client:
        replies = await asyncio.gather(*(client.request(r, key=r["account_id"]) for r in records))
    assert [p.event_id for p in replies] == [r["event_id"] for r in records]
    for p in replies:
        assert p.score == pytest.approx(expected[p.event_id], abs=1e-6)


async def test_no_reply_in_time_raises_a_clear_error_both_ways(pipeline_config_factory):
    cfg = pipeline_config_factory(partitions=1)
    topic = f"{cfg.topics.input}.requests"  # nobody serves it
    Admin(cfg.kafka).ensure_topics([topic], partitions=1)
    record = synth.generate(1, seed=1)[0][0]
    with (
        RequestClient(cfg.kafka, cfg.registry, topic) as client,
        pytest.raises(RequestTimeoutError, match=r"no reply to request \w+ within 0\.5s"),
    ):
        client.request(record, timeout_s=0.5)
    async with AsyncRequestClient(cfg.kafka, cfg.registry, topic) as aclient:
        with pytest.raises(StreamprocError, match="reply-server"):
            await aclient.request(record, timeout_s=0.5)
