"""``streamproc score`` on the real stack: the live pipeline's outputs for a range, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fastavro
import pytest
import yaml

from streamproc import synth
from streamproc.errors import DependencyMissingError
from streamproc.kafka.backfill import read_progress
from streamproc.loadgen import produce_synthetic
from streamproc.pipeline.batchscore import ScoreJob, run

pytestmark = pytest.mark.kafka


def _config_file(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _scores(records) -> dict[str, tuple[float, str]]:
    return {r.value["event_id"]: (r.value["score"], r.value["label"]) for r in records}


def _dead(records) -> dict[tuple[int, int], str]:
    return {(r.value["partition"], r.value["offset"]): r.value["reason"] for r in records}


def test_score_over_a_range_equals_the_live_pipeline(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg = pipeline_config_factory(partitions=2)
    producer = event_producer_factory(cfg.topics.input)
    report = produce_synthetic(producer, 3000, malformed=0.03, seed=5)
    n_bad = sum(report.malformed.values())
    live = processor_factory(cfg)
    live_preds = read_topic(cfg.topics.predictions, 3000 - n_bad, idle_s=60)
    live_dead = read_topic(cfg.topics.dlq, n_bad, idle_s=60)
    live.stop()
    assert len(live_preds) + len(live_dead) == 3000

    out = f"{cfg.topics.input}.rescored"
    job = ScoreJob(cfg, name=f"j-{uuid.uuid4().hex[:6]}", topic=cfg.topics.input,
                   out_topic=out, batch_size=256)  # fmt: skip
    summary = run(job)
    assert (summary.read, summary.predictions, summary.dead_letters) == (
        3000, 3000 - n_bad, n_bad)  # fmt: skip
    assert summary.accounted and summary.resumed == 0
    preds = read_topic(out, 3000, idle_s=10)
    dead = read_topic(f"{out}.dlq", 3000, idle_s=10)
    want, got = _scores(live_preds), _scores(preds)
    assert len(got) == len(preds) == len(want)  # each input one prediction
    assert got.keys() == want.keys()
    for eid, (score, label) in want.items():
        assert got[eid][0] == pytest.approx(score, abs=1e-6) and got[eid][1] == label
    assert _dead(dead) == _dead(live_dead)  # same inputs rejected, same reasons
    # Done: the same job again scores nothing.
    again = run(job)
    assert again.resumed == 3000 and again.read == 3000 and again.as_dict()["scored_now"] == 0
    assert len(read_topic(out, 6000, idle_s=5)) == len(preds)


def test_a_time_range_through_the_cli_with_two_workers(
    pipeline_config_factory, event_producer_factory, read_topic, tmp_path
):
    cfg = pipeline_config_factory(partitions=2)
    producer = event_producer_factory(cfg.topics.input)
    before, _ = synth.generate(500, seed=8)
    for r in before:
        producer.send(r, key=r["account_id"])
    producer.flush()
    cut_ms = int(time.time() * 1000) + 2
    while time.time() * 1000 <= cut_ms:  # the records after this have a later CreateTime
        pass
    after, _ = synth.generate(700, seed=9)
    after = [{**r, "event_id": f"later-{i}"} for i, r in enumerate(after)]
    for r in after:
        producer.send(r, key=r["account_id"])
    producer.flush()
    from datetime import UTC, datetime

    since = datetime.fromtimestamp(cut_ms / 1000, UTC).isoformat()
    out = f"{cfg.topics.input}.since"
    proc = subprocess.run(
        [sys.executable, "-m", "streamproc", "score", "-c",
         str(_config_file(cfg, tmp_path / "p.yaml")), "--from", since, "--to", "end",
         "--out-topic", out, "--workers", "2", "-o", "json", "--no-progress"],
        check=False, capture_output=True, timeout=300, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    summary = json.loads(proc.stdout)
    assert (summary["read"], summary["predictions"], summary["dead_letters"]) == (700, 700, 0)
    assert summary["workers"] == 2 and summary["accounted"]
    ids = [p.value["event_id"] for p in read_topic(out, 2000, idle_s=10)]
    assert sorted(ids) == sorted(r["event_id"] for r in after)


def test_kill_9_mid_job_then_resume_scores_each_input_once(
    pipeline_config_factory, event_producer_factory, read_topic, tmp_path
):
    cfg = pipeline_config_factory(partitions=2)
    producer = event_producer_factory(cfg.topics.input)
    n = 8000
    report = produce_synthetic(producer, n, malformed=0.02, seed=12)
    out = f"{cfg.topics.input}.backfill"
    job = f"resume-{uuid.uuid4().hex[:6]}"
    cmd = [sys.executable, "-m", "streamproc", "score", "-c",
           str(_config_file(cfg, tmp_path / "p.yaml")), "--out-topic", out, "--job", job,
           "--batch-size", "40", "--commit-interval", "0", "-o", "json",
           "--no-progress"]  # fmt: skip
    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    progress_topic = f"{out}.score-progress"
    deadline = time.monotonic() + 180
    committed: dict = {}
    while time.monotonic() < deadline and first.poll() is None:
        committed = read_progress(cfg.kafka, progress_topic, job)
        if sum(p.read for p in committed.values()) >= 400:
            break
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    at_kill = read_progress(cfg.kafka, progress_topic, job)
    assert 0 < sum(p.read for p in at_kill.values()) < n  # killed mid-way
    assert not all(p.done for p in at_kill.values())

    second = subprocess.run(cmd, check=False, capture_output=True, timeout=300,
                            env={**os.environ})  # fmt: skip
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    summary = json.loads(second.stdout)
    n_bad = sum(report.malformed.values())
    assert summary["read"] == n and summary["accounted"]
    assert summary["resumed_events"] == sum(p.read for p in at_kill.values())
    assert (summary["predictions"], summary["dead_letters"]) == (n - n_bad, n_bad)
    preds = read_topic(out, 2 * n, idle_s=10)
    dead = read_topic(f"{out}.dlq", 2 * n, idle_s=10)
    ids = [p.value["event_id"] for p in preds]
    assert len(ids) == len(set(ids)) == n - n_bad  # read_committed: exactly one each
    assert len(_dead(dead)) == len(dead) == n_bad


def _avro_file(path: Path, records: list[dict]) -> Path:
    from streamproc import schemas

    with path.open("wb") as f:
        fastavro.writer(f, schemas.parsed("Transaction"), records)
    return path


def _two_files(tmp_path: Path) -> tuple[list[Path], list[dict], list[dict]]:
    """a.avro (900 records) and b.avro (400, its 8th and 9th rejected: OUT_OF_RANGE and
    NAN_FEATURE)."""
    a, _ = synth.generate(900, seed=30)
    b, _ = synth.generate(400, seed=31)
    b = [{**r, "event_id": f"b-{i}"} for i, r in enumerate(b)]
    b[7] = {**b[7], "amount": -5.0}  # OUT_OF_RANGE
    b[8] = {**b[8], "amount": float("nan")}  # NAN_FEATURE
    return [_avro_file(tmp_path / "a.avro", a), _avro_file(tmp_path / "b.avro", b)], a, b


def test_avro_files_in_and_out_account_for_every_record_and_resume(
    pipeline_config_factory, tmp_path
):
    cfg = pipeline_config_factory(partitions=2)
    files, a, b = _two_files(tmp_path)
    out_dir = tmp_path / "out"
    job = ScoreJob(cfg, name="files", files=files, out_dir=out_dir, batch_size=128,
                   part_events=256, key_field="account_id", workers=2)  # fmt: skip
    summary = run(job)
    assert (summary.read, summary.predictions, summary.dead_letters) == (1300, 1298, 2)
    assert dict(summary.rejects) == {"OUT_OF_RANGE": 1, "NAN_FEATURE": 1}

    def read(kind: str) -> list[dict]:
        rows: list[dict] = []
        for p in sorted(out_dir.glob(f"{kind}-*.avro")):
            with p.open("rb") as f:
                rows.extend(fastavro.reader(f))
        return rows

    preds = read("predictions")
    assert sorted(p["event_id"] for p in preds) == sorted(
        [r["event_id"] for r in a] + [r["event_id"] for i, r in enumerate(b) if i not in (7, 8)]
    )
    keys = {r["event_id"]: r["account_id"] for r in a}
    assert all(p["key"] == keys[p["event_id"]] for p in preds if p["event_id"] in keys)
    assert {d["source_topic"] for d in read("deadletters")} == {str(files[1])}
    # A job interrupted after its first part of b.avro: the progress says so, and the rerun
    # rewrites from there, so the parts hold each record once.
    prog = out_dir / "_progress" / "files-00001.json"
    state = json.loads(prog.read_text())
    state.update(next_offset=256, parts=1, read=256, predictions=256, dead_letters=0,
                 rejects={})  # fmt: skip
    prog.write_text(json.dumps(state))
    again = run(job)
    assert again.resumed == 900 + 256 and again.read == 1300 and again.accounted
    assert len(read("predictions")) == 1298


def test_parquet_output_without_pyarrow_names_the_extra(
    pipeline_config_factory, tmp_path, monkeypatch
):
    cfg = pipeline_config_factory(partitions=1)
    a, _ = synth.generate(10, seed=1)
    job = ScoreJob(cfg, name="pq", files=[_avro_file(tmp_path / "a.avro", a)],
                   out_dir=tmp_path / "pq", out_format="parquet")  # fmt: skip
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    with pytest.raises(DependencyMissingError, match=r"pyarrow.*streamproc\[parquet\]"):
        run(job)
    assert not list((tmp_path / "pq").glob("*.parquet"))


def _score_cli(config: Path, files: list[Path], out_dir: Path, *args: str) -> dict:
    """``streamproc score --file ... --out-dir OUT_DIR ARGS`` as a user types it: its
    summary (it exits 0: every record accounted for)."""
    proc = subprocess.run(
        [sys.executable, "-m", "streamproc", "score", "-c", str(config),
         *[a for f in files for a in ("--file", str(f))], "--key-field", "account_id",
         "--out-dir", str(out_dir), "--part-events", "512", "-o", "json", "--no-progress",
         *args],
        check=False, capture_output=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["accounted"] and summary["read"] == 1300
    assert (summary["predictions"], summary["dead_letters"]) == (1298, 2)
    return summary


def _avro_rows(out_dir: Path, kind: str, codec: str = "deflate") -> list[dict]:
    """The records of ``kind``'s Avro part files, each file checked to use ``codec``."""
    rows: list[dict] = []
    parts = sorted(out_dir.glob(f"{kind}-*.avro"))
    assert parts
    for p in parts:
        with p.open("rb") as f:
            reader = fastavro.reader(f)
            assert reader.codec == codec and reader.metadata["avro.codec"] == codec, p
            rows.extend(reader)
    return rows


