"""`streamproc dlq inspect | replay` on the real broker and registry, through the CLI.

The fix that makes dead letters replayable here is a model change: events with a negative
amount are OUT_OF_RANGE for model 1.0.0 (``min: 0.0``); a copy of the model that accepts
them takes its place, and those dead letters are replayed under exactly-once. The other
malformed kinds stay broken, so a replay holds them back.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition
from typer.testing import CliRunner

from streamproc.cli import app
from streamproc.config import PipelineConfig
from streamproc.deadletters import REPLAY_HEADER
from streamproc.errors import ConfigError
from streamproc.kafka.admin import Admin
from streamproc.kafka.clients import FramedDecoder
from streamproc.kafka.dlq import replay_group
from streamproc.kafka.registry import Registry
from streamproc.loadgen import produce_synthetic
from tests.pipeline.conftest import MODEL

pytestmark = pytest.mark.kafka

cli = CliRunner()


def _yaml(cfg: PipelineConfig, path: Path) -> str:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return str(path)


def _run(*args: str) -> dict:
    res = cli.invoke(app, ["dlq", *args, "-o", "json"])
    if res.exception is not None:
        raise res.exception
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _fixed_model(tmp_path: Path) -> str:
    """Model 1.0.0 with negative amounts allowed, as 1.0.1 in a model repository beside
    1.0.0: the operator's fix."""
    shutil.copytree(MODEL, tmp_path / "models" / "fraud" / "1.0.0")
    out = tmp_path / "models" / "fraud" / "1.0.1"
    shutil.copytree(MODEL, out)
    spec = yaml.safe_load((out / "model.yaml").read_text())
    for inp in spec["inputs"]:
        if inp["field"] == "amount":
            inp["min"] = -1_000_000.0
    spec["version"] = "1.0.1"
    spec["reader_schema"] = str((MODEL / spec["reader_schema"]).resolve())
    (out / "model.yaml").write_text(yaml.safe_dump(spec))
    return str(out)


def _replayed_on_input(bootstrap: str, topic: str) -> list[bytes]:
    """The replay headers of the input topic's committed records."""
    ends = Admin(bootstrap).latest_offsets(topic)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})  # fmt: skip
    c.subscribe([topic])
    out, seen = [], Counter[int]()
    try:
        while any(seen[p] < e - 1 for p, e in ends.items() if e):
            msgs = c.consume(500, timeout=10)
            if not msgs:
                break
            for m in msgs:
                if m.error() is None:
                    seen[m.partition()] = m.offset()
                    out += [v for k, v in m.headers() or [] if k == REPLAY_HEADER]
    finally:
        c.close()
    return out


