"""Specialise a decoding :class:`~streamproc.codecs.program.Program` into its own numba kernel.

The generic kernel (:func:`streamproc.codecs.kernel.decode`) interprets a program one
instruction at a time: every field costs a dispatch through a chain of opcode tests. This
module writes the program out as straight-line Python (one block per instruction, unions as
``if``/``elif``, arrays as loops, every table entry and feature bound a constant) and
compiles it with numba. The specialised kernel has the generic kernel's signature and
gives the same results event by event: it is the interpreter unrolled, not a second
reading of Avro. Each instruction's error path records the same program counter, so the
words a dead letter carries (:func:`streamproc.codecs.compiled.detail`) are the same too.

Compiling costs LLVM time, growing with the program (figures in ``benchmarks/README.md``),
so :class:`~streamproc.codecs.kernel_cache.Specialiser` compiles in the background and
caches the kernels; programs of more than :data:`MAX_OPS` instructions are left to the
interpreter, which bounds compile time.

>>> from streamproc.codecs.tree import build
>>> from streamproc.codecs.program import build_program
>>> w = build({"type": "record", "name": "T", "fields": [{"name": "x", "type": "double"}]})
>>> print(kernel_source(build_program(w, w, [], None, None)).split("\\n")[0])
# streamproc specialised decoder: 2 instructions
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from streamproc.codecs import program as P
from streamproc.codecs.kernel import F32_OVERFLOW
from streamproc.codecs.program import Program

log = logging.getLogger(__name__)

# Larger programs stay interpreted: compile time grows with the code (benchmarks/README.md).
# The pipeline's own bound is DecodingSettings.max_instructions, the same by default.
MAX_OPS = 160

Kernel = Callable[..., None]

# The largest float32, as a float64: |v| must stay below F32_OVERFLOW (kernel._check).
F32_MAX = float(np.nextafter(np.float64(F32_OVERFLOW), 0.0))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)


# The reader-default instructions, as the lines that set their slot (a, b, c: the operands;
# pool_a / pool_b: an operand as a negative offset into the byte pool, as the kernel reads it).
_DEFAULTS = {
    P.OP_SETF: ("fval[{a}] = consts[{b}]", "state[{a}] = 1"),
    P.OP_SETI: ("ival[{a}] = {b}", "state[{a}] = 1"),
    P.OP_SETS: ("ival[{a}] = {pool_b}", "ilen[{a}] = {c}", "state[{a}] = 1"),
    P.OP_SETID: ("out_id_off[e] = {pool_a}", "out_id_len[e] = {b}"),
    P.OP_SETTIME: ("out_time[e] = {a}",),
}


class _Gen:
    """Writes a program's instructions as nested Python blocks (see :func:`kernel_source`)."""

    def __init__(self, prog: Program, w: _Writer) -> None:
        self.prog = prog
        self.ops = prog.ops.tolist()
        self.tables = prog.tables.tolist()
        self.w = w
        self.arrays: list[tuple[int, int, int]] = []  # (depth id, base slot, length)

    def fail(self, code: str, pc: int, sub: str | None = None) -> None:
        """Record an error at instruction ``pc`` and leave the record (or the array)."""
        w = self.w
        w(f"code = {code}")
        w(f"epc = {pc}")
        if sub is not None:
            w(f"sub = {sub}")
        w("break")

    def guard(self, cond: str, code: str, pc: int, sub: str | None = None) -> None:
        """``if cond:`` fail with ``code`` at ``pc``."""
        self.w(f"if {cond}:")
        self.w.depth += 1
        self.fail(code, pc, sub)
        self.w.depth -= 1

    def region(self, pc: int) -> tuple[int, int]:
        """Emit instructions from ``pc`` until a JUMP, ARR_NEXT or END; returns (stop pc, op)."""
        w = self.w
        ops = self.ops
        while True:
            op, a, b, c, d, e = ops[pc]
            if op in (P.OP_END, P.OP_JUMP, P.OP_ARR_NEXT):
                return pc, op
            if op in (P.OP_LONG, P.OP_BOOL, P.OP_FLOAT, P.OP_DOUBLE):
                self.number(pc, op, a, b)
                pc += 1
            elif op == P.OP_STR:
                w("n, pos, code = read_varint(buf, pos, end)")
                self.guard("code != OK", "code", pc)
                self.guard("n < 0", "CORRUPT", pc, "C_NEGATIVE_LENGTH")
                self.guard("n > end - pos", "TRUNCATED", pc)
                if c != 0:
                    self.guard("not utf8_valid(buf, pos, pos + n)", "CORRUPT", pc, "C_UTF8")
                if a in (P.D_ID, P.D_SYM_ID):
                    w("out_id_off[e] = pos")
                    w("out_id_len[e] = n")
                if a in (P.D_SYM, P.D_SYM_ID):
                    w(f"ival[{b}] = pos")
                    w(f"ilen[{b}] = n")
                    w(f"state[{b}] = 1")
                w("pos += n")
                pc += 1
            elif op == P.OP_UNION:
                pc = self.union(pc, a, b)
            elif op == P.OP_ENUM:
                self.enum(pc, a, b, c, d)
                pc += 1
            elif op == P.OP_ARR:
                pc = self.array(pc, a, b, c, d, e)
            elif op == P.OP_FIXED:
                self.guard(f"end - pos < {a}", "TRUNCATED", pc)
                w(f"pos += {a}")
                pc += 1
            elif op in _DEFAULTS:
                for line in _DEFAULTS[op]:
                    w(line.format(a=a, b=b, c=c, pool_a=-1 - a, pool_b=-1 - b))
                pc += 1
            else:  # pragma: no cover - programs only hold the ops above
                raise P.Unsupported(f"opcode {op}")

    def number(self, pc: int, op: int, dk: int, slot: int) -> None:
        w = self.w
        if op == P.OP_LONG:
            w("iv, pos, code = read_varint(buf, pos, end)")
            self.guard("code != OK", "code", pc)
            w("v = np.float64(iv)")
        elif op in (P.OP_DOUBLE, P.OP_FLOAT):
            size = 8 if op == P.OP_DOUBLE else 4
            self.guard(f"end - pos < {size}", "TRUNCATED", pc)
            # One little-endian word in a register, stored whole: a load of the same width
            # from the same address is forwarded (eight byte stores would stall it).
            word = " | ".join(
                f"(np.uint{size * 8}(buf[pos + {k}]) << np.uint{size * 8}({8 * k}))"
                for k in range(size)
            )
            w(f"u{size * 8}[0] = {word}")
            w("v = f64[0]" if size == 8 else "v = np.float64(f32[0])")
            w(f"pos += {size}")
        else:
            self.guard("pos >= end", "TRUNCATED", pc)
            w("v = np.float64(1.0 if buf[pos] != 0 else 0.0)")
            w("pos += 1")
        if dk in (P.D_NUM, P.D_NUM_TIME):
            w(f"fval[{slot}] = v")
            w(f"state[{slot}] = 1")
        if dk in (P.D_NUM_TIME, P.D_TIME):
            w("out_time[e] = iv" if op == P.OP_LONG else "out_time[e] = 0")
        if dk == P.D_ELEM:
            depth, base, length = self.arrays[-1]
            w(f"if idx{depth} < {length}:")
            w(f"    fval[{base} + idx{depth}] = v")
            w(f"    state[{base} + idx{depth}] = 1")

    def union(self, pc: int, nb: int, table: int) -> int:
        w = self.w
        w("idx, pos, code = read_varint(buf, pos, end)")
        self.guard("code != OK", "code", pc)
        w("if idx < 0:")
        w(f"    idx += {nb}")
        self.guard(f"idx < 0 or idx >= {nb}", "CORRUPT", pc, "C_UNION_INDEX")
        after = -1
        first = True
        for i in range(nb):
            target = self.tables[table + i]
            if target < 0:
                continue
            w(f"{'if' if first else 'elif'} idx == {i}:")
            first = False
            w.depth += 1
            w("pass")
            stop, op = self.region(target)
            assert op == P.OP_JUMP
            after = self.ops[stop][1]
            w.depth -= 1
        if first:  # no branch is readable: every event on this union is incompatible
            self.fail("INCOMPATIBLE", pc, "np.float64(idx)")
        else:
            w("else:")
            w.depth += 1
            self.fail("INCOMPATIBLE", pc, "np.float64(idx)")
            w.depth -= 1
        # With no readable branch the builder emits nothing after the UNION itself (no
        # branch code, no JUMP): the union's successor is the next instruction.
        return after if after >= 0 else pc + 1

    def enum(self, pc: int, ns: int, table: int, dk: int, slot: int) -> None:
        w = self.w
        w("idx, pos, code = read_varint(buf, pos, end)")
        self.guard("code != OK", "code", pc)
        if table < 0:
            return
        w("if idx < 0:")
        w(f"    idx += {ns}")
        self.guard(f"idx < 0 or idx >= {ns}", "CORRUPT", pc, "C_ENUM_INDEX")
        w(f"ridx = tables[{table} + idx]")
        self.guard("ridx == -2", "UNKNOWN_ENUM", pc, "np.float64(idx)")
        if dk == P.D_SYM:
            w(f"ival[{slot}] = ridx")
            w(f"state[{slot}] = 1")

    def array(self, pc: int, after: int, skip: int, base: int, count_slot: int, length: int) -> int:
        w = self.w
        depth = len(self.arrays)
        cnt, idx = f"cnt{depth}", f"idx{depth}"
        w(f"{cnt}, pos, code = next_block(buf, pos, end, {skip})")
        self.guard("code != OK", "code", pc)
        w(f"{idx} = 0")
        w(f"while {cnt} != 0:")
        w.depth += 1
        self.arrays.append((depth, base, length))
        stop, op = self.region(pc + 1)
        assert op == P.OP_ARR_NEXT
        self.arrays.pop()
        w(f"{cnt} -= 1")
        w(f"{idx} += 1")
        w(f"if {cnt} == 0:")  # the block is done: read the next block's count
        w.depth += 1
        w(f"{cnt}, pos, code = next_block(buf, pos, end, {skip})")
        self.guard("code != OK", "code", stop)
        w.depth -= 2  # out of the loop
        w("if code != OK:")  # an error inside the items: leave the enclosing block too
        w("    break")
        if count_slot >= 0:
            w(f"ival[{count_slot}] = {idx}")
            w(f"state[{count_slot}] = 1")
        return after