def _by_event(rows: list[dict]) -> dict[str, dict]:
    out = {r["event_id"]: r for r in rows}
    assert len(out) == len(rows)  # each input scored once
    return out


def _by_offset(rows: list[dict]) -> dict[tuple[str, int, int], dict]:
    return {(r["source_topic"], r["partition"], r["offset"]): r for r in rows}


@pytest.mark.requires_extra("pyarrow", "parquet")
def test_cli_parquet_output_holds_the_avro_output_s_predictions_and_dead_letters(
    pipeline_config_factory, tmp_path
):
    """`score --format parquet`: the same predictions (ids, scores, labels, keys, times, the
    features map) and dead letters as the Avro output, typed from the Avro schemas the same
    way in every part (a column of nulls is still a string; a map stays a map)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = pipeline_config_factory(partitions=2, outputs={"include_features": True})
    config = _config_file(cfg, tmp_path / "p.yaml")
    files, _, _ = _two_files(tmp_path)
    avro = _score_cli(config, files, tmp_path / "avro")
    parquet = _score_cli(config, files, tmp_path / "parquet", "--format", "parquet")
    assert parquet["dead_letters_by_reason"] == avro["dead_letters_by_reason"] == {
        "NAN_FEATURE": 1, "OUT_OF_RANGE": 1}  # fmt: skip
    assert not list((tmp_path / "parquet").glob("*.avro"))

    def table(kind: str) -> pa.Table:
        parts = sorted((tmp_path / "parquet").glob(f"{kind}-*.parquet"))
        assert parts
        tables = [pq.read_table(p) for p in parts]
        assert all(t.schema == tables[0].schema for t in tables)  # one schema for the kind
        return pa.concat_tables(tables)

    preds = table("predictions")
    parts = sorted((tmp_path / "parquet").glob("predictions-*.parquet"))
    assert len(parts) >= 3  # several parts
    # Parquet's usual snappy by default; --codec applies to Parquet too (deflate: GZIP).
    assert pq.ParquetFile(parts[0]).metadata.row_group(0).column(0).compression == "SNAPPY"
    _score_cli(config, files, tmp_path / "gz", "--format", "parquet", "--codec", "deflate")
    gz = sorted((tmp_path / "gz").glob("predictions-*.parquet"))[0]
    assert pq.ParquetFile(gz).metadata.row_group(0).column(0).compression == "GZIP"
    types = {f.name: f.type for f in preds.schema}
    assert types["key"] == pa.string() and types["score"] == pa.float64()
    assert types["event_time"] == pa.timestamp("ms", tz="UTC")
    features = types["features"]
    assert pa.types.is_map(features)
    assert (features.key_type, features.item_type) == (pa.string(), pa.float64())
    assert types["outlier_score"] == pa.float64()  # null in every row: still a number column
    want = _by_event(_avro_rows(tmp_path / "avro", "predictions"))
    got = _by_event(preds.to_pylist())
    assert got.keys() == want.keys() and len(got) == 1298
    for eid, p in got.items():
        w = want[eid]
        assert p["score"] == w["score"] and p["scores"] == pytest.approx(w["scores"])
        assert (p["label"], p["key"], p["model_version"], p["event_time"]) == (
            w["label"], w["key"], w["model_version"], w["event_time"])  # fmt: skip
        assert dict(p["features"]) == w["features"] and w["features"]

    dead = table("deadletters")
    assert {f.name: f.type for f in dead.schema}["value"] == pa.binary()
    want_dead = _by_offset(_avro_rows(tmp_path / "avro", "deadletters"))
    got_dead = _by_offset(dead.to_pylist())
    assert got_dead.keys() == want_dead.keys() == {(str(files[1]), 1, 7), (str(files[1]), 1, 8)}
    for k, d in got_dead.items():
        assert (d["reason"], d["reason_code"], d["detail"], d["value"]) == (
            want_dead[k]["reason"], want_dead[k]["reason_code"], want_dead[k]["detail"],
            want_dead[k]["value"])  # fmt: skip


def test_cli_codec_writes_its_codec_and_the_same_records(pipeline_config_factory, tmp_path):
    """`score --codec snappy|null`: every part file says (and uses) the codec asked for, and
    holds the records of the default (deflate) run."""
    cfg = pipeline_config_factory(partitions=2)
    config = _config_file(cfg, tmp_path / "p.yaml")
    files, _, _ = _two_files(tmp_path)
    _score_cli(config, files, tmp_path / "deflate")
    want = _by_event(_avro_rows(tmp_path / "deflate", "predictions", "deflate"))
    want_dead = _by_offset(_avro_rows(tmp_path / "deflate", "deadletters", "deflate"))
    sizes = {}
    for codec in ("snappy", "null"):
        _score_cli(config, files, tmp_path / codec, "--codec", codec)
        got = _by_event(_avro_rows(tmp_path / codec, "predictions", codec))
        assert got.keys() == want.keys()
        drop = ("processed_time", "latency_ms")  # when it was scored: differs between runs
        assert all({k: v for k, v in got[e].items() if k not in drop}
                   == {k: v for k, v in want[e].items() if k not in drop}
                   for e in got)  # fmt: skip
        got_dead = _by_offset(_avro_rows(tmp_path / codec, "deadletters", codec))
        assert {k: d["reason"] for k, d in got_dead.items()} == {
            k: d["reason"] for k, d in want_dead.items()}  # fmt: skip
        sizes[codec] = sum(p.stat().st_size for p in (tmp_path / codec).glob("predictions-*"))
    # Compressed: snappy's parts are smaller than the uncompressed ones.
    assert sizes["snappy"] < sizes["null"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--codec", "zstd", "error: --codec must be deflate, snappy or null, not 'zstd'"),
     ("--format", "csv", "error: --format must be avro or parquet, not 'csv'")],
)  # fmt: skip
def test_cli_a_bad_codec_or_format_is_one_line_naming_the_allowed(option, value, message):
    """Checked before anything else: no pipeline file, broker or registry is needed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    proc = subprocess.run(
        [sys.executable, "-m", "streamproc", "score", "--out-dir", "x", option, value],
        check=False, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == message and proc.stdout == ""


def test_score_with_insight_writes_the_live_outlier_scores_and_explains_beside_its_output(
    pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    cfg = pipeline_config_factory(partitions=2, insight={
        "outliers": {"enabled": True},
        "probing": {"enabled": True},
        "explanations": {"enabled": True, "share": 0.05, "samples": 64},
    })  # fmt: skip
    producer = event_producer_factory(cfg.topics.input)
    produce_synthetic(producer, 600, seed=9)
    live = processor_factory(cfg)
    live_preds = read_topic(cfg.topics.predictions, 600, idle_s=60)
    live.stop()
    want = {r.value["event_id"]: r.value["outlier_score"] for r in live_preds}
    assert len(want) == 600 and all(isinstance(v, float) for v in want.values())

    out = f"{cfg.topics.input}.rescored"
    summary = run(ScoreJob(cfg, name=f"j-{uuid.uuid4().hex[:6]}", topic=cfg.topics.input,
                           out_topic=out, batch_size=128))  # fmt: skip
    assert summary.predictions == 600
    got = {r.value["event_id"]: r.value["outlier_score"] for r in read_topic(out, 600, idle_s=10)}
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(v, abs=1e-6) for k, v in want.items())
    # Its explanations go beside its output, not onto the live explanations topic.
    explained = read_topic(f"{out}.explanations", 600, idle_s=5, committed=False)
    assert explained and {e.value["event_id"] for e in explained} <= got.keys()


def test_an_avro_file_scores_as_the_same_events_on_a_topic(
    pipeline_config_factory, event_producer_factory, read_topic, tmp_path
):
    """The block reader (compiled walk, no record objects) against the topic path: the same
    predictions, and a malformed record of the file is a dead letter with its reason."""
    cfg = pipeline_config_factory(partitions=1)
    records, _ = synth.generate(1500, seed=40)
    records[33] = {**records[33], "amount": float("nan")}  # NAN_FEATURE, in the file and topic
    producer = event_producer_factory(cfg.topics.input)
    for r in records:
        producer.send(r, key=r["account_id"])
    producer.flush()
    out = f"{cfg.topics.input}.rescored"
    topic_job = ScoreJob(cfg, name=f"t-{uuid.uuid4().hex[:6]}", topic=cfg.topics.input,
                         out_topic=out, batch_size=256)  # fmt: skip
    assert run(topic_job).predictions == 1499
    from_topic = {r.value["event_id"]: r.value for r in read_topic(out, 1499, idle_s=10)}

    path = tmp_path / "in.avro"
    with path.open("wb") as f:  # small blocks, snappy: batches span blocks
        fastavro.writer(f, schemas_parsed(), records, codec="snappy", sync_interval=5000)
    # A second file: the first records, then a block whose second record is not Avro.
    bad = _avro_file(tmp_path / "bad.avro", records[:3])  # one block, codec null
    from streamproc.codecs import container

    with bad.open("rb") as f:
        sync = container.read_header(f).sync
    broken = _datums(records[3:4]) + b"\x0b"  # event_id: a string of length -6
    bad.write_bytes(bad.read_bytes() + _zz(2) + _zz(len(broken)) + broken + sync)
    out_dir = tmp_path / "out"
    job = ScoreJob(cfg, name="f", files=[path, bad], out_dir=out_dir, batch_size=256,
                   key_field="account_id", out_codec="snappy")  # fmt: skip
    summary = run(job)
    assert (summary.read, summary.predictions, summary.dead_letters) == (1505, 1499 + 4, 2)
    assert dict(summary.rejects) == {"NAN_FEATURE": 1, "CORRUPT": 1}
    preds = []
    for p in sorted(out_dir.glob("predictions-p00000-*.avro")):
        with p.open("rb") as f:
            preds.extend(fastavro.reader(f))
    assert len(preds) == 1499
    for p in preds:
        want = from_topic[p["event_id"]]
        assert p["score"] == pytest.approx(want["score"], abs=1e-6)
        assert (p["label"], p["key"], p["event_time"]) == (
            want["label"], want["key"], want["event_time"])  # fmt: skip
    dead = []
    for p in sorted(out_dir.glob("deadletters-*.avro")):
        with p.open("rb") as f:
            dead.extend(fastavro.reader(f))
    by = {(d["source_topic"], d["offset"]): d for d in dead}
    assert by[(str(path), 33)]["reason"] == "NAN_FEATURE"
    corrupt = by[(str(bad), 4)]
    assert corrupt["reason"] == "CORRUPT" and "negative length" in corrupt["detail"]


def schemas_parsed():
    from streamproc import schemas

    return schemas.parsed("Transaction")


def _datums(records: list[dict]) -> bytes:
    import io

    out = io.BytesIO()
    for r in records:
        fastavro.schemaless_writer(out, schemas_parsed(), r)
    return out.getvalue()


def _zz(n: int) -> bytes:
    z, out = (n << 1) ^ (n >> 63), bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    return bytes([*out, z])
