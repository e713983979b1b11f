"""Windowed features in the live pipeline (issue #27), on the real local stack.

The oracle is :class:`~streamproc.features.reference.ReferenceStore` run over the input
topic as it ended up (per partition, in offset order): every prediction's ``features`` map
(``outputs.include_features``) must hold the value the reference gives its event, whatever
happened to the processors in between (kill -9, a replica stopping, exactly-once aborts).
"""

from __future__ import annotations

import copy
import datetime
import io
import json
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from streamproc import schemas
from streamproc.features.reference import ReferenceStore
from streamproc.kafka.admin import Admin
from streamproc.models.spec import ModelSpec, load_model_spec
from streamproc.pipeline.features import FeatureStage, decoder_spec
from streamproc.telemetry import Sensor
from streamproc.types import RawBatch, ReasonCode
from tests.pipeline.conftest import MODEL
from tests.pipeline.trickle import Trickle

FEATURES = {
    "allowed_lateness": "1m",
    "definitions": [
        {"name": "txn_count_1h", "agg": "count", "window": {"size": "1h"}},
        {"name": "txn_count_24h", "agg": "count", "window": {"size": "24h"}},
        {"name": "avg_amount_7d", "agg": "mean", "value": "amount", "window": {"size": "7d"}},
        {"name": "minutes_since_last_txn", "agg": "since_last", "unit": "min",
         "window": {"size": "30d"}},
    ],
}  # fmt: skip
NAMES = [d["name"] for d in FEATURES["definitions"]]  # type: ignore[index]


def _nullable_time_schema() -> dict[str, Any]:
    """Transaction with a nullable event time (to send an event without one)."""
    s = copy.deepcopy(schemas.schema_dict("Transaction"))
    for f in s["fields"]:
        if f["name"] == "event_time":
            f["type"] = ["null", f["type"]]
            f["default"] = None
    return s


@pytest.fixture
def feature_model(tmp_path: Path) -> Path:
    """The fraud model with four of its inputs computed by the window store."""
    d = tmp_path / "fraud-features"
    shutil.copytree(MODEL, d)
    raw = yaml.safe_load((d / "model.yaml").read_text())
    (d / "Transaction.avsc").write_text(json.dumps(_nullable_time_schema()))
    raw["reader_schema"] = "Transaction.avsc"
    raw["features"] = FEATURES
    for f in raw["inputs"]:
        if f["field"] in ("avg_amount_7d", "minutes_since_last_txn"):
            f.update({"null": "impute", "impute": 0.0})  # a first event's window is empty
    (d / "model.yaml").write_text(yaml.safe_dump(raw))
    return d


def _ms(t: Any) -> int:
    """A timestamp-millis as read back (a datetime) in ms since the epoch."""
    if isinstance(t, datetime.datetime):
        return (t - EPOCH) // datetime.timedelta(milliseconds=1)
    return int(t)


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def expected_values(spec: ModelSpec, events: list[Any]) -> dict[str, list[float]]:
    """event_id -> the model's feature values, from the reference over the input topic."""
    assert spec.features is not None
    ref = ReferenceStore(spec.features)
    by_input = {f.field: f for f in spec.inputs}
    out: dict[str, list[float]] = {}
    for p in sorted({e.partition for e in events}):
        evs = sorted((e for e in events if e.partition == p), key=lambda e: e.offset)
        res = ref.process(
            p, [e.key for e in evs], np.array([_ms(e.value["event_time"]) for e in evs], np.int64),
            {"amount": np.array([e.value["amount"] for e in evs], np.float32).astype(np.float64)},
        )  # fmt: skip
        for e, row in zip(evs, res.values.tolist(), strict=True):
            vals = []
            for name, v in zip(spec.features.names, row, strict=True):
                f = by_input[name]
                x = f.impute if np.isnan(v) and f.null == "impute" else v
                vals.append(float(np.float32(x)))
            out[e.value["event_id"]] = vals
    return out


