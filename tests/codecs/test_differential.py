"""The compiled decoder against the fastavro reference, on generated schemas and records."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.codecs.decoder import BatchDecoder
from streamproc.codecs.source import DictSchemaSource
from streamproc.types import DecodedBatch
from streamproc.types import ReasonCode as R
from tests.codecs.builders import payload
from tests.codecs.strategies import Case, cases, records

SID = 7
MALFORMED = {R.TRUNCATED, R.CORRUPT, R.TRAILING_BYTES}


def fast(n: int) -> settings:
    """Example counts chosen to keep the whole file to a few seconds; no deadline because
    the first example may load the numba kernels."""
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def verdict_class(code: int) -> str:
    c = R(code)
    return "MALFORMED" if c in MALFORMED else c.name


def decoders(case: Case) -> tuple[BatchDecoder, BatchDecoder]:
    src = DictSchemaSource({SID: case.writer})
    ref = BatchDecoder(case.spec, case.reader, src, compiled=False)
    comp = BatchDecoder(case.spec, case.reader, src, compiled=True)
    return ref, comp


def assert_same_rows(ref: DecodedBatch, comp: DecodedBatch, rows: Any) -> None:
    rows = np.asarray(rows, dtype=np.int64)
    assert ref.errors[rows].tolist() == comp.errors[rows].tolist(), (
        [ref.details[i] for i in rows], [comp.details[i] for i in rows])  # fmt: skip
    ok = rows[ref.errors[rows] == 0]
    np.testing.assert_array_equal(ref.features[ok], comp.features[ok])
    assert [ref.event_ids[i] for i in rows] == [comp.event_ids[i] for i in rows]
    assert ref.event_time_ms[rows].tolist() == comp.event_time_ms[rows].tolist()
    assert ref.schema_ids[rows].tolist() == comp.schema_ids[rows].tolist()
    assert all(bool(comp.details[i]) == bool(comp.errors[i]) for i in rows)


@fast(150)
@given(data=st.data())
def test_compiled_equals_fastavro_on_valid_input(data):
    case = data.draw(cases())
    recs = data.draw(st.lists(records(case.writer), min_size=1, max_size=4))
    payloads = [payload(SID, case.writer, r) for r in recs]
    ref, comp = decoders(case)
    a, b = ref.decode(payloads), comp.decode(payloads)
    assert comp.fallbacks == 0
    assert_same_rows(a, b, range(len(payloads)))


def _mutate(data: st.DataObject, p: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["truncate", "flip", "byte", "append", "random", "splice"]))
    if kind == "truncate":
        return p[: data.draw(st.integers(0, max(len(p) - 1, 0)))]
    if kind == "append":
        return p + data.draw(st.binary(min_size=1, max_size=4))
    if kind == "random":
        return p[:5] + data.draw(st.binary(max_size=40))
    if kind == "splice":
        cut = data.draw(st.integers(5, max(len(p), 5)))
        return p[:cut] + data.draw(st.binary(max_size=12)) + p[cut:]
    b = bytearray(p)
    for _ in range(data.draw(st.integers(1, 3))):
        if len(b) <= 5:
            break
        i = data.draw(st.integers(5, len(b) - 1))
        if kind == "flip":
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        else:
            b[i] = data.draw(st.integers(0, 255))
    return bytes(b)


@fast(200)
@given(data=st.data())
def test_malformed_input_same_verdict_as_fastavro(data):
    case = data.draw(cases())
    recs = data.draw(st.lists(records(case.writer), min_size=1, max_size=3))
    payloads = [_mutate(data, payload(SID, case.writer, r)) for r in recs]
    ref, comp = decoders(case)
    a, b = ref.decode(payloads), comp.decode(payloads)
    for i in range(len(payloads)):
        assert verdict_class(a.errors[i]) == verdict_class(b.errors[i]), (
            a.details[i], b.details[i])  # fmt: skip
    # Beyond the verdict class the compiled decoder follows fastavro's reading rules
    # (varints, negative indexes, what is checked when skipping): rows agree. Only the code
    # within MALFORMED may differ, where fastavro skips leniently (resolve.lenient_skips).
    assert_same_rows(a, b, [i for i in range(len(payloads)) if a.errors[i] == b.errors[i]])


@fast(100)
@given(body=st.binary(max_size=64), case=cases())
def test_random_bytes_never_crash(body, case):
    ref, comp = decoders(case)
    payloads = [b"\x00\x00\x00\x00\x07" + body, body]
    a, b = ref.decode(payloads), comp.decode(payloads)
    for i in range(2):
        assert verdict_class(a.errors[i]) == verdict_class(b.errors[i])
