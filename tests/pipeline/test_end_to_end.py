"""The pipeline on the real broker and registry: nothing lost, every reject accounted for."""

from __future__ import annotations

import copy
import urllib.request
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer

from streamproc import lineage, loadgen, schemas, synth
from streamproc.codecs import kernel
from streamproc.errors import StreamprocError
from streamproc.kafka.admin import Admin
from streamproc.kafka.clients import FramedDecoder
from streamproc.kafka.registry import Registry
from streamproc.loadgen import KINDS, produce_synthetic

pytestmark = pytest.mark.kafka


def _sources(records, inputs):
    """(partition, offset) of the input each output came from: a prediction's by its
    event_id, a dead letter's from its own fields."""
    out = []
    for r in records:
        if "event_id" in r.value:
            out.append(inputs[r.value["event_id"]])
        else:
            out.append((r.value["partition"], r.value["offset"]))
    return out


def _input_positions(bootstrap: str, registry_url: str, topic: str, n: int):
    """event_id -> (partition, offset) for every decodable record of the input topic."""
    decoder = FramedDecoder(Registry(registry_url))
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"pos-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    c.subscribe([topic])
    seen, out = 0, {}
    try:
        while seen < n:
            msgs = c.consume(500, timeout=10)
            if not msgs:
                break
            for m in msgs:
                if m.error() is not None:
                    continue
                seen += 1
                try:
                    _, value = decoder.decode(m.value())
                except (StreamprocError, EOFError, ValueError, IndexError, UnicodeDecodeError):
                    continue  # a malformed input: its dead letter names partition and offset
                out[value["event_id"]] = (m.partition(), m.offset())
    finally:
        c.close()
    return out