def _in_range(prog: Program, fi: int) -> str:
    """A test that, when true, means :func:`~.kernel._check` passes ``v`` for feature ``fi``
    (finite, within its bounds and float32's): the common case costs two comparisons."""
    has_min, has_max = int(prog.feat[fi, 6]), int(prog.feat[fi, 7])
    lo = max(float(prog.featf[fi, 1]), -F32_MAX) if has_min else -F32_MAX
    hi = min(float(prog.featf[fi, 2]), F32_MAX) if has_max else F32_MAX
    return f"{lo!r} <= v <= {hi!r}"


def _features(prog: Program, w: _Writer) -> None:
    """The feature stage of the generic kernel with each feature's row as constants."""
    feat = prog.feat.tolist()
    for fi, row in enumerate(feat):
        kind, slot, col, width, policy, onehot, _, _, _, cslot, moff, mn, symk = row
        null_slot = cslot if kind == P.F_ARRAY else slot
        w(f"# feature {fi}")
        w(f"fi = {fi}")
        w(f"if state[{null_slot}] == 0:")
        w.depth += 1
        if policy == P.NULL_REJECT:
            w("code = MISSING")
            w("err_pos[e] = -1")
            w("break")
        else:
            fill = "np.nan" if policy == P.NULL_NAN else f"featf[{fi}, 0]"
            for j in range(width):
                w(f"out_f[e, {col + j}] = {fill}")
        w.depth -= 1
        w("else:")
        w.depth += 1
        if kind == P.F_NUMBER:
            w(f"v = fval[{slot}]")
            w(f"if not ({_in_range(prog, fi)}):  # else _check says why")
            w(f"    code = _check(v, {fi}, feat, featf)")
            w("    if code != OK:")
            w("        err_val[e] = v")
            w("        err_pos[e] = -1")
            w("        break")
            w(f"out_f[e, {col}] = v")
        elif kind == P.F_ARRAY:
            w(f"count = ival[{null_slot}]")
            w(f"if count != {width}:")
            w("    code = MISSING")
            w("    err_pos[e] = -2")
            w("    err_val[e] = np.float64(count)")
            w("    break")
            w(f"for j in range({width}):")
            w(f"    v = fval[{slot} + j]")
            w(f"    if not ({_in_range(prog, fi)}):")
            w(f"        code = _check(v, {fi}, feat, featf)")
            w("        if code != OK:")
            w("            err_val[e] = v")
            w("            err_pos[e] = j")
            w("            break")
            w(f"    out_f[e, {col} + j] = v")
            w("if code != OK:")
            w("    break")
        else:
            w("sidx = -1")
            if symk == P.SYM_STRING:
                w(f"off = ival[{slot}]")
                w(f"ln = ilen[{slot}]")
                w(f"for k in range({mn}):")
                w(f"    t = {moff} + k")
                w("    if symtab[t, 1] != ln:")
                w("        continue")
                w("    toff = symtab[t, 0]")
                w("    same = True")
                w("    for q in range(ln):")
                w("        c = pool[-1 - off + q] if off < 0 else buf[off + q]")
                w("        if c != pool[toff + q]:")
                w("            same = False")
                w("            break")
                w("    if same:")
                w("        sidx = k")
                w("        break")
                w("if sidx < 0:")
                w("    err_pos[e] = off")
                w("    err_val[e] = np.float64(ln)")
            else:
                w(f"ridx = ival[{slot}]")
                w(f"sidx = tables[{moff} + ridx]")
                w("if sidx < 0:")
                w("    err_pos[e] = ridx")
            w("if sidx < 0:")
            w("    code = UNKNOWN_ENUM")
            w("    break")
            if onehot:
                for j in range(width):
                    w(f"out_f[e, {col + j}] = 1.0 if sidx == {j} else 0.0")
            else:
                w(f"out_f[e, {col}] = np.float64(sidx)")
        w.depth -= 1


