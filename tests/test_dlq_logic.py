"""The pure dead-letter logic: selection, safe rendering, summaries and replay progress."""

from __future__ import annotations

import json

import pytest

from streamproc.deadletters import (
    ANY,
    REPLAY_HEADER,
    DeadLetter,
    Outcome,
    ReplayReport,
    ReplayTracker,
    Selection,
    Summary,
    choose_bucket,
    format_summary,
    parse_time,
    render,
    replay_headers,
    safe_bytes,
    safe_key,
    safe_text,
)
from streamproc.errors import ConfigError

T0 = parse_time("2024-05-01T12:00:00Z")
MIN = 60_000


def dl(offset: int, reason: str = "OUT_OF_RANGE", t: int = T0, partition: int = 0,
       source: str = "in", value: bytes | None = b"\x00\x00\x00\x00\x01abc",
       key: bytes | None = b"acct-1", detail: str = "amount < 0") -> DeadLetter:  # fmt: skip
    return DeadLetter("in.dlq", partition, offset, reason, 8, detail, source, 0, offset, 1, key,
                      value, (("trace", b"x"),), "proc-a", t)  # fmt: skip


def ok(_: DeadLetter) -> str | None:
    return None


def fails(_: DeadLetter) -> str | None:
    return "OUT_OF_RANGE: amount -3 < 0"


# -- selection -----------------------------------------------------------------------------


def test_parse_time_zones_and_errors():
    assert parse_time("2024-05-01T12:00:00") == T0  # no zone: UTC
    assert parse_time("2024-05-01T14:00:00+02:00") == T0
    assert parse_time("2024-05-01T12:00:00z") == T0
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_time("yesterday")


def test_selection_reasons_and_window():
    sel = Selection.build(["out_of_range", " BAD_MAGIC "], since="2024-05-01T12:00:00Z",
                          until="2024-05-01T12:10:00Z")  # fmt: skip
    assert sel.reasons == {"OUT_OF_RANGE", "BAD_MAGIC"}
    assert sel.matches(dl(0, t=T0))  # since is inclusive
    assert not sel.matches(dl(0, t=T0 - 1))
    assert sel.matches(dl(0, t=T0 + 10 * MIN - 1))
    assert not sel.matches(dl(0, t=T0 + 10 * MIN))  # until is exclusive
    assert not sel.matches(dl(0, reason="TRUNCATED"))
    assert Selection.build().matches(dl(0, reason="TRUNCATED"))  # no filter: everything
    with pytest.raises(ConfigError, match="unknown reason"):
        Selection.build(["NOPE"])
    with pytest.raises(ConfigError, match="later than"):
        Selection.build(since="2024-05-02", until="2024-05-01")


# -- safe rendering ------------------------------------------------------------------------


def test_safe_text_escapes_every_control_character():
    evil = "a\x1b[2J\x07\r\nb\u202eevil\x00\x7f\u2028"
    out = safe_text(evil)
    assert all(c.isprintable() for c in out)
    assert out == "a\\x1b[2J\\x07\\x0d\\x0ab\\u202eevil\\x00\\x7f\\u2028"
    assert safe_text("x" * 10, limit=4) == "xxxx… (10 chars)"


def test_safe_bytes_is_truncated_hex():
    assert safe_bytes(None) is None
    assert safe_bytes(b"\x00\xff") == "hex:00ff"
    assert safe_bytes(bytes(range(100)), limit=4) == "hex:00010203… (100 bytes)"


def test_safe_key_shows_printable_text_else_hex():
    assert safe_key(b"acct-42") == "text:acct-42"
    assert safe_key(b"\x1b[31mred") == "hex:1b5b33316d726564"
    assert safe_key(b"\xff\xfe") == "hex:fffe"  # not UTF-8
    assert safe_key(None) is None


def test_render_has_no_raw_bytes_or_control_characters():
    bad = dl(3, key=b"\x1b]0;pwned\x07", value=b"\x1b[2J" * 50, detail="bad\nline\x1b[0m")
    r = render(bad)
    text = json.dumps(r, ensure_ascii=False)
    assert all(c.isprintable() for c in text)
    assert r["value"].startswith("hex:1b5b324a") and r["value"].endswith("(200 bytes)")
    assert r["detail"] == "bad\\x0aline\\x1b[0m"
    assert r["key"].startswith("hex:")
    assert r["dlq"] == "in.dlq/0/3" and r["source"] == "in/0/3"