def check_predictions(spec: ModelSpec, events: list[Any], predictions: list[Any]) -> int:
    """Every prediction carries the reference's values; returns how many were checked."""
    want = expected_values(spec, events)
    wrong = []
    for p in predictions:
        got = p.value["features"]
        assert got is not None, "include_features is on"
        vals = [got[n] for n in NAMES]
        if vals != want[p.value["event_id"]]:
            wrong.append((p.value["event_id"], vals, want[p.value["event_id"]]))
    assert not wrong, f"{len(wrong)} wrong feature values, e.g. {wrong[:3]}"
    return len(predictions)


# -- without Kafka: the stage between a real decoder and the reference ------------------------


def test_stage_equals_reference_and_rejects_missing_key_and_time(feature_model):
    from streamproc.codecs.decoder import BatchDecoder
    from streamproc.codecs.source import DictSchemaSource
    from streamproc.codecs.wire import frame
    from streamproc.synth import generate

    spec = load_model_spec(feature_model)
    reader = _nullable_time_schema()
    dspec = decoder_spec(spec)
    assert [f.field for f in dspec.inputs][-2:] == ["amount", "event_time"]
    dec = BatchDecoder(dspec, reader, DictSchemaSource({1: reader}))
    assert spec.features is not None
    stage = FeatureStage(spec, ReferenceStore(spec.features), changelog_topic="cl")
    records, _ = generate(300, seed=5)
    for i, r in enumerate(records):
        r["event_time"] = 1_700_000_000_000 + 1000 * (i // 3)  # ties, in order
        r["account_id"] = f"acct-{i % 17}"  # keys with history
    records[7]["event_time"] = None
    keys: list[bytes | None] = [r["account_id"].encode() for r in records]
    keys[11] = None
    keys[12] = b""
    parsed = fastavro.parse_schema(reader)

    def encode(r: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, r)
        return frame(1, buf.getvalue())

    values: list[bytes | None] = [encode(r) for r in records]
    n = len(values)
    raw = RawBatch("t", values, keys, np.zeros(n, np.int32), np.arange(n, dtype=np.int64),
                   [None] * n)  # fmt: skip
    fb = stage.apply(raw, dec.decode(values))
    errors = fb.dec.errors
    assert errors[7] == ReasonCode.MISSING_EVENT_TIME and "event_time" in fb.dec.details[7]
    assert errors[11] == errors[12] == ReasonCode.MISSING_KEY
    assert (np.flatnonzero(errors) == [7, 11, 12]).all()
    # The oracle: the reference over the valid events.
    ok = [i for i in range(n) if i not in (7, 11, 12)]
    ref = ReferenceStore(spec.features)
    res = ref.process(0, [keys[i] or b"" for i in ok],
                      np.array([records[i]["event_time"] for i in ok], np.int64),
                      {"amount": np.array([records[i]["amount"] for i in ok],
                                          np.float32).astype(np.float64)})  # fmt: skip
    cols = [spec.columns.index(name) for name in NAMES]
    got = fb.dec.features[ok][:, cols]
    want = res.values.copy()
    for j, name in enumerate(NAMES):
        f = next(f for f in spec.inputs if f.field == name)
        if f.null == "impute":
            want[np.isnan(want[:, j]), j] = f.impute
    assert np.array_equal(got, want.astype(np.float32))
    assert got[:, 0].max() >= 2  # some keys have history: the windows are not all empty
    # Event inputs land in their own columns.
    a = spec.columns.index("amount")
    assert np.array_equal(fb.dec.features[ok, a], [np.float32(records[i]["amount"]) for i in ok])
    # One changelog record per key touched (and the store's own), framed with the offset.
    assert fb.state and all(r.partition == 0 and r.topic == "cl" for r in fb.state)
    assert {r.value[:8] for r in fb.state if r.value} == {n.to_bytes(8, "big")}


def test_nan_feature_follows_the_inputs_null_rule(feature_model):
    raw = yaml.safe_load((feature_model / "model.yaml").read_text())
    for f in raw["inputs"]:
        if f["field"] == "avg_amount_7d":
            f["null"] = "reject"
    spec = ModelSpec.model_validate(raw)
    assert spec.features is not None
    stage = FeatureStage(spec, ReferenceStore(spec.features), changelog_topic="cl")
    errors = np.zeros(2, np.uint8)
    details = ["", ""]
    col = stage._feature_column(spec.inputs[6], np.array([np.nan, 3.0]), errors, details)
    assert errors.tolist() == [ReasonCode.MISSING_FEATURE, 0] and "undefined" in details[0]
    assert col[1] == 3.0


def test_features_keyed_by_fields_need_the_repartitioned_input(feature_model):
    raw = yaml.safe_load((feature_model / "model.yaml").read_text())
    raw["features"] = {**FEATURES, "key": ["account_id"]}
    spec = ModelSpec.model_validate(raw)
    assert spec.features is not None
    with pytest.raises(Exception, match="keyed by"):
        FeatureStage(spec, ReferenceStore(spec.features), changelog_topic="cl")
    FeatureStage(spec, ReferenceStore(spec.features), changelog_topic="cl", repartitioned=True)


# -- on the real stack ------------------------------------------------------------------------


def _cfg(factory, model: Path, guarantee: str = "at-least-once", partitions: int = 2):
    return factory(guarantee=guarantee, partitions=partitions, model=str(model),
                   outputs={"include_features": True})  # fmt: skip


def _wait_for(n: int, read, topic: str, deadline_s: float = 120.0) -> list[Any]:
    """Read ``topic`` until it holds ``n`` distinct event ids (a condition, with a deadline)."""
    end = time.monotonic() + deadline_s
    while True:
        out = read(topic, 10**9, idle_s=3)
        if len({r.value["event_id"] for r in out}) >= n or time.monotonic() > end:
            return out


@pytest.mark.kafka
def test_pipeline_features_equal_the_reference(
    feature_model, pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg = _cfg(pipeline_config_factory, feature_model)
    producer = event_producer_factory(cfg.topics.input, schema=_nullable_time_schema())
    from streamproc.loadgen import produce_synthetic

    produce_synthetic(producer, 600, seed=3)
    # Bad input: no key, no event time.
    rec = produce_one(producer, seed=4)
    producer.send_raw(producer.encode({**rec, "event_id": "no-key"}), None)
    producer.send_raw(producer.encode({**rec, "event_id": "no-time", "event_time": None}),
                      rec["account_id"])  # fmt: skip
    producer.flush()
    running = processor_factory(cfg)
    preds = _wait_for(600, read_topic, cfg.topics.predictions)
    dlq = read_topic(cfg.topics.dlq, 2, idle_s=30)
    # Observability: state size per partition and the restores, on /metrics ...
    reg = running.processor.prometheus.registry

    def sample(name: str, part: int) -> float | None:
        v = reg.get_sample_value(name, {"pipeline": cfg.name, "partition": str(part)})
        return None if v is None else float(v)

    for part in (0, 1):
        assert (sample("streamproc_feature_state_keys", part) or 0) > 0
        assert (sample("streamproc_feature_state_bytes", part) or 0) > 0
        assert sample("streamproc_feature_restore_seconds", part) is not None
        assert sample("streamproc_feature_restore_records", part) == 0  # a new changelog
    # ... and on the metrics topic.
    end = time.monotonic() + 60
    while not any((m.value.get("feature_state_keys") or 0) > 0
                  for m in read_topic(cfg.topics.metrics, 10**6, idle_s=2)):  # fmt: skip
        assert time.monotonic() < end, "no metrics snapshot with the feature state"
    running.stop()
    spec = load_model_spec(feature_model)
    events = read_topic(cfg.topics.input, 602, idle_s=5, committed=False)
    assert check_predictions(spec, [e for e in events if e.value["event_id"] not in
                                    ("no-key", "no-time")], preds) == 600  # fmt: skip
    assert max(p.value["features"]["txn_count_24h"] for p in preds) >= 1
    reasons = sorted(d.value["reason"] for d in dlq)
    assert reasons == ["MISSING_EVENT_TIME", "MISSING_KEY"]
    # The state went to the compacted changelog, one partition per input partition.
    topic = f"{cfg.group_id}.fraud.features-changelog"
    cl = _raw_records(cfg.kafka.bootstrap, topic)
    assert cl and {p for p, _, _ in cl} == {0, 1}
    admin = AdminClient({"bootstrap.servers": cfg.kafka.bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    conf = admin.describe_configs([res])[res].result(timeout=30)
    assert conf["cleanup.policy"].value == "compact"
    # A key's state record starts with the input offset its batch reached.
    ends = {p: o for p, o in Admin(cfg.kafka.bootstrap).latest_offsets(cfg.topics.input).items()}
    assert all(0 < int.from_bytes(v[:8], "big") <= ends[p] for p, _, v in cl if v)


@pytest.mark.kafka
def test_an_input_topic_created_again_starts_its_features_from_no_state(
    feature_model, pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    """The changelog outlives a delete and create of the input topic. The new topic's
    offsets start over below what the old state reached: obeyed, that state would drop the
    new events of its keys as already counted. The processor discards it instead."""
    from streamproc.loadgen import produce_synthetic
    from streamproc.synth import generate

    cfg = _cfg(pipeline_config_factory, feature_model)
    produce_synthetic(event_producer_factory(cfg.topics.input), 600, seed=5)
    first = processor_factory(cfg)
    assert len(_wait_for(600, read_topic, cfg.topics.predictions)) >= 600
    first.stop()
    old = read_topic(cfg.topics.input, 600, idle_s=5, committed=False)
    # The keys of the old topic's last events: their state reached its highest offsets.
    last = sorted(old, key=lambda e: -e.offset)
    keys = list(dict.fromkeys(e.value["account_id"] for e in last))[:20]
    _create_again(cfg.kafka.bootstrap, cfg.topics.input, partitions=2)
    producer = event_producer_factory(cfg.topics.input)
    records, _ = generate(200, seed=6)
    now_ms = int(time.time() * 1000)
    for i, r in enumerate(records):
        rec = {**r, "account_id": keys[i % len(keys)], "event_time": now_ms + i}
        producer.send(rec, key=rec["account_id"])
    producer.flush()
    second = processor_factory(cfg)
    new_ids = {r["event_id"] for r in records}
    assert not new_ids & {e.value["event_id"] for e in old}
    preds = _wait_for(800, read_topic, cfg.topics.predictions)
    reg = second.processor.prometheus.registry
    discarded = sum(reg.get_sample_value("streamproc_feature_discarded_keys_total",
                                         {"pipeline": cfg.name, "partition": str(p)}) or 0
                    for p in (0, 1))  # fmt: skip
    second.stop()
    mine = [p for p in preds if p.value["event_id"] in new_ids]
    assert {p.value["event_id"] for p in mine} == new_ids  # none dropped as already counted
    events = read_topic(cfg.topics.input, 200, idle_s=5, committed=False)
    assert len(events) == 200
    assert check_predictions(load_model_spec(feature_model), events, mine) == len(mine)
    assert discarded > 0


def _create_again(bootstrap: str, topic: str, partitions: int) -> None:
    """Delete ``topic`` and create it again (empty), waiting for each step."""
    from confluent_kafka.admin import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic])[topic].result(timeout=30)
    end = time.monotonic() + 60
    while True:  # the name is free once the deletion has gone through
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)
            return
        except Exception as exc:  # TOPIC_ALREADY_EXISTS while the deletion is under way
            if time.monotonic() > end:
                raise AssertionError(f"{topic} could not be created again: {exc}") from exc
            time.sleep(0.2)


def _raw_records(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every record of ``topic`` as (partition, key, value), read to the end."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.partition.eof": True})  # fmt: skip
    parts = len(c.list_topics(topic, timeout=30).topics[topic].partitions)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(parts)])
    out: list[tuple[int, bytes | None, bytes | None]] = []
    left = set(range(parts))
    end = time.monotonic() + 60
    try:
        while left and time.monotonic() < end:
            for m in c.consume(500, timeout=1):
                if m.error() is not None:
                    left.discard(m.partition())
                else:
                    out.append((m.partition(), m.key(), m.value()))
    finally:
        c.close()
    assert not left, "the changelog was not read to its end"
    return out