def test_inspect_counts_then_replay_after_a_fix_scores_each_dead_letter_once(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic, tmp_path
):
    cfg = pipeline_config_factory(guarantee="exactly-once", partitions=2)
    producer = event_producer_factory(cfg.topics.input)
    report = produce_synthetic(producer, 240, malformed=0.15, seed=7)
    n_bad = sum(report.malformed.values())
    n_negative = report.malformed["negative"]
    assert n_negative > 0 and len(report.malformed) == 6
    running = processor_factory(cfg)
    preds = read_topic(cfg.topics.predictions, report.good)
    dead = read_topic(cfg.topics.dlq, n_bad)
    running.stop()
    assert len(preds) == report.good and len(dead) == n_bad
    path = _yaml(cfg, tmp_path / "p.yaml")

    # inspect: the counts match what was produced; the sample is safe
    d = _run("inspect", "-c", path, "--sample", "3")
    assert d["total"] == d["scanned"] == n_bad and d["unreadable"] == 0
    assert Counter(d["by_reason"]) == report.expected_rejects()
    assert sum(b["count"] for b in d["by_time"]) == n_bad
    assert d["by_schema_id"]["987654321"] == report.malformed["unknown_schema"]
    assert len(d["sample"]) == 3
    assert all(s["value"].startswith("hex:") for s in d["sample"])
    only = _run("inspect", "-c", path, "--reason", "out_of_range", "--sample", "0")
    assert only["total"] == n_negative and only["by_reason"] == {"OUT_OF_RANGE": n_negative}
    later = _run("inspect", "-c", path, "--since", "2999-01-01T00:00:00Z")
    assert later["total"] == 0 and later["scanned"] == n_bad
    text = cli.invoke(app, ["dlq", "inspect", "-c", path])
    assert text.exit_code == 0 and "OUT_OF_RANGE" in text.stdout and "per minute" in text.stdout

    # Before the fix, nothing would be sent: every dead letter fails again.
    before = _run("replay", "-c", path, "--dry-run")
    assert before["would_send"] == 0 and before["held"] == n_bad

    # The fix: a model that accepts negative amounts. A dry run sends and commits nothing.
    fixed = cfg.with_overrides(model=_fixed_model(tmp_path))
    fixed_path = _yaml(fixed, tmp_path / "fixed.yaml")
    ends = Admin(cfg.kafka.bootstrap).latest_offsets(cfg.topics.input)
    dry = _run("replay", "-c", fixed_path, "--dry-run")
    assert dry["would_send"] == n_negative
    assert dry["by_outcome"]["replayed"] == {"OUT_OF_RANGE": n_negative}
    assert Admin(cfg.kafka.bootstrap).latest_offsets(cfg.topics.input) == ends
    assert _run("replay", "-c", fixed_path, "--dry-run")["would_send"] == n_negative

    # The replay: only the fixed ones are sent, the others are held back.
    first = _run("replay", "-c", fixed_path)
    assert first["sent"] == n_negative
    assert first["held"] == n_bad - n_negative
    assert first["transactions"] == 1
    headers = _replayed_on_input(cfg.kafka.bootstrap, cfg.topics.input)
    negative = sorted(f"{cfg.topics.dlq}/{r.partition}/{r.offset}".encode()
                      for r in dead if r.value["reason"] == "OUT_OF_RANGE")  # fmt: skip
    assert sorted(headers) == negative

    # A second replay, dry and real, has nothing left to send.
    assert _run("replay", "-c", fixed_path, "--dry-run")["would_send"] == 0
    second = _run("replay", "-c", fixed_path)
    assert second["sent"] == 0 and second["held"] == n_bad - n_negative
    assert len(_replayed_on_input(cfg.kafka.bootstrap, cfg.topics.input)) == n_negative

    # The processor (the fixed model, exactly-once) scores each replayed event once.
    decoder = FramedDecoder(Registry(cfg.registry.url))
    want = sorted(decoder.decode(r.value["value"])[1]["event_id"]
                  for r in dead if r.value["reason"] == "OUT_OF_RANGE")  # fmt: skip
    # Deployed the operator's way: the processors follow the control topic, not the file.
    for cmd in (["deploy", "fraud", "1.0.1", "--repo", str(tmp_path / "models")],
                ["promote", "fraud"]):  # fmt: skip
        res = cli.invoke(app, [*cmd, "-c", fixed_path])
        assert res.exit_code == 0, (res.output, res.exception)
    running = processor_factory(fixed)
    all_preds = read_topic(cfg.topics.predictions, report.good + n_negative + 1, idle_s=8)
    # ...and a replay while it runs still sends nothing.
    assert _run("replay", "-c", fixed_path)["sent"] == 0
    more = read_topic(cfg.topics.predictions, report.good + n_negative + 1, idle_s=5)
    running.stop()
    for got in (all_preds, more):
        ids = Counter(p.value["event_id"] for p in got)
        assert len(got) == report.good + n_negative
        assert max(ids.values()) == 1
    replayed = [p for p in more if p.value["model_version"] == "1.0.1"]
    assert sorted(p.value["event_id"] for p in replayed) == want
    assert len(read_topic(cfg.topics.dlq, n_bad + 1, idle_s=3)) == n_bad  # none new

    # The progress lives in the replay group, per reason, in the offsets' metadata.
    c = Consumer({"bootstrap.servers": cfg.kafka.bootstrap, "group.id": replay_group(cfg)})
    try:
        tps = c.committed([TopicPartition(cfg.topics.dlq, p) for p in range(2)], timeout=10)
    finally:
        c.close()
    for tp in tps:
        meta = json.loads(tp.metadata)
        assert "OUT_OF_RANGE" not in meta  # settled with everything else
        assert set(meta) >= {"*"}


def test_replay_of_one_reason_leaves_the_others_and_force_sends_them(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic, tmp_path
):
    cfg = pipeline_config_factory(guarantee="exactly-once", partitions=1)
    producer = event_producer_factory(cfg.topics.input)
    report = produce_synthetic(producer, 40, malformed=0.3, seed=3,
                               kinds=("bad_magic", "truncated"))  # fmt: skip
    running = processor_factory(cfg)
    read_topic(cfg.topics.dlq, sum(report.malformed.values()))
    running.stop()
    path = _yaml(cfg, tmp_path / "p.yaml")
    truncated = report.malformed["truncated"]
    forced = _run("replay", "-c", path, "--reason", "TRUNCATED", "--force")
    assert forced["sent"] == truncated and forced["by_outcome"] == {
        "forced": {"TRUNCATED": truncated}
    }
    # BAD_MAGIC was not selected: a later replay of it finds every one of them.
    later = _run("replay", "-c", path, "--reason", "BAD_MAGIC", "--dry-run")
    assert later["held"] == report.malformed["bad_magic"]
    skipped = _run("replay", "-c", path, "--reason", "BAD_MAGIC", "--skip-failing")
    assert skipped["sent"] == 0 and skipped["passed"] == report.malformed["bad_magic"]
    assert _run("replay", "-c", path, "--reason", "BAD_MAGIC", "--dry-run")["held"] == 0
    assert _run("replay", "-c", path, "--reason", "TRUNCATED", "--force")["sent"] == 0


def test_cli_rejects_bad_options(pipeline_config_factory, tmp_path):
    cfg = pipeline_config_factory(partitions=1)
    path = _yaml(cfg, tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="unknown reason"):
        _run("inspect", "-c", path, "--reason", "NOT_A_REASON")
    with pytest.raises(ConfigError, match="ISO 8601"):
        _run("replay", "-c", path, "--since", "last tuesday")
    res = cli.invoke(app, ["dlq", "replay", "-c", path, "--force", "--skip-failing"])
    assert res.exit_code != 0
    res = cli.invoke(app, ["dlq", "inspect", "-c", path, "-o", "yaml"])
    assert res.exit_code != 0
    empty = _run("inspect", "-c", path)
    assert empty["total"] == 0 and empty["by_time"] == []
