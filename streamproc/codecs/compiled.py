"""Glue between :class:`~streamproc.codecs.decoder.BatchDecoder` and the numba kernel:
batch marshalling, and words for the error codes the kernel leaves behind."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamproc.codecs import kernel
from streamproc.codecs.container import FramedValues
from streamproc.codecs.features import FeaturePlan, check_number, non_null_branches
from streamproc.codecs.program import OP_NAMES, Program
from streamproc.types import JoinedIds, ReasonCode

_compile_seconds: float | None = None


def warm_up() -> float:
    """Compile (or load from numba's cache) the kernels; seconds it took, measured once.

    Runs the real code path on a tiny batch, so the kernels are specialised for exactly
    the argument types decoding uses and nothing compiles again on the first batch.
    """
    global _compile_seconds  # noqa: PLW0603 - one process-wide measurement
    if _compile_seconds is None:
        from streamproc.codecs.program import build_program
        from streamproc.codecs.tree import build

        t0 = time.perf_counter()
        schema = build({"type": "record", "name": "W", "fields": [{"name": "i", "type": "string"}]})
        prog = build_program(schema, schema, [], ("i",), None)
        packed = pack([b"\x00\x00\x00\x00\x01\x02a", None], 1000)
        ids = np.full(2, -1, dtype=np.int32)
        errors = np.zeros(2, dtype=np.uint8)
        kernel.read_headers(
            packed.buf, packed.starts, packed.ends, packed.present, 1000, ids, errors
        )
        out = Outputs.empty(2)
        features = np.zeros((2, 0), dtype=np.float32)
        run(prog, packed, np.zeros(1, np.int64), features, errors, np.zeros(2, np.int64), out)
        event_ids(packed, out, ["", ""], None)
        _compile_seconds = time.perf_counter() - t0
    return _compile_seconds


@dataclass
class Packed:
    """A batch laid end to end in one buffer."""

    raw: bytes
    buf: npt.NDArray[np.uint8]
    starts: npt.NDArray[np.int64]
    ends: npt.NDArray[np.int64]
    present: npt.NDArray[np.uint8]
    # Every payload's writer schema id when the headers are not in ``buf`` (FramedValues:
    # ``starts`` are 5 bytes before each datum); None: read them from ``buf``.
    schema_id: int | None = None


PRESENT, ABSENT, TOO_BIG = 1, 0, 2  # values of Packed.present


def pack(payloads: Sequence[bytes | None], max_bytes: int) -> Packed:
    """Lay a batch end to end; None payloads and payloads over ``max_bytes`` are left out
    (``present`` says which), so an oversize message is never copied."""
    if isinstance(payloads, FramedValues):  # laid end to end already (Avro container files)
        # Each datum's header is known, not in the buffer: a start 5 bytes before the
        # datum (the kernel reads from start + 5), read_headers is not run (schema_id).
        starts = payloads.starts - len(payloads.head)
        present = np.ones(len(payloads), np.uint8)
        present[(payloads.ends - starts) > max_bytes] = TOO_BIG
        return Packed(payloads.raw, payloads.buf, starts, payloads.ends, present,
                      payloads.schema_id)  # fmt: skip
    n = len(payloads)
    vals: Sequence[bytes] = payloads  # type: ignore[assignment]
    present = np.ones(n, np.uint8)
    try:  # len(None) raises: no per-item None test in the common case
        lens = np.fromiter(map(len, vals), np.int64, n)
    except TypeError:
        present = np.fromiter((p is not None for p in payloads), np.uint8, n)
        vals = [p if p is not None else b"" for p in payloads]
        lens = np.fromiter(map(len, vals), np.int64, n)
    big = lens > max_bytes
    if big.any():
        present[big] = TOO_BIG
        lens[big] = 0
        vals = [b"" if too else v for v, too in zip(vals, big.tolist(), strict=True)]
    ends = np.cumsum(lens)
    raw = b"".join(vals)
    return Packed(raw, np.frombuffer(raw, np.uint8), ends - lens, ends, present)


@dataclass
class Outputs:
    """Per-event outputs of the kernel for one batch."""

    id_off: npt.NDArray[np.int64]
    id_len: npt.NDArray[np.int64]
    err_aux: npt.NDArray[np.int64]
    err_pos: npt.NDArray[np.int64]
    err_val: npt.NDArray[np.float64]

    @classmethod
    def empty(cls, n: int) -> Outputs:
        return cls(
            np.zeros(n, np.int64),
            np.full(n, -1, np.int64),
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            np.zeros(n, np.float64),
        )


def run(
    prog: Program,
    packed: Packed,
    rows: npt.NDArray[np.int64],
    features: npt.NDArray[np.float32],
    errors: npt.NDArray[np.uint8],
    times: npt.NDArray[np.int64],
    out: Outputs,
    fn: Callable[..., None] = kernel.decode,
) -> None:
    """Decode ``rows`` with the generic kernel, or with ``fn``: a program's specialised
    kernel (:mod:`streamproc.codecs.specialise`), which takes the same arguments."""
    fn(
        packed.buf, packed.starts, packed.ends, rows,
        prog.ops, prog.tables, prog.pool, prog.symtab, prog.consts, prog.feat, prog.featf,
        prog.n_slots, prog.max_depth,
        features, errors, out.id_off, out.id_len, times, out.err_aux, out.err_pos, out.err_val,
    )  # fmt: skip


def joined_ids(packed: Packed, out: Outputs) -> JoinedIds | None:
    """Every event's id as one NUL-separated buffer (empty where there is none); None when
    an id holds a NUL byte itself."""
    n = out.id_off.shape[0]
    scratch = np.empty(packed.buf.size + n, np.uint8)
    starts = np.empty(n + 1, np.int64)
    written = kernel.gather_ids(packed.buf, out.id_off, out.id_len, scratch, starts)
    return JoinedIds(scratch[:written].tobytes(), n, starts) if written >= 0 else None


def event_ids(
    packed: Packed, out: Outputs, ids: list[str], rows: npt.NDArray[np.int64] | None
) -> None:
    """Fill ``ids`` (at ``rows``; all when None) with the event ids the kernel located."""
    joined = joined_ids(packed, out)
    if joined is not None:  # one decode and one split for the batch
        if rows is None:
            ids[:] = joined
        else:
            for i in rows.tolist():
                ids[i] = joined[i]
        return
    raw = packed.raw
    for i in range(len(ids)) if rows is None else rows.tolist():
        o, ln = int(out.id_off[i]), int(out.id_len[i])
        if ln > 0 and o >= 0:
            ids[i] = raw[o : o + ln].decode("utf-8", "replace")


def detail(
    code: int,
    prog: Program,
    plans: list[FeaturePlan],
    packed: Packed,
    e: int,
    out: Outputs,
) -> str:
    """Words for the error the kernel recorded for event ``e``."""
    aux = int(out.err_aux[e])
    pos = int(out.err_pos[e])
    val = float(out.err_val[e])
    if code == ReasonCode.TRUNCATED:
        return f"body ended before the record did (byte {pos})"
    if code == ReasonCode.TRAILING_BYTES:
        return f"{int(val)} bytes left after the record"
    if code == ReasonCode.CORRUPT:
        what = {
            kernel.C_NEGATIVE_LENGTH: "negative length",
            kernel.C_UTF8: "string is not UTF-8",
            kernel.C_UNION_INDEX: "union branch index out of range",
            kernel.C_ENUM_INDEX: "enum index out of range",
        }.get(val, "not a valid Avro body")
        op = OP_NAMES.get(int(prog.ops[aux, 0]), "?") if 0 <= aux < len(prog.ops) else "?"
        return f"{what} (byte {pos}, reading {op.lower()})"
    if aux >= 0:  # an error while reading, at program counter aux
        if code == ReasonCode.INCOMPATIBLE_SCHEMA:
            w, r = prog.notes.get(aux, (None, None))
            branch = w.branches[int(val)].describe() if w is not None else "?"
            target = r.describe() if r is not None else "?"
            return (
                f"value not readable as the reader schema: writer branch {branch} is not {target}"
            )
        if code == ReasonCode.UNKNOWN_ENUM and aux in prog.notes:
            w, r = prog.notes[aux]
            return (
                f"enum symbol unknown to the reader schema: {w.symbols[int(val)]} not found "
                f"in reader symbol list {r.name}"
            )
        return ReasonCode(code).name
    aux = -1 - aux
    if aux >= len(plans):
        return ReasonCode(code).name
    f = plans[aux].spec
    if code == ReasonCode.MISSING_FEATURE:
        if pos == -2:
            return f"{f.field} has {int(val)} elements, the model expects {plans[aux].width}"
        return f"{f.field} is null"
    if code in (ReasonCode.NAN_FEATURE, ReasonCode.OUT_OF_RANGE):
        what = f.field if pos < 0 else f"{f.field}[{pos}]"
        return check_number(f, val, what)[1]
    if code == ReasonCode.UNKNOWN_ENUM and plans[aux].kind == "symbol":
        sym = _symbol_text(prog, plans[aux], packed, pos, val)
        return f"{f.field}={sym!r} is not one of {f.symbols}"
    return ReasonCode(code).name


def _symbol_text(prog: Program, plan: FeaturePlan, packed: Packed, pos: int, val: float) -> str:

    enums = [b for b in non_null_branches(plan.leaf) if b.kind == "enum"]
    if enums:
        return enums[0].symbols[pos] if 0 <= pos < len(enums[0].symbols) else "?"
    n = int(val)
    raw = packed.raw[pos : pos + n] if pos >= 0 else prog.pool[-1 - pos : -1 - pos + n].tobytes()
    return raw.decode("utf-8", "replace")