def produce_one(producer, seed: int) -> dict[str, Any]:
    from streamproc.synth import generate

    records, _ = generate(1, seed=seed)
    r = dict(records[0])
    r["event_time"] = int(time.time() * 1000)
    return r


@pytest.mark.kafka
@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_kill_9_and_restart_keep_feature_values(
    guarantee, feature_model, pipeline_config_factory, subprocess_factory,
    event_producer_factory, read_topic,
):  # fmt: skip
    cfg = _cfg(pipeline_config_factory, feature_model, guarantee)
    producer = event_producer_factory(cfg.topics.input)
    trickle = Trickle(producer, seed=31)
    first = subprocess_factory(cfg, instance="p1")
    read_topic(cfg.topics.predictions, 300, idle_s=90, committed=False)
    assert first.poll() is None, "processor died on its own"
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert trickle.running, "the input stopped before the kill: not a kill mid-stream"
    second = subprocess_factory(cfg, instance="p1")
    n = trickle.stop()
    preds = _wait_for(n, read_topic, cfg.topics.predictions, deadline_s=180)
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0
    ids = [p.value["event_id"] for p in preds]
    assert set(ids) == {f"ev-31-{i:010d}" for i in range(n)}  # every event has a prediction
    if guarantee == "exactly-once":
        assert len(ids) == n  # read_committed: exactly one each
    events = read_topic(cfg.topics.input, n, idle_s=5, committed=False)
    assert check_predictions(load_model_spec(feature_model), events, preds) == len(preds)


