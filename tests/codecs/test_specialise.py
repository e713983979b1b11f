"""Specialised kernels against the interpreter they unroll: same rows, codes and words."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.codecs import kernel
from streamproc.codecs.decoder import BatchDecoder
from streamproc.codecs.kernel_cache import Specialiser
from streamproc.codecs.source import DictSchemaSource
from streamproc.codecs.specialise import kernel_source
from streamproc.models.spec import ModelSpec
from streamproc.telemetry.prometheus import PrometheusSensor
from streamproc.types import DecodedBatch
from streamproc.types import ReasonCode as R
from tests.codecs.builders import fraud_spec, payload, transaction, transaction_schema
from tests.codecs.strategies import cases, records
from tests.codecs.test_differential import _mutate

SID = 7


def assert_identical(a: DecodedBatch, b: DecodedBatch) -> None:
    """Every output of the two decoders, rejected rows' words included."""
    assert a.errors.tolist() == b.errors.tolist()
    assert a.details == b.details
    ok = a.errors == 0
    np.testing.assert_array_equal(a.features[ok], b.features[ok])
    assert a.event_ids == b.event_ids
    assert a.event_time_ms.tolist() == b.event_time_ms.tolist()


def pair(
    spec: ModelSpec, writer: Any, reader: Any, specialiser: Specialiser
) -> tuple[BatchDecoder, BatchDecoder]:
    src = DictSchemaSource({SID: writer})
    return (
        BatchDecoder(spec, reader, src),
        BatchDecoder(spec, reader, src, specialiser=specialiser),
    )


def txn_payloads(n: int) -> list[bytes | None]:
    schema = transaction_schema()
    good = [payload(SID, schema, transaction(i)) for i in range(n)]
    bad: list[bytes | None] = [
        good[0][:-3],  # truncated
        good[1] + b"\x00",  # trailing
        payload(SID, schema, transaction(2, amount=-1.0)),  # out of range
        payload(SID, schema, transaction(3, device_trust_score=None)),  # imputed
        payload(SID, schema, transaction(4, merchant_risk=float("nan"))),  # NaN
        None,
        b"\x01junk",
    ]
    return good + bad


def test_transaction_batch_runs_the_specialised_kernel(specialiser):
    sensor = PrometheusSensor(pipeline="p")
    src = DictSchemaSource({SID: transaction_schema()})
    interp = BatchDecoder(fraud_spec(), transaction_schema(), src)
    special = BatchDecoder(fraud_spec(), transaction_schema(), src, specialiser=specialiser,
                           sensor=sensor)  # fmt: skip
    values = txn_payloads(64)
    a, b = interp.decode(values), special.decode(values)
    assert_identical(a, b)
    entry = special.writer(SID)
    assert entry.extra["kernel"] is not kernel.decode  # the batch did not fall back
    seconds = specialiser.compile_seconds[entry.extra["kernel_key"]]
    gauge = sensor.registry.get_sample_value(
        "streamproc_decoder_kernel_compile_seconds", {"pipeline": "p", "schema_id": str(SID)}
    )
    assert gauge == seconds > 0
    assert {R(c).name for c in b.errors.tolist()} == {
        "OK", "TRUNCATED", "TRAILING_BYTES", "OUT_OF_RANGE", "NAN_FEATURE", "NULL_VALUE",
        "BAD_MAGIC",
    }  # fmt: skip
    assert b.features[-4].tolist()[11] == 0.5  # device_trust_score null: imputed


@settings(
    max_examples=12,  # each example compiles a kernel (0.5-2 s)
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_specialised_equals_interpreter_on_generated_schemas(data, specialiser):
    case = data.draw(cases())
    recs = data.draw(st.lists(records(case.writer), min_size=1, max_size=6))
    valid = [payload(SID, case.writer, r) for r in recs]
    mutated = [_mutate(data, p) for p in valid]
    noise = [b"\x00\x00\x00\x00\x07" + data.draw(st.binary(max_size=48)) for _ in range(3)]
    interp, special = pair(case.spec, case.writer, case.reader, specialiser)
    values: list[bytes | None] = [*valid, *mutated, *noise]
    assert_identical(interp.decode(values), special.decode(values))
    assert special.writer(SID).extra.get("kernel") not in (None, kernel.decode)


def test_large_programs_stay_interpreted(tmp_path):
    capped = Specialiser(cache_dir=tmp_path, max_ops=3)
    interp, special = pair(fraud_spec(), transaction_schema(), transaction_schema(), capped)
    values = txn_payloads(8)
    assert_identical(interp.decode(values), special.decode(values))
    assert special.writer(SID).extra["kernel_key"] is None
    assert special.writer(SID).extra.get("kernel") is None  # interpreted, nothing compiled
    assert capped.compile_seconds == {}
    assert not list(tmp_path.iterdir())


def test_background_compile_then_prepare_waits(tmp_path):
    bg = Specialiser(cache_dir=tmp_path, background=True)
    interp, special = pair(fraud_spec(), transaction_schema(), transaction_schema(), bg)
    values = txn_payloads(16)
    assert_identical(interp.decode(values), special.decode(values))  # either kernel: same rows
    assert special.prepare(SID, timeout_s=120.0)
    assert_identical(interp.decode(values), special.decode(values))
    assert special.writer(SID).extra["kernel"] is not kernel.decode


def test_disk_cache_serves_a_second_specialiser(tmp_path):
    prog_src = None
    stamps: dict[str, int] = {}
    for _ in range(2):
        sp = Specialiser(cache_dir=tmp_path)
        interp, special = pair(fraud_spec(), transaction_schema(), transaction_schema(), sp)
        assert special.prepare(SID)
        prog = special.writer(SID).extra["program"]
        if prog_src is None:
            prog_src = kernel_source(prog)
        assert_identical(interp.decode(txn_payloads(4)), special.decode(txn_payloads(4)))
        cached = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "__pycache__").glob("*")}
        assert cached and (not stamps or cached == stamps)  # the second compiled nothing anew
        stamps = cached
    modules = [p.name for p in tmp_path.glob("streamproc_kernel_*.py")]
    assert len(modules) == 1
    assert (tmp_path / modules[0]).read_text() == prog_src
    assert list((tmp_path / "__pycache__").glob("*.nbi"))  # numba's own cache, reused


class _Broken(Specialiser):
    def _load(self, key: str, src: str) -> Any:
        return super()._load(key, src.replace("def decode(", "def decode(oops, "))


def test_a_kernel_that_fails_to_compile_leaves_the_interpreter(tmp_path, caplog):
    broken = _Broken(cache_dir=tmp_path)
    interp, special = pair(fraud_spec(), transaction_schema(), transaction_schema(), broken)
    values = txn_payloads(8)
    with caplog.at_level(logging.ERROR, logger="streamproc.codecs.specialise"):
        assert not special.prepare(SID)
    assert "failed to compile" in caplog.text
    assert_identical(interp.decode(values), special.decode(values))
    assert broken.compile_seconds == {}


def test_kernel_source_is_straight_line_code():
    _, special = pair(fraud_spec(), transaction_schema(), transaction_schema(), Specialiser(
        cache_dir=Path("/nonexistent"), max_ops=0))  # fmt: skip
    prog = special.writer(SID).extra["program"]
    src = kernel_source(prog)
    assert "ops[pc" not in src  # no instruction dispatch left
    # two string lengths, six longs, the union branch and the enum index
    assert src.count("read_varint(") == 2 + 6 + 1 + 1
    assert src.count("utf8_valid(") == 1  # only the event id is read as text