# -- summaries -----------------------------------------------------------------------------


def test_choose_bucket():
    assert choose_bucket(T0, T0 + 59 * MIN) == "minute"
    assert choose_bucket(T0, T0 + 60 * MIN) == "hour"
    assert choose_bucket(T0, T0 + 59 * 60 * MIN) == "hour"
    assert choose_bucket(T0, T0 + 60 * 60 * MIN) == "day"


def test_summary_counts_by_reason_schema_and_time():
    s = Summary(sample_size=2)
    rows = [dl(0), dl(1, "BAD_MAGIC", T0 + 30_000), dl(2, t=T0 + MIN), dl(3, t=T0 + 2 * MIN)]
    rows.append(DeadLetter("in.dlq", 1, 0, "BAD_MAGIC", 1, "x", "in", 1, 0, None, None, None, (),
                           "p", T0 + 2 * MIN + 5))  # fmt: skip
    for r in rows:
        s.add(r)
    d = s.as_dict()
    assert d["total"] == 5
    assert d["by_reason"] == {"OUT_OF_RANGE": 3, "BAD_MAGIC": 2}
    assert d["by_schema_id"] == {"1": 4, "none": 1}
    assert d["bucket"] == "minute"
    assert [(b["start"], b["count"]) for b in d["by_time"]] == [
        ("2024-05-01T12:00:00.000+00:00", 2),
        ("2024-05-01T12:01:00.000+00:00", 1),
        ("2024-05-01T12:02:00.000+00:00", 2),
    ]
    assert s.as_dict("hour")["by_time"] == [{"start": "2024-05-01T12:00:00.000+00:00", "count": 5}]
    assert len(d["sample"]) == 2
    text = format_summary(d, "in.dlq")
    assert "OUT_OF_RANGE" in text and "per minute" in text
    assert all(c.isprintable() or c == "\n" for c in text)
    with pytest.raises(ConfigError):
        s.as_dict("week")


# -- replay progress -----------------------------------------------------------------------


def run(tracker: ReplayTracker, rows: list[DeadLetter], check=ok) -> list[Outcome]:
    out = [tracker.step(r, check)[0] for r in rows]
    tracker.finish(rows[-1].offset + 1 if rows else tracker.scanned_to)
    return out


def restart(tracker: ReplayTracker, selection: Selection, **kw) -> ReplayTracker:
    off, meta = tracker.commit_point()
    return ReplayTracker.restore(tracker.partition, off, meta, selection, "in", **kw)


def test_a_second_replay_of_the_same_selection_sends_nothing():
    rows = [dl(i) for i in range(5)]
    sel = Selection.build(["OUT_OF_RANGE"])
    t = ReplayTracker.restore(0, None, None, sel, "in")
    assert run(t, rows) == [Outcome.REPLAYED] * 5
    t2 = restart(t, sel)
    assert t2.start == 5
    assert all(o is Outcome.IGNORED for o in run(t2, rows))


def test_a_replay_of_one_reason_leaves_the_others_for_later():
    rows = [dl(0, "BAD_MAGIC"), dl(1), dl(2, "BAD_MAGIC"), dl(3)]
    t = ReplayTracker.restore(0, None, None, Selection.build(["OUT_OF_RANGE"]), "in")
    assert run(t, rows) == [Outcome.IGNORED, Outcome.REPLAYED, Outcome.IGNORED, Outcome.REPLAYED]
    off, meta = t.commit_point()
    assert off == 4 and json.loads(meta) == {ANY: 0, "OUT_OF_RANGE": 4}
    t2 = restart(t, Selection.build())  # now everything: only the BAD_MAGIC ones are left
    assert t2.start == 0
    assert run(t2, rows) == [Outcome.REPLAYED, Outcome.IGNORED, Outcome.REPLAYED, Outcome.IGNORED]
    assert json.loads(t2.commit_point()[1]) == {ANY: 4}  # compacted: all settled to 4
    t3 = restart(t2, Selection.build())
    assert t3.start == 4 and run(t3, rows) == [Outcome.IGNORED] * 4