@pytest.mark.kafka
def test_a_stopped_replicas_state_is_restored_on_the_other(
    feature_model, pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg = _cfg(pipeline_config_factory, feature_model, partitions=4)
    producer = event_producer_factory(cfg.topics.input)
    trickle = Trickle(producer, seed=41)
    a = processor_factory(cfg.with_overrides(instance_id="a"))
    b = processor_factory(cfg.with_overrides(instance_id="b"))
    end = time.monotonic() + 120
    while not (a.processor.runner.assigned_partitions and b.processor.runner.assigned_partitions):
        assert time.monotonic() < end, "the two replicas never shared the partitions"
        time.sleep(0.1)
    read_topic(cfg.topics.predictions, 400, idle_s=60, committed=False)
    b_parts = list(b.processor.runner.assigned_partitions or [])
    b.stop()
    end = time.monotonic() + 120
    while set(a.processor.runner.assigned_partitions or []) != {0, 1, 2, 3}:
        assert time.monotonic() < end, "the partitions never moved to the other replica"
        time.sleep(0.1)
    restored = a.processor.counters.feature_restore_records
    n = trickle.stop()
    preds = _wait_for(n, read_topic, cfg.topics.predictions, deadline_s=180)
    a.stop()
    assert b_parts and restored > 0  # b's partitions came with their state
    assert {p.value["event_id"] for p in preds} == {f"ev-41-{i:010d}" for i in range(n)}
    events = read_topic(cfg.topics.input, n, idle_s=5, committed=False)
    check_predictions(load_model_spec(feature_model), events, preds)


# -- restore paths without Kafka: a changelog kept in memory ----------------------------------


class MemoryChangelog:
    """What ChangelogReader gives, from changelog records kept here (``committed``: the
    group's committed input offset)."""

    def __init__(self) -> None:
        self.records: list[Any] = []
        self.committed: int | None = None
        self.input_end: int | None = None

    def read(self, partitions: list[int]) -> dict[int, Any]:
        from streamproc.kafka.changelog import Restored, unframe_state

        out = {}
        for p in partitions:
            r = Restored(committed=self.committed, input_end=self.input_end)
            for rec in self.records:
                if rec.partition != p:
                    continue
                offset, state = unframe_state(rec.value)
                r.entries.append((rec.key, state))
                r.records += 1
                if state is None:
                    r.ahead.pop(rec.key, None)
                elif self.committed is None or offset > self.committed:
                    r.ahead[rec.key] = offset
            out[p] = r
        return out


def _batches(feature_model: Path, n: int, size: int) -> tuple[Any, list[RawBatch], Any]:
    from streamproc.codecs.decoder import BatchDecoder
    from streamproc.codecs.source import DictSchemaSource
    from streamproc.codecs.wire import frame
    from streamproc.synth import generate

    spec = load_model_spec(feature_model)
    reader = _nullable_time_schema()
    dec = BatchDecoder(decoder_spec(spec), reader, DictSchemaSource({1: reader}))
    parsed = fastavro.parse_schema(reader)
    records, _ = generate(n, seed=9)
    values: list[bytes | None] = []
    keys: list[bytes | None] = []
    for i, r in enumerate(records):
        r["event_time"] = 1_700_000_000_000 + 5000 * i
        r["account_id"] = f"acct-{i % 23}"
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, r)
        values.append(frame(1, buf.getvalue()))
        keys.append(r["account_id"].encode())
    batches = []
    for s in range(0, n, size):
        m = min(size, n - s)
        batches.append(RawBatch("t", values[s : s + m], keys[s : s + m], np.zeros(m, np.int32),
                                np.arange(s, s + m, dtype=np.int64), [None] * m))  # fmt: skip
    return spec, batches, dec


