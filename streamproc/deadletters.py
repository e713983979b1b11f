"""Dead letters for an operator: selection, summaries, safe rendering and replay progress.

No Kafka here: :mod:`streamproc.kafka.dlq` reads the DLQ topic into :class:`DeadLetter`
values and writes replays; this module decides what to show and what to replay.

Replay progress is kept per DLQ partition *and per reason* (:class:`ReplayTracker`), as the
metadata of the partition's offset in the replay consumer group, committed in the same
transaction as the replayed records. For each reason, every dead letter below its progress
offset is settled: replayed, or passed over for good. So a replay with ``--reason A`` leaves
the dead letters of every other reason as they were, for a later replay. Within a reason the
order is kept: a dead letter that is held back (it would fail again, or it is later than
``--until``) holds back every later one of its reason in that partition, so the next replay
starts at it and nothing is replayed twice. ``--since`` passes over the earlier dead letters
of the selected reasons for good (they are settled without being sent);
``--skip-failing`` does the same with those that would fail again.

>>> sel = Selection.build(reasons=["out_of_range"], since="2024-01-01T00:00:00Z")
>>> sorted(sel.reasons), sel.since_ms
(['OUT_OF_RANGE'], 1704067200000)
>>> safe_bytes(b"\\x00\\x01ab", limit=3)
'hex:000161… (4 bytes)'
>>> safe_text("ok\\x1b[31m")
'ok\\\\x1b[31m'
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from streamproc.errors import ConfigError
from streamproc.types import ReasonCode

REPLAY_HEADER = "streamproc-replay-of"
REASONS = tuple(r.name for r in ReasonCode if r is not ReasonCode.OK)
BUCKETS = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
MAX_BUCKETS = 60  # the automatic bucket is the smallest that gives at most this many


# -- the record ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One DeadLetter record and where it lies on the DLQ topic."""

    topic: str  # the DLQ topic
    partition: int
    offset: int
    reason: str
    reason_code: int
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    schema_id: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    processor: str
    time_ms: int

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], topic: str, partition: int, offset: int) -> Self:
        t = rec["time"]
        time_ms = int(t.timestamp() * 1000) if hasattr(t, "timestamp") else int(t)
        return cls(
            topic=topic, partition=partition, offset=offset, reason=str(rec["reason"]),
            reason_code=int(rec["reason_code"]), detail=str(rec["detail"]),
            source_topic=str(rec["source_topic"]), source_partition=int(rec["partition"]),
            source_offset=int(rec["offset"]), schema_id=rec.get("schema_id"),
            key=rec.get("key"), value=rec.get("value"),
            headers=tuple((str(h["key"]), h.get("value")) for h in rec.get("headers") or ()),
            processor=str(rec.get("processor", "")), time_ms=time_ms,
        )  # fmt: skip

    @property
    def position(self) -> str:
        """``<dlq topic>/<partition>/<offset>``: what the replay header names."""
        return f"{self.topic}/{self.partition}/{self.offset}"


def replay_headers(dl: DeadLetter) -> list[tuple[str, str | bytes | None]]:
    """The original headers, then one naming the dead letter the record replays."""
    return [*dl.headers, (REPLAY_HEADER, dl.position.encode())]


# -- selection ------------------------------------------------------------------------------