def kernel_source(prog: Program) -> str:
    """The Python source of ``prog``'s specialised kernel (function ``decode``)."""
    w = _Writer()
    n_ops = len(prog.ops)
    w(f"# streamproc specialised decoder: {n_ops} instructions")
    w("import numpy as np")
    w("from numba import njit")
    w("from streamproc.codecs.kernel import (")
    w("    BAD_MAGIC, C_ENUM_INDEX, C_NEGATIVE_LENGTH, C_UNION_INDEX, C_UTF8, CORRUPT,")
    w("    INCOMPATIBLE, MISSING, OK, TRAILING, TRUNCATED, UNKNOWN_ENUM, _check,")
    w("    next_block, read_varint, utf8_valid,")
    w(")")
    w("")
    w("")
    w("@njit(cache=True, nogil=True)")
    w("def decode(buf, starts, ends, rows, ops, tables, pool, symtab, consts, feat, featf,")
    w("           n_slots, max_depth, out_f, out_err, out_id_off, out_id_len, out_time,")
    w("           err_aux, err_pos, err_val):")
    w.depth += 1
    w("state = np.zeros(n_slots, np.uint8)")
    w("fval = np.zeros(n_slots, np.float64)")
    w("ival = np.zeros(n_slots, np.int64)")
    w("ilen = np.zeros(n_slots, np.int64)")
    w("tmp = np.zeros(8, np.uint8)")
    w("f64 = tmp.view(np.float64)")
    w("f32 = tmp[:4].view(np.float32)")
    w("u64 = tmp.view(np.uint64)")
    w("u32 = tmp[:4].view(np.uint32)")
    w("for r in range(rows.shape[0]):")
    w.depth += 1
    w("e = rows[r]")
    w("base = starts[e]")
    w("pos = base + 5")
    w("end = ends[e]")
    w("state[:] = 0")
    w("out_id_off[e] = 0")
    w("out_id_len[e] = -1")
    w("out_time[e] = 0")
    w("code = OK")
    w("epc = 0")
    w("sub = 0.0")
    w("iv = np.int64(0)")
    w("while True:  # the record: every error breaks out")
    w.depth += 1
    stop, op = _Gen(prog, w).region(0)
    assert op == P.OP_END
    w(f"epc = {stop}")
    w("break")
    w.depth -= 1
    w("if code == OK and pos != end:")
    w("    code = TRAILING")
    w("    sub = np.float64(end - pos)")
    w("if code != OK:")
    w("    out_err[e] = code")
    w("    err_aux[e] = epc")
    w("    err_pos[e] = pos - base")
    w("    err_val[e] = sub")
    w("    out_id_len[e] = -1")
    w("    out_time[e] = 0")
    w("    continue")
    w("fi = 0")
    w("while True:  # the features: every error breaks out")
    w.depth += 1
    _features(prog, w)
    w("break")
    w.depth -= 1
    w("if code != OK:")
    w("    out_err[e] = code")
    w("    err_aux[e] = -1 - fi")
    return "\n".join(w.lines) + "\n"
