"""The explanation process: requests cross to a spawned child and come back as records,
never blocking the caller; drops past the queue, discards, specs and the nice value.

The explainers and sinks below are module-level so that they pickle into the child."""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from pathlib import Path

import numpy as np

from streamproc.insight.process import ExplanationProcess
from streamproc.models.spec import load_model_spec
from streamproc.types import JoinedIds

DEMO = "deploy/models/fraud/1.1.0"


class Echo:
    """Attributions equal to the row itself; its method names what the child saw."""

    def __init__(self, method: str, delay_s: float = 0.0) -> None:
        self.method = method
        self.delay_s = delay_s

    def explain(self, x):
        time.sleep(self.delay_s)
        x = np.asarray(x, dtype=np.float64)
        return x.copy(), 0.0, x.sum(axis=1)


def echo_factory(specs, delay_s=0.0):
    def build(version):
        # The spec arrived before the version's first request; the nice value is the
        # child's own.
        return Echo(f"{specs[version].name}/nice={os.nice(0)}", delay_s)

    return build


def file_sink(path):
    f = open(path, "a")  # noqa: SIM115 - closed by the returned closer

    def sink(records):
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.flush()

    return sink, f.close


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def proc(tmp_path, **kw):
    spec = load_model_spec(DEMO)
    delay = kw.pop("delay_s", 0.0)
    p = ExplanationProcess(
        functools.partial(echo_factory, delay_s=delay), {spec.version: spec}, ["a", "b"],
        functools.partial(file_sink, str(tmp_path / "out.jsonl")), **kw,
    ).start()  # fmt: skip
    return spec, p


def test_requests_come_back_as_records_of_the_rows_they_name(tmp_path):
    spec, p = proc(tmp_path, nice=5, linger_ms=0)
    ids = JoinedIds(b"\x00".join(b"e%d" % i for i in range(100)), 100,
                    np.cumsum([0] + [len(b"e%d" % i) + 1 for i in range(100)]))  # fmt: skip
    x = np.arange(200, dtype=np.float32).reshape(100, 2)
    assert p.submit_rows(ids, spec.version, x, np.array([3, 50, 99])) == 0
    assert p.submit_rows([f"f{i}" for i in range(4)], [spec.version] * 4, x[:4],
                         np.array([1])) == 0  # fmt: skip
    assert p.wait_idle(60)
    p.close()
    got = {r["event_id"]: r for r in read(tmp_path / "out.jsonl")}
    assert set(got) == {"e3", "e50", "e99", "f1"}
    assert got["e50"]["attributions"] == {"a": 100.0, "b": 101.0}
    assert got["f1"]["attributions"] == {"a": 2.0, "b": 3.0}
    assert {r["model_version"] for r in got.values()} == {spec.version}
    name, nice = got["e3"]["method"].split("/nice=")
    assert name == spec.name and int(nice) >= 5
    assert (p.counts.explained, p.counts.dropped, p.counts.failed) == (4, 0, 0)
    assert not p._proc.is_alive()


def test_past_the_queue_it_drops_and_counts_without_waiting(tmp_path):
    spec, p = proc(tmp_path, queue_size=8, linger_ms=0, delay_s=1.0)
    x = np.zeros((50, 2), dtype=np.float32)
    ids = [f"e{i}" for i in range(50)]
    t = time.perf_counter()
    dropped = sum(p.submit_rows(ids, spec.version, x, np.arange(i, i + 5)) for i in (0, 5, 10))
    assert time.perf_counter() - t < 0.5  # the child sleeps a second a call: nobody waited
    assert dropped == 15 - 8 and p.counts.dropped == 7
    assert p.wait_idle(60)
    p.close()
    assert len(read(tmp_path / "out.jsonl")) == 8 == p.counts.explained


def test_discarded_requests_are_counted_as_dropped(tmp_path):
    spec, p = proc(tmp_path, linger_ms=60_000)  # held until a flush
    x = np.zeros((10, 2), dtype=np.float32)
    p.submit_rows([f"e{i}" for i in range(10)], spec.version, x, np.arange(10))
    assert p.discard_queued() == 10
    assert p.wait_idle(30)
    p.close()
    assert read(tmp_path / "out.jsonl") == []
    assert (p.counts.explained, p.counts.dropped) == (0, 10)


def test_rows_held_past_their_linger_go_out_when_flush_due_is_called(tmp_path):
    # An idle stream sends no next batch: the pipeline calls flush_due (through its
    # monitor's idle hook) and the held rows reach the child once their linger has passed.
    now = [0.0]
    spec, p = proc(tmp_path, linger_ms=50, clock=lambda: now[0])
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    p.submit_rows(["e0", "e1", "e2"], spec.version, x, np.arange(3))
    p.flush_due()  # 0 ms held: not due
    assert p._held_rows == 3
    now[0] = 0.05
    p.flush_due()
    assert p._held_rows == 0
    deadline = time.monotonic() + 60  # the child starts an interpreter first
    while len(read(tmp_path / "out.jsonl")) < 3 and time.monotonic() < deadline:
        p.flush_due()  # takes the acknowledgements; never waits
        time.sleep(0.05)
    assert sorted(r["event_id"] for r in read(tmp_path / "out.jsonl")) == ["e0", "e1", "e2"]
    assert p.wait_idle(30)
    p.close()
    assert p.counts.explained == 3


def test_the_idle_flush_and_a_wait_from_another_thread_take_turns(tmp_path):
    # The processor's loop calls flush_due whenever it finds nothing to read, while a stop
    # (or a test) waits for the child from another thread: both use the acknowledgements'
    # poll object, which allows one caller at a time.
    spec, p = proc(tmp_path, linger_ms=0)
    x = np.zeros((20, 2), dtype=np.float32)
    p.submit_rows([f"e{i}" for i in range(20)], spec.version, x, np.arange(20))
    errors: list[BaseException] = []
    stop = threading.Event()

    def idle_loop():
        try:
            while not stop.is_set():
                p.flush_due()
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=idle_loop)
    t.start()
    try:
        assert p.wait_idle(60)
    finally:
        stop.set()
        t.join()
    p.close()
    assert errors == [] and p.counts.explained == 20


def test_a_daemonic_process_explains_on_a_thread(monkeypatch):
    """A `score --workers N` worker is daemonic and may not start the explainer's process."""
    import multiprocessing as mp

    from streamproc.config import ExplanationSettings
    from streamproc.pipeline.insight import explanation_isolation

    e = ExplanationSettings()
    assert explanation_isolation(e) == "process"

    class Daemon:
        daemon = True

    monkeypatch.setattr(mp, "current_process", Daemon)
    assert explanation_isolation(e) == "thread"
    assert explanation_isolation(ExplanationSettings(isolation="thread")) == "thread"