def test_a_failing_dead_letter_holds_back_the_later_ones_of_its_reason():
    rows = [dl(0), dl(1, "BAD_MAGIC"), dl(2), dl(3)]
    calls = iter([None, None, "still bad"])
    t = ReplayTracker.restore(0, None, None, Selection.build(), "in")
    outs = [t.step(r, lambda _: next(calls))[0] for r in rows]
    t.finish(4)
    assert outs == [Outcome.REPLAYED, Outcome.REPLAYED, Outcome.HELD_FAILING, Outcome.HELD_BEHIND]
    off, meta = t.commit_point()
    assert off == 4 and json.loads(meta) == {ANY: 4, "OUT_OF_RANGE": 2}
    t2 = restart(t, Selection.build())  # after the fix: starts at the held one
    assert t2.start == 2
    assert run(t2, rows) == [Outcome.IGNORED, Outcome.IGNORED, Outcome.REPLAYED, Outcome.REPLAYED]
    assert json.loads(t2.commit_point()[1]) == {ANY: 4}


def test_force_and_skip_failing_settle_the_failing_ones():
    rows = [dl(0), dl(1)]
    forced = ReplayTracker.restore(0, None, None, Selection.build(), "in", force=True)
    assert run(forced, rows, fails) == [Outcome.FORCED] * 2
    skipped = ReplayTracker.restore(0, None, None, Selection.build(), "in", skip_failing=True)
    assert run(skipped, rows, fails) == [Outcome.PASSED_FAILING] * 2
    assert run(restart(skipped, Selection.build()), rows) == [Outcome.IGNORED] * 2


def test_since_passes_over_earlier_ones_and_until_leaves_later_ones():
    rows = [dl(0, t=T0 - MIN), dl(1, t=T0), dl(2, t=T0 + MIN), dl(3, t=T0 + 2 * MIN)]
    sel = Selection(frozenset(), since_ms=T0, until_ms=T0 + MIN)
    t = ReplayTracker.restore(0, None, None, sel, "in")
    assert run(t, rows) == [Outcome.PASSED_SINCE, Outcome.REPLAYED, Outcome.HELD_UNTIL,
                            Outcome.HELD_BEHIND]  # fmt: skip
    t2 = restart(t, Selection.build())
    assert run(t2, rows) == [Outcome.IGNORED, Outcome.IGNORED, Outcome.REPLAYED, Outcome.REPLAYED]


def test_dead_letters_of_another_topic_are_passed_over():
    t = ReplayTracker.restore(0, None, None, Selection.build(), "in")
    assert run(t, [dl(0, source="labels")], ok) == [Outcome.PASSED_FOREIGN]


def test_restore_from_a_hand_reset_group_and_bad_metadata():
    t = ReplayTracker.restore(0, 7, None, Selection.build(["OUT_OF_RANGE"]), "in")
    assert t.start == 7 and t.of("BAD_MAGIC") == 7
    assert ReplayTracker.restore(0, None, None, Selection.build(), "in", low=3).start == 3
    with pytest.raises(ConfigError, match="not readable"):
        ReplayTracker.restore(0, 7, "{nope", Selection.build(), "in")


def test_replay_headers_keep_the_originals_and_name_the_dead_letter():
    assert replay_headers(dl(9)) == [("trace", b"x"), (REPLAY_HEADER, b"in.dlq/0/9")]


def test_report_counts_and_examples():
    r = ReplayReport(dry_run=True)
    r.add(dl(0), Outcome.REPLAYED)
    r.add(dl(1), Outcome.HELD_FAILING, "OUT_OF_RANGE: still \x1b bad")
    r.add(dl(2, "BAD_MAGIC"), Outcome.IGNORED)
    d = r.as_dict()
    assert d["would_send"] == 1 and d["held"] == 1 and d["ignored"] == 1
    assert d["by_outcome"] == {"held-failing": {"OUT_OF_RANGE": 1}, "replayed": {"OUT_OF_RANGE": 1}}
    assert [e["outcome"] for e in d["examples"]] == ["replayed", "held-failing"]
    assert d["examples"][1]["now"] == "OUT_OF_RANGE: still \\x1b bad"