def test_replayed_events_already_in_the_state_are_dropped(feature_model):
    """at-least-once: the changelog holds a batch whose offsets were not committed (some
    keys' records of it only: a crash mid-flush); its replay gives the uninterrupted values
    to the events not in the state and drops the others, then the stream goes on exactly."""
    spec, batches, dec = _batches(feature_model, 300, 100)
    assert spec.features is not None
    first = FeatureStage(spec, ReferenceStore(spec.features), changelog_topic="cl")
    runs = [first.apply(b, dec.decode(b.values)) for b in batches]
    want = [r.dec.features for r in runs]
    log = MemoryChangelog()
    log.records = runs[0].state + runs[1].state[::2]  # half of batch 2's keys made it
    log.committed = 100  # batch 2's offsets were not committed
    second = FeatureStage(spec, ReferenceStore(spec.features), changelog_topic="cl", source=log)
    second.assigned([0])
    replay = second.apply(batches[1], dec.decode(batches[1].values))
    kept = ~replay.skip
    assert replay.skip.any() and kept.any()
    assert np.array_equal(replay.dec.features[kept], want[1][kept])
    after = second.apply(batches[2], dec.decode(batches[2].values))
    assert not after.skip.any()
    assert np.array_equal(after.dec.features, want[2])


def test_a_changelog_from_an_earlier_input_topic_is_discarded_not_obeyed(feature_model):
    """The input topic was deleted and created again (its offsets start over, the group's
    committed offsets went with it) while the changelog kept the old topic's state, up to
    offset 300. Obeyed, that state would drop the new topic's first 300 events of its keys
    as already counted; they are scored from no state, and the old keys are tombstoned."""
    spec, batches, dec = _batches(feature_model, 300, 100)
    assert spec.features is not None
    old = FeatureStage(spec, ReferenceStore(spec.features), changelog_topic="cl")
    log = MemoryChangelog()
    for b in batches:
        log.records += old.apply(b, dec.decode(b.values)).state
    log.committed, log.input_end = None, 100  # the new topic holds 100 records so far
    sensor = CountingDiscards()
    stage = FeatureStage(spec, ReferenceStore(spec.features), changelog_topic="cl", source=log,
                         sensor=sensor)  # fmt: skip
    stage.assigned([0])
    fresh = FeatureStage(spec, ReferenceStore(spec.features), changelog_topic="cl")
    want = fresh.apply(batches[0], dec.decode(batches[0].values))
    got = stage.apply(batches[0], dec.decode(batches[0].values))
    assert not got.skip.any()
    assert np.array_equal(got.dec.features, want.dec.features)
    old_keys = {r.key for r in log.records}
    tombs = [r for r in got.state if r.value is None]
    assert {r.key for r in tombs} == old_keys and sensor.discarded == [(0, len(old_keys))]
    assert got.state[: len(tombs)] == tombs  # before the batch's own state: that one wins
    # The same changelog read for a topic that still holds the old records is obeyed.
    log.input_end = 300
    kept = FeatureStage(spec, ReferenceStore(spec.features), changelog_topic="cl", source=log)
    kept.assigned([0])
    assert kept.apply(batches[2], dec.decode(batches[2].values)).skip.all()