def parse_time(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time (no zone: UTC).

    >>> parse_time("2024-01-01T00:01:00"), parse_time("2024-01-01T01:01:00+01:00")
    (1704067260000, 1704067260000)
    """
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"not an ISO 8601 time: {text!r} (e.g. 2024-05-01T12:00:00Z)") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command is about: reasons (empty: all) and a time window on
    the dead letter's ``time`` (``since`` inclusive, ``until`` exclusive)."""

    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    @classmethod
    def build(
        cls,
        reasons: Iterable[str] | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> Selection:
        names = frozenset(r.strip().upper() for r in reasons or () if r.strip())
        unknown = sorted(names - set(REASONS))
        if unknown:
            raise ConfigError(f"unknown reason(s) {unknown}; choose from {list(REASONS)}")
        s = parse_time(since) if since else None
        u = parse_time(until) if until else None
        if s is not None and u is not None and u <= s:
            raise ConfigError(f"--until ({until}) must be later than --since ({since})")
        return cls(names, s, u)

    def wants(self, reason: str) -> bool:
        return not self.reasons or reason in self.reasons

    def matches(self, dl: DeadLetter) -> bool:
        return (
            self.wants(dl.reason)
            and (self.since_ms is None or dl.time_ms >= self.since_ms)
            and (self.until_ms is None or dl.time_ms < self.until_ms)
        )


# -- safe rendering ------------------------------------------------------------------------


def safe_text(text: str, limit: int = 200) -> str:
    """``text`` with every non-printable character (controls, escapes, bidi overrides,
    line breaks) written as a Python escape, cut to ``limit`` characters."""
    out = []
    for ch in text[:limit]:
        if ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    s = "".join(out)
    return s + f"… ({len(text)} chars)" if len(text) > limit else s


def safe_bytes(data: bytes | None, limit: int = 32) -> str | None:
    """Bytes for a terminal: ``hex:`` of the first ``limit`` bytes, and the length when cut."""
    if data is None:
        return None
    shown = data[:limit].hex()
    return f"hex:{shown}… ({len(data)} bytes)" if len(data) > limit else f"hex:{shown}"


def safe_key(data: bytes | None, limit: int = 64) -> str | None:
    """A key as text when it is printable UTF-8 (account ids usually are), else hex."""
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return safe_bytes(data, limit)
    if not text.isprintable():
        return safe_bytes(data, limit)
    return "text:" + safe_text(text, limit)


def render(dl: DeadLetter, value_limit: int = 32) -> dict[str, Any]:
    """A dead letter as plain, terminal-safe values (every string from the record escaped)."""
    return {
        "dlq": safe_text(dl.position),
        "time": iso(dl.time_ms),
        "reason": safe_text(dl.reason, 40),
        "detail": safe_text(dl.detail),
        "source": safe_text(f"{dl.source_topic}/{dl.source_partition}/{dl.source_offset}"),
        "schema_id": dl.schema_id,
        "processor": safe_text(dl.processor, 80),
        "key": safe_key(dl.key),
        "value": safe_bytes(dl.value, value_limit),
        "headers": [[safe_text(k, 80), safe_key(v, 80)] for k, v in dl.headers],
    }


# -- summaries -----------------------------------------------------------------------------


def choose_bucket(first_ms: int, last_ms: int) -> str:
    """The smallest bucket that spans ``first..last`` in at most :data:`MAX_BUCKETS`."""
    for name, width in BUCKETS.items():
        if last_ms // width - first_ms // width < MAX_BUCKETS:
            return name
    return "day"


@dataclass
class Summary:
    """Counts of the selected dead letters, and the first ``sample_size`` of them."""

    sample_size: int = 5
    total: int = 0
    scanned: int = 0  # every dead letter read, selected or not
    unreadable: int = 0  # DLQ records that are not DeadLetter records
    by_reason: Counter[str] = field(default_factory=Counter)
    by_schema: Counter[str] = field(default_factory=Counter)  # "none" where no id was read
    by_source: Counter[str] = field(default_factory=Counter)
    times: Counter[int] = field(default_factory=Counter)  # per minute, bucketed on output
    first_ms: int | None = None
    last_ms: int | None = None
    sample: list[DeadLetter] = field(default_factory=list)

    def add(self, dl: DeadLetter) -> None:
        self.total += 1
        self.by_reason[dl.reason] += 1
        self.by_schema["none" if dl.schema_id is None else str(dl.schema_id)] += 1
        self.by_source[dl.source_topic] += 1
        self.times[dl.time_ms // BUCKETS["minute"] * BUCKETS["minute"]] += 1
        self.first_ms = dl.time_ms if self.first_ms is None else min(self.first_ms, dl.time_ms)
        self.last_ms = dl.time_ms if self.last_ms is None else max(self.last_ms, dl.time_ms)
        if len(self.sample) < self.sample_size:
            self.sample.append(dl)

    def buckets(self, bucket: str | None = None) -> tuple[str, list[tuple[str, int]]]:
        """(bucket name, [(bucket start as ISO time, count)]) oldest first."""
        if self.first_ms is None or self.last_ms is None:
            return bucket or "minute", []
        name = bucket or choose_bucket(self.first_ms, self.last_ms)
        if name not in BUCKETS:
            raise ConfigError(f"unknown bucket {name!r}; choose from {list(BUCKETS)}")
        width = BUCKETS[name]
        out: Counter[int] = Counter()
        for t, n in self.times.items():
            out[t // width * width] += n
        return name, [(iso(t), out[t]) for t in sorted(out)]

    def as_dict(self, bucket: str | None = None) -> dict[str, Any]:
        name, rows = self.buckets(bucket)
        return {
            "total": self.total,
            "scanned": self.scanned,
            "unreadable": self.unreadable,
            "first": None if self.first_ms is None else iso(self.first_ms),
            "last": None if self.last_ms is None else iso(self.last_ms),
            "by_reason": {safe_text(k, 40): n for k, n in self.by_reason.most_common()},
            "by_schema_id": dict(self.by_schema.most_common()),
            "by_source_topic": {safe_text(k, 80): n for k, n in self.by_source.most_common()},
            "bucket": name,
            "by_time": [{"start": t, "count": n} for t, n in rows],
            "sample": [render(d) for d in self.sample],
        }


def format_summary(d: Mapping[str, Any], topic: str) -> str:
    """:meth:`Summary.as_dict` as lines for a terminal (its strings are already safe)."""
    lines = [f"{d['total']} dead letters selected of {d['scanned']} on {safe_text(topic)}"
             + (f" ({d['unreadable']} unreadable records)" if d["unreadable"] else "")]  # fmt: skip
    if d["first"]:
        lines.append(f"from {d['first']} to {d['last']}")
    for title, key in (("by reason", "by_reason"), ("by schema id", "by_schema_id"),
                       ("by source topic", "by_source_topic")):  # fmt: skip
        if d[key]:
            lines.append(f"\n{title}:")
            lines += [f"  {k:<24} {n:>10,}" for k, n in d[key].items()]
    if d["by_time"]:
        lines.append(f"\nper {d['bucket']} (UTC):")
        lines += [f"  {r['start']:<30} {r['count']:>10,}" for r in d["by_time"]]
    if d["sample"]:
        lines.append(f"\nsample ({len(d['sample'])}):")
        for s in d["sample"]:
            lines.append(f"  {s['dlq']}  {s['time']}  {s['reason']}  schema={s['schema_id']}")
            lines.append(f"    detail:  {s['detail']}")
            lines.append(f"    source:  {s['source']}  processor: {s['processor']}")
            lines.append(f"    key:     {s['key']}")
            lines.append(f"    value:   {s['value']}")
            if s["headers"]:
                lines.append("    headers: " + ", ".join(f"{k}={v}" for k, v in s["headers"]))
    return "\n".join(lines)


# -- replay progress -----------------------------------------------------------------------


class Outcome(enum.StrEnum):
    """What a replay did with one dead letter."""

    REPLAYED = "replayed"
    FORCED = "forced"  # would fail again; sent anyway (--force)
    IGNORED = "ignored"  # another reason, or settled by an earlier replay: untouched
    PASSED_SINCE = "passed-since"  # before --since: settled without being sent
    PASSED_FOREIGN = "passed-foreign"  # not from the input topic (a label): settled, not sent
    PASSED_FAILING = "passed-failing"  # would fail again; settled, not sent (--skip-failing)
    HELD_FAILING = "held-failing"  # would fail again: held back, the next replay retries it
    HELD_UNTIL = "held-until"  # at or after --until: left for a later replay
    HELD_BEHIND = "held-behind"  # an earlier dead letter of its reason is held back

    @property
    def sends(self) -> bool:
        return self in (Outcome.REPLAYED, Outcome.FORCED)


ANY = "*"  # the progress of every reason without an entry of its own


@dataclass
class ReplayTracker:
    """Replay progress of one DLQ partition, per reason (see the module docs).

    ``progress[reason]`` is the offset below which every dead letter of that reason is
    settled; :data:`ANY` stands for the reasons without an entry. Stored as the metadata
    of the partition's committed offset (JSON, a few hundred bytes at most).

    >>> t = ReplayTracker.restore(0, None, None, Selection.build(["OUT_OF_RANGE"]), "in")
    >>> t.start
    0
    """

    partition: int
    progress: dict[str, int]
    selection: Selection
    input_topic: str
    committed: int  # the committed offset: how far replays have read this partition
    force: bool = False
    skip_failing: bool = False
    held: set[str] = field(default_factory=set)  # reasons held back in this run
    scanned_to: int = -1  # the next offset this run has not looked at

    @classmethod
    def restore(
        cls,
        partition: int,
        offset: int | None,
        metadata: str | None,
        selection: Selection,
        input_topic: str,
        *,
        low: int = 0,
        force: bool = False,
        skip_failing: bool = False,
    ) -> ReplayTracker:
        """From a committed offset and its metadata. Without metadata (a group reset by
        hand), every reason is settled up to the offset; without either, up to ``low``."""
        base = max(low, offset if offset is not None and offset >= 0 else low)
        progress: dict[str, int] = {ANY: base}
        if metadata:
            try:
                raw = json.loads(metadata)
                progress = {str(k): int(v) for k, v in raw.items()}
            except (ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    f"replay progress of partition {partition} is not readable: {metadata!r}"
                ) from exc
            progress.setdefault(ANY, base)
        t = cls(partition, progress, selection, input_topic, max(base, low), force, skip_failing)
        t.scanned_to = t.start
        return t

    def of(self, reason: str) -> int:
        return self.progress.get(reason, self.progress[ANY])

    @property
    def start(self) -> int:
        """Where this run reads from: the lowest progress of the selected reasons."""
        if self.selection.reasons:
            return min(self.of(r) for r in self.selection.reasons)
        return min(self.progress.values())

    def step(
        self, dl: DeadLetter, check: Callable[[DeadLetter], str | None]
    ) -> tuple[Outcome, str | None]:
        """Decide for the next dead letter of the partition (in offset order). ``check``
        re-validates it: ``None`` when it would now be accepted, else why not (returned
        with the outcome)."""
        self.scanned_to = dl.offset + 1
        r = dl.reason
        if not self.selection.wants(r) or dl.offset < self.of(r):
            return Outcome.IGNORED, None
        if r in self.held:
            return Outcome.HELD_BEHIND, None
        sel = self.selection
        why = None
        if sel.until_ms is not None and dl.time_ms >= sel.until_ms:
            return self._hold(dl, Outcome.HELD_UNTIL), None
        if dl.source_topic != self.input_topic:
            outcome = Outcome.PASSED_FOREIGN
        elif sel.since_ms is not None and dl.time_ms < sel.since_ms:
            outcome = Outcome.PASSED_SINCE
        elif (why := check(dl)) is None:
            outcome = Outcome.REPLAYED
        elif self.force:
            outcome = Outcome.FORCED
        elif self.skip_failing:
            outcome = Outcome.PASSED_FAILING
        else:
            return self._hold(dl, Outcome.HELD_FAILING), why
        self.progress[r] = dl.offset + 1
        return outcome, why

    def _hold(self, dl: DeadLetter, outcome: Outcome) -> Outcome:
        # The reason's own entry, so that moving ANY later does not settle it: every
        # dead letter of the reason before this one is settled (none was held).
        self.progress[dl.reason] = dl.offset
        self.held.add(dl.reason)
        return outcome

    def finish(self, end: int) -> None:
        """The partition was read to ``end``: the selected reasons not held are settled
        up to it (no dead letter of theirs is left unseen before it)."""
        self.scanned_to = max(self.scanned_to, end)

    def commit_point(self) -> tuple[int, str]:
        """(offset, metadata) to commit for what this run has looked at so far."""
        p = dict(self.progress)
        to = self.scanned_to
        if self.selection.reasons:
            for r in self.selection.reasons - self.held:
                p[r] = max(p.get(r, p[ANY]), to)
        else:
            # Every reason was looked at: the ones without an entry, and those not held,
            # are settled up to here.
            p[ANY] = max(p[ANY], to)
            for r in list(p):
                if r != ANY and r not in self.held:
                    p[r] = max(p[r], to)
        # An entry equal to ANY says nothing: drop it, so the metadata stays small.
        p = {r: o for r, o in p.items() if r == ANY or o != p[ANY]}
        return max(self.committed, to), json.dumps(p, separators=(",", ":"), sort_keys=True)


@dataclass
class ReplayReport:
    """What a replay did (or, dry, would do), by outcome and reason, with examples."""

    dry_run: bool
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (outcome, reason)
    examples: list[dict[str, Any]] = field(default_factory=list)
    max_examples: int = 20
    transactions: int = 0

    def add(self, dl: DeadLetter, outcome: Outcome, why: str | None = None) -> None:
        self.counts[(outcome.value, dl.reason)] += 1
        quiet = (Outcome.IGNORED, Outcome.HELD_BEHIND)  # counted; their first one is shown
        shown = outcome not in quiet and (self.dry_run or not outcome.sends)
        if shown and len(self.examples) < self.max_examples:
            ex = {"outcome": outcome.value, **render(dl, 16)}
            if why:
                ex["now"] = safe_text(why)
            self.examples.append(ex)

    def total(self, *outcomes: Outcome) -> int:
        names = {o.value for o in outcomes}
        return sum(n for (o, _), n in self.counts.items() if o in names)

    @property
    def sent(self) -> int:
        return self.total(Outcome.REPLAYED, Outcome.FORCED)

    def as_dict(self) -> dict[str, Any]:
        by: dict[str, dict[str, int]] = {}
        for (o, r), n in sorted(self.counts.items()):
            by.setdefault(o, {})[safe_text(r, 40)] = n
        return {
            "dry_run": self.dry_run,
            ("would_send" if self.dry_run else "sent"): self.sent,
            "held": self.total(Outcome.HELD_FAILING, Outcome.HELD_UNTIL, Outcome.HELD_BEHIND),
            "passed": self.total(
                Outcome.PASSED_SINCE, Outcome.PASSED_FOREIGN, Outcome.PASSED_FAILING
            ),
            "by_outcome": {o: r for o, r in by.items() if o != Outcome.IGNORED.value},
            "ignored": self.total(Outcome.IGNORED),
            "transactions": self.transactions,
            "examples": self.examples,
        }