def test_happy_path_every_event_scored_once_with_lineage(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg = pipeline_config_factory()
    producer = event_producer_factory(cfg.topics.input)
    records, _ = synth.generate(500, seed=3)
    for r in records:
        producer.send(r, key=r["account_id"])
    producer.flush()
    running = processor_factory(cfg)
    preds = read_topic(cfg.topics.predictions, 500)
    running.stop()
    assert sorted(p.value["event_id"] for p in preds) == sorted(r["event_id"] for r in records)
    by_id = {r["event_id"]: r for r in records}
    for p in preds:
        assert p.value["model_name"] == "fraud" and p.value["model_version"] == "1.0.0"
        lin = lineage.decode(p.headers[lineage.HEADER])
        assert (lin["model"], lin["version"]) == ("fraud", "1.0.0")
        assert len(lin["batch"]) == 16
        assert p.key == by_id[p.value["event_id"]]["account_id"].encode()  # keyed like input
        assert p.value["label"] in ("legit", "fraud")
        assert 0.0 <= p.value["score"] <= 1.0
        assert int(lin["schema-id"]) > 0
    assert read_topic(cfg.topics.dlq, 1, idle_s=2) == []
    # The input subject's schema got its own kernel at start-up, and the batches ran on it.
    sid = int(lineage.decode(preds[0].headers[lineage.HEADER])["schema-id"])
    entry = running.processor.handler.decoder.writer(sid)
    assert entry.extra["kernel"] is not kernel.decode


def test_each_malformed_class_is_one_dead_letter_and_the_invariant_holds(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic, admin,
    monkeypatch,
):  # fmt: skip
    cfg = pipeline_config_factory(partitions=3)
    producer = event_producer_factory(cfg.topics.input)
    # Record the exact bytes sent (key, value) and which values were the malformed ones.
    sent: list[tuple[bytes, bytes]] = []
    broken: set[bytes] = set()
    send_raw, corrupt = producer.send_raw, loadgen.corrupt

    def record_send(value, key=None, headers=None):
        sent.append((key.encode() if isinstance(key, str) else key, value))
        send_raw(value, key, headers)

    def record_corrupt(*args):
        broken.add(bad := corrupt(*args))
        return bad

    monkeypatch.setattr(producer, "send_raw", record_send)
    monkeypatch.setattr(loadgen, "corrupt", record_corrupt)
    report = produce_synthetic(producer, 600, malformed=0.1, seed=5)
    assert set(report.malformed) == set(KINDS)
    running = processor_factory(cfg)
    preds = read_topic(cfg.topics.predictions, report.good)
    dead = read_topic(cfg.topics.dlq, sum(report.malformed.values()))
    running.stop()
    assert len(preds) == report.good
    assert Counter(d.value["reason"] for d in dead) == report.expected_rejects()
    for d in dead:
        assert d.value["source_topic"] == cfg.topics.input
        assert d.value["detail"]
    # Each dead letter carries the original key and value bytes, for replay: exactly what
    # was produced for the malformed inputs (a multiset: some corrupt payloads are equal).
    produced_bad = Counter((k, v) for k, v in sent if v in broken)
    assert sum(produced_bad.values()) == sum(report.malformed.values())
    assert Counter((d.value["key"], d.value["value"]) for d in dead) == produced_bad
    for d in dead:
        assert d.key == d.value["key"]  # keyed like the input
    # Invariant: per partition, the input offsets are exactly predictions + dead letters.
    ends = Admin(cfg.kafka.bootstrap).latest_offsets(cfg.topics.input)
    inputs = _input_positions(cfg.kafka.bootstrap, cfg.registry.url, cfg.topics.input,
                              sum(ends.values()))  # fmt: skip
    accounted = Counter(_sources(preds, inputs)) + Counter(_sources(dead, inputs))
    expected = Counter((p, o) for p, end in ends.items() for o in range(end))
    assert accounted == expected


def test_schema_evolution_compatible_scored_incompatible_dead_lettered(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg = pipeline_config_factory()
    v2 = schemas.schema_dict("Transaction")
    v2["fields"].append({"name": "merchant_category", "type": "string", "default": "unknown"})
    bad = copy.deepcopy(schemas.schema_dict("Transaction"))
    for f in bad["fields"]:
        if f["name"] == "amount":
            f["type"] = "string"
    good_producer = event_producer_factory(cfg.topics.input, schema=v2)
    # The registry refuses the incompatible schema on the input's subject (BACKWARD), so a
    # rogue producer registers it elsewhere and writes its id onto our topic.
    rogue = event_producer_factory(f"{cfg.topics.input}-rogue", schema=bad)
    rogue.topic = cfg.topics.input
    records, _ = synth.generate(20, seed=9)
    for r in records[:10]:
        good_producer.send({**r, "merchant_category": "grocery"}, key=r["account_id"])
    for r in records[10:]:
        rogue.send({**r, "amount": str(r["amount"])}, key=r["account_id"])
    good_producer.flush()
    rogue.flush()
    running = processor_factory(cfg)
    preds = read_topic(cfg.topics.predictions, 10)
    dead = read_topic(cfg.topics.dlq, 10)
    running.stop()
    assert sorted(p.value["event_id"] for p in preds) == sorted(r["event_id"] for r in records[:10])
    assert {d.value["reason"] for d in dead} == {"INCOMPATIBLE_SCHEMA"}
    assert len(dead) == 10
    assert "amount" in dead[0].value["detail"]


def test_two_processors_share_partitions_and_one_stopping_loses_nothing(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg = pipeline_config_factory(partitions=4)
    a = processor_factory(cfg.with_overrides(instance_id="a"))
    b = processor_factory(cfg.with_overrides(instance_id="b"))
    producer = event_producer_factory(cfg.topics.input)
    first = produce_synthetic(producer, 1000, seed=11)
    got = read_topic(cfg.topics.predictions, first.good)
    assert len({p.value["event_id"] for p in got}) == 1000
    a.stop()  # graceful: finishes its batch, commits, leaves the group
    produce_synthetic(producer, 1000, seed=11, offset=1000)
    preds = read_topic(cfg.topics.predictions, 2000, idle_s=15)
    b.stop()
    ids = {p.value["event_id"] for p in preds}
    assert ids == {f"ev-11-{i:010d}" for i in range(2000)}
    processors_seen = {a.processor.counters.events_in > 0, b.processor.counters.events_in > 0}
    assert processors_seen == {True}  # both took part


def test_metrics_endpoint_shows_the_counts(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg = pipeline_config_factory(metrics={"port": 0})
    running = processor_factory(cfg)
    producer = event_producer_factory(cfg.topics.input)
    report = produce_synthetic(producer, 300, malformed=0.1, seed=2, kinds=("bad_magic",))
    read_topic(cfg.topics.predictions, report.good)
    read_topic(cfg.topics.dlq, report.malformed["bad_magic"])
    # Batches are counted once committed; the reader sees them after the commit.
    port = running.processor.metrics_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    running.stop()
    name = cfg.name

    def sample(metric, **labels):
        want = ",".join(f'{k}="{v}"' for k, v in {"pipeline": name, **labels}.items())
        for line in body.splitlines():
            if line.startswith(metric + "{") and all(p in line for p in want.split(",")):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{metric} {labels} not in /metrics")

    assert sample("streamproc_events_in_total") == 300
    assert (
        sample("streamproc_events_rejected_total", reason="BAD_MAGIC")
        == report.malformed["bad_magic"]
    )
    assert sample("streamproc_events_out_total", model="fraud", version="1.0.0") == report.good
    assert 'streamproc_model_info{backend="onnxruntime"' in body
    assert "streamproc_process_rss_bytes" in body
    snaps = read_topic(cfg.topics.metrics, 1)
    assert snaps and snaps[0].value["pipeline"] == name