class CountingDiscards(Sensor):
    def __init__(self) -> None:
        self.discarded: list[tuple[int, int]] = []

    def on_feature_discarded(self, partition: int, keys: int) -> None:
        self.discarded.append((partition, keys))


def test_a_batch_read_again_restores_the_partition_first(feature_model):
    """exactly-once: a transaction aborted, its batch is read again: the state goes back to
    what the changelog holds (the committed batches) before the batch is processed."""
    spec, batches, dec = _batches(feature_model, 200, 100)
    assert spec.features is not None
    log = MemoryChangelog()
    stage = FeatureStage(spec, ReferenceStore(spec.features), changelog_topic="cl", source=log)
    stage.assigned([0])
    one = stage.apply(batches[0], dec.decode(batches[0].values))
    log.records, log.committed = one.state, 100  # batch 1 committed
    two = stage.apply(batches[1], dec.decode(batches[1].values))  # its transaction aborts
    again = stage.apply(batches[1], dec.decode(batches[1].values))
    assert not again.skip.any()
    assert np.array_equal(again.dec.features, two.dec.features)


def test_closed_windows_go_to_their_topic(feature_model):
    from streamproc.codecs.encoder import decode_record

    raw = yaml.safe_load((feature_model / "model.yaml").read_text())
    spend = {"name": "spend_1m", "agg": "sum", "value": "amount",
             "window": {"type": "tumbling", "size": "1m"}}  # fmt: skip
    raw["features"] = {
        **FEATURES,
        "closed_topic": "closed",
        "definitions": [*FEATURES["definitions"], spend],
    }  # type: ignore[misc]
    (feature_model / "model.yaml").write_text(yaml.safe_dump(raw))
    spec, batches, dec = _batches(feature_model, 120, 40)  # 5 s apart: 12 per minute
    assert spec.features is not None
    stage = FeatureStage(spec, ReferenceStore(spec.features), changelog_topic="cl",
                         closed_schema_id=7)  # fmt: skip
    ref = ReferenceStore(spec.features)
    got, want = [], []
    for b in batches:
        d = dec.decode(b.values)
        out = stage.apply(b, d)
        got += [decode_record("WindowAggregate", r.value) for r in out.records if r.value]
        amounts = d.features[:, -2].astype(np.float64)
        want += ref.process(0, list(b.keys), d.event_time_ms, {"amount": amounts}).closed
    assert got and len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g["feature"], g["key"].encode(), g["value"], g["events"]) == (
            w.feature, w.key, w.value, w.events)  # fmt: skip
        assert _ms(g["window_end"]) - _ms(g["window_start"]) == 60_000


@pytest.mark.kafka
def test_an_input_keyed_by_something_else_is_repartitioned(
    feature_model, pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    """features.key names account_id; the input is keyed by the event id (or not at all):
    the processor re-keys it through <input>.repartition.<model> and the features are the
    reference's per account."""
    raw = yaml.safe_load((feature_model / "model.yaml").read_text())
    raw["features"] = {**FEATURES, "key": ["account_id"]}
    (feature_model / "model.yaml").write_text(yaml.safe_dump(raw))
    cfg = _cfg(pipeline_config_factory, feature_model)
    producer = event_producer_factory(cfg.topics.input)
    from streamproc.synth import generate

    records, _ = generate(400, seed=8)
    now = int(time.time() * 1000)
    for i, r in enumerate(records):
        r["event_time"] = now + 10 * i
        r["account_id"] = f"acct-{i % 31}"  # keys with history
        producer.send_raw(producer.encode(r), None if i % 2 else r["event_id"])
    producer.flush()
    running = processor_factory(cfg)
    preds = _wait_for(400, read_topic, cfg.topics.predictions)
    running.stop()
    internal = f"{cfg.topics.input}.repartition.fraud"
    events = read_topic(internal, 400, idle_s=5, committed=False)
    assert len(events) == 400
    assert all(e.key == e.value["account_id"].encode() for e in events)
    spec = load_model_spec(feature_model)
    assert check_predictions(spec, events, preds) == 400
    assert max(p.value["features"]["txn_count_24h"] for p in preds) >= 5


def test_modes_without_window_state_refuse_a_model_with_windowed_features() -> None:
    from streamproc.errors import ConfigError
    from streamproc.models.spec import load_model_spec
    from streamproc.pipeline.features import require_stateless

    models = Path(__file__).resolve().parents[2] / "deploy" / "models" / "fraud"
    require_stateless(load_model_spec(models / "1.1.0"), "streamproc serve")  # no features
    with pytest.raises(ConfigError, match=r"fraud 2\.0\.0 computes windowed features.*serve"):
        require_stateless(load_model_spec(models / "2.0.0"), "streamproc serve")


# -- streamproc score: the window state from the input's history ------------------------------


@pytest.mark.kafka
def test_score_from_mid_topic_replays_history_and_equals_the_live_pipeline(
    feature_model, pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    from streamproc.loadgen import produce_synthetic
    from streamproc.pipeline.batchscore import ScoreJob, run

    cfg = _cfg(pipeline_config_factory, feature_model)
    producer = event_producer_factory(cfg.topics.input, schema=_nullable_time_schema())
    produce_synthetic(producer, 800, seed=11)
    running = processor_factory(cfg)
    preds = _wait_for(800, read_topic, cfg.topics.predictions)
    running.stop()
    live = {p.value["event_id"]: p.value for p in preds}
    ends = Admin(cfg.kafka.bootstrap).latest_offsets(cfg.topics.input)
    mid = {p: o // 2 for p, o in ends.items()}
    out = f"{cfg.topics.input}.rescored"
    job = ScoreJob(cfg, name=f"j-{uuid.uuid4().hex[:6]}", topic=cfg.topics.input,
                   start=",".join(f"{p}:{o}" for p, o in sorted(mid.items())),
                   out_topic=out, batch_size=64)  # fmt: skip
    summary = run(job)
    in_range = sum(ends[p] - mid[p] for p in ends)
    assert (summary.read, summary.predictions, summary.dead_letters) == (in_range, in_range, 0)
    got = read_topic(out, in_range, idle_s=10)
    assert len(got) == in_range
    for r in got:
        want = live[r.value["event_id"]]
        assert r.value["features"] == want["features"], r.value["event_id"]
        assert r.value["score"] == pytest.approx(want["score"], abs=1e-6)
    # The history mattered: some event's 24 h count includes events before the range.
    seen: dict[str, int] = {}
    from_history = 0
    for r in sorted(got, key=lambda r: (r.partition, r.value["event_time"])):
        key = r.value["key"]
        if r.value["features"]["txn_count_24h"] > seen.get(key, 0):
            from_history += 1
        seen[key] = seen.get(key, 0) + 1
    assert from_history > 0
    # Each partition's history before the range went into the state, unscored.
    assert {p: v["history_read"] for p, v in summary.partitions.items()} == mid


@pytest.mark.kafka  # the config factory makes the pipeline's topics
def test_score_of_files_with_windowed_features_needs_a_key_field(
    feature_model, pipeline_config_factory, tmp_path
):
    from streamproc.errors import ConfigError
    from streamproc.pipeline.batchscore import ScoreJob, run

    cfg = _cfg(pipeline_config_factory, feature_model)
    job = ScoreJob(cfg, name="j", files=[tmp_path / "day.avro"], out_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match="--key-field"):
        run(job)


@pytest.mark.kafka
def test_request_reply_and_faust_refuse_a_model_with_windowed_features(
    feature_model, pipeline_config_factory
):
    from streamproc.errors import ConfigError
    from streamproc.pipeline.batchscore import build_handler, output_topics

    cfg = _cfg(pipeline_config_factory, feature_model)
    with pytest.raises(ConfigError, match=r"windowed features.*request-reply, Faust"):
        build_handler(cfg, output_topics("x"))
