"""The numba kernels behind the compiled decoder (see :mod:`streamproc.codecs.program`).

One generic interpreter, compiled once (``cache=True``: later processes load it from
``__pycache__``), reads a batch of Confluent payloads laid end to end in one ``uint8``
buffer. Every read is bounds-checked against the end of its payload, every loop consumes
input, so arbitrary bytes end in a per-event error code, never a crash or a hang.

Numbers are read as fastavro reads them: varints of any length with shifts taken modulo 64,
booleans true when non-zero, enum and union indexes negative-indexed like Python lists.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from streamproc.codecs.program import (
    D_ELEM,
    D_ID,
    D_NUM,
    D_NUM_TIME,
    D_SYM,
    D_SYM_ID,
    D_TIME,
    F_ARRAY,
    F_NUMBER,
    NULL_NAN,
    NULL_REJECT,
    OP_ARR,
    OP_ARR_NEXT,
    OP_BOOL,
    OP_DOUBLE,
    OP_END,
    OP_ENUM,
    OP_FIXED,
    OP_FLOAT,
    OP_JUMP,
    OP_LONG,
    OP_SETF,
    OP_SETI,
    OP_SETID,
    OP_SETS,
    OP_SETTIME,
    OP_STR,
    OP_UNION,
    SYM_STRING,
)
from streamproc.types import ReasonCode

OK = 0
TRUNCATED = int(ReasonCode.TRUNCATED)
CORRUPT = int(ReasonCode.CORRUPT)
INCOMPATIBLE = int(ReasonCode.INCOMPATIBLE_SCHEMA)
UNKNOWN_ENUM = int(ReasonCode.UNKNOWN_ENUM)
TRAILING = int(ReasonCode.TRAILING_BYTES)
MISSING = int(ReasonCode.MISSING_FEATURE)
NAN_FEATURE = int(ReasonCode.NAN_FEATURE)
OUT_OF_RANGE = int(ReasonCode.OUT_OF_RANGE)
BAD_MAGIC = int(ReasonCode.BAD_MAGIC)
OVERSIZE = int(ReasonCode.OVERSIZE)
NULL_VALUE = int(ReasonCode.NULL_VALUE)

# Sub-reasons of CORRUPT, in err_val.
C_NEGATIVE_LENGTH = 1.0
C_UTF8 = 2.0
C_UNION_INDEX = 3.0
C_ENUM_INDEX = 4.0

F32_OVERFLOW = 3.4028235677973366e38
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def read_varint(buf, pos, end):  # type: ignore[no-untyped-def]
    """A zig-zag varint as fastavro reads it; (value, new pos, error)."""
    result = np.uint64(0)
    shift = 0
    while True:
        if pos >= end:
            return np.int64(0), pos, TRUNCATED
        b = buf[pos]
        pos += 1
        result |= np.uint64(b & 0x7F) << np.uint64(shift & 63)
        if b < 0x80:
            break
        shift += 7
    value = np.int64(result >> np.uint64(1)) ^ -np.int64(result & np.uint64(1))
    return value, pos, OK


@njit(cache=True, nogil=True)
def next_block(buf, pos, end, skip):  # type: ignore[no-untyped-def]
    """The item count of the next array/map block (0: the end).

    A negative count is followed by the block's byte size: reading ignores it, skipping
    jumps over the whole block (fastavro's rules)."""
    while True:
        count, pos, err = read_varint(buf, pos, end)
        if err != OK:
            return np.int64(0), pos, err
        if count >= 0:
            return count, pos, OK
        size, pos, err = read_varint(buf, pos, end)
        if err != OK:
            return np.int64(0), pos, err
        if skip == 0:
            if count == INT64_MIN:
                return np.int64(INT64_MAX), pos, OK
            return -count, pos, OK
        if size < 0:
            return np.int64(0), pos, CORRUPT
        if size > end - pos:
            return np.int64(0), pos, TRUNCATED
        pos += size


@njit(cache=True, nogil=True)
def utf8_valid(buf, start, stop):  # type: ignore[no-untyped-def]
    """Whether buf[start:stop] is UTF-8 as Python's strict decoder accepts it."""
    i = start
    while i < stop:
        c = buf[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            need = 1
            lo, hi = 0x80, 0xBF
        elif c == 0xE0:
            need = 2
            lo, hi = 0xA0, 0xBF
        elif (0xE1 <= c <= 0xEC) or c == 0xEE or c == 0xEF:
            need = 2
            lo, hi = 0x80, 0xBF
        elif c == 0xED:
            need = 2
            lo, hi = 0x80, 0x9F
        elif c == 0xF0:
            need = 3
            lo, hi = 0x90, 0xBF
        elif 0xF1 <= c <= 0xF3:
            need = 3
            lo, hi = 0x80, 0xBF
        elif c == 0xF4:
            need = 3
            lo, hi = 0x80, 0x8F
        else:
            return False
        if i + need >= stop:
            return False
        c1 = buf[i + 1]
        if c1 < lo or c1 > hi:
            return False
        for k in range(2, need + 1):
            ck = buf[i + k]
            if ck < 0x80 or ck > 0xBF:
                return False
        i += need + 1
    return True


@njit(cache=True, nogil=True)
def read_headers(buf, starts, ends, present, max_bytes, ids, codes):  # type: ignore[no-untyped-def]
    """Framing checks in order (null, oversize, empty, magic, short) and schema ids."""
    for e in range(starts.shape[0]):
        n = ends[e] - starts[e]
        if present[e] == 0:
            codes[e] = NULL_VALUE
        elif present[e] == 2 or n > max_bytes:
            codes[e] = OVERSIZE
        elif n == 0:
            codes[e] = TRUNCATED
        elif buf[starts[e]] != 0:
            codes[e] = BAD_MAGIC
        elif n < 5:
            codes[e] = TRUNCATED
        else:
            s = starts[e]
            v = (
                (np.int64(buf[s + 1]) << 24)
                | (np.int64(buf[s + 2]) << 16)
                | (np.int64(buf[s + 3]) << 8)
                | np.int64(buf[s + 4])
            )
            if v >= 2**31:
                v -= 2**32
            ids[e] = v
            codes[e] = OK


@njit(cache=True, nogil=True)
def _check(v, fi, feat, featf):  # type: ignore[no-untyped-def]
    """The value checks of features.check_number: NaN/inf, min, max, float32 overflow."""
    if not np.isfinite(v):
        if feat[fi, 8] == 0:
            return NAN_FEATURE
        if np.isnan(v):
            return OK
    if feat[fi, 6] != 0 and v < featf[fi, 1]:
        return OUT_OF_RANGE
    if feat[fi, 7] != 0 and v > featf[fi, 2]:
        return OUT_OF_RANGE
    if np.isfinite(v) and abs(v) >= F32_OVERFLOW:
        return OUT_OF_RANGE
    return OK


@njit(cache=True, nogil=True)
def decode(  # type: ignore[no-untyped-def]
    buf, starts, ends, rows,
    ops, tables, pool, symtab, consts, feat, featf, n_slots, max_depth,
    out_f, out_err, out_id_off, out_id_len, out_time, err_aux, err_pos, err_val,
):  # fmt: skip
    """Decode the events ``rows`` (indexes into starts/ends) with one program."""
    state = np.zeros(n_slots, np.uint8)
    fval = np.zeros(n_slots, np.float64)
    ival = np.zeros(n_slots, np.int64)
    ilen = np.zeros(n_slots, np.int64)
    st_pc = np.zeros(max_depth + 1, np.int64)
    st_rem = np.zeros(max_depth + 1, np.int64)
    st_idx = np.zeros(max_depth + 1, np.int64)
    tmp = np.zeros(8, np.uint8)
    f64 = tmp.view(np.float64)
    f32 = tmp[:4].view(np.float32)
    n_feat = feat.shape[0]
    for r in range(rows.shape[0]):
        e = rows[r]
        base = starts[e]
        pos = base + 5
        end = ends[e]
        state[:] = 0
        out_id_off[e] = 0
        out_id_len[e] = -1
        out_time[e] = 0
        pc = 0
        sp = 0
        code = OK
        aux = 0
        sub = 0.0
        while True:
            op = ops[pc, 0]
            if op == OP_END:
                break
            dk = ops[pc, 1]
            if op == OP_LONG or op == OP_BOOL or op == OP_FLOAT or op == OP_DOUBLE:
                iv = np.int64(0)
                if op == OP_LONG:
                    iv, pos, code = read_varint(buf, pos, end)
                    if code != OK:
                        break
                    v = np.float64(iv)
                elif op == OP_DOUBLE:
                    if end - pos < 8:
                        code = TRUNCATED
                        break
                    for k in range(8):
                        tmp[k] = buf[pos + k]
                    v = f64[0]
                    pos += 8
                elif op == OP_FLOAT:
                    if end - pos < 4:
                        code = TRUNCATED
                        break
                    for k in range(4):
                        tmp[k] = buf[pos + k]
                    v = np.float64(f32[0])
                    pos += 4
                else:
                    if pos >= end:
                        code = TRUNCATED
                        break
                    v = np.float64(1.0 if buf[pos] != 0 else 0.0)
                    pos += 1
                if dk == D_NUM or dk == D_NUM_TIME:
                    s = ops[pc, 2]
                    fval[s] = v
                    state[s] = 1
                    if dk == D_NUM_TIME:
                        out_time[e] = iv
                elif dk == D_ELEM:
                    top = sp - 1
                    arr = st_pc[top]
                    if st_idx[top] < ops[arr, 5]:
                        s = ops[arr, 3] + st_idx[top]
                        fval[s] = v
                        state[s] = 1
                elif dk == D_TIME:
                    out_time[e] = iv
                pc += 1
            elif op == OP_STR:
                n, pos, code = read_varint(buf, pos, end)
                if code != OK:
                    break
                if n < 0:
                    code = CORRUPT
                    sub = C_NEGATIVE_LENGTH
                    break
                if n > end - pos:
                    code = TRUNCATED
                    break
                if ops[pc, 3] != 0 and not utf8_valid(buf, pos, pos + n):
                    code = CORRUPT
                    sub = C_UTF8
                    break
                if dk == D_ID or dk == D_SYM_ID:
                    out_id_off[e] = pos
                    out_id_len[e] = n
                if dk == D_SYM or dk == D_SYM_ID:
                    s = ops[pc, 2]
                    ival[s] = pos
                    ilen[s] = n
                    state[s] = 1
                pos += n
                pc += 1
            elif op == OP_UNION:
                idx, pos, code = read_varint(buf, pos, end)
                if code != OK:
                    break
                nb = ops[pc, 1]
                if idx < 0:
                    idx += nb
                if idx < 0 or idx >= nb:
                    code = CORRUPT
                    sub = C_UNION_INDEX
                    break
                target = tables[ops[pc, 2] + idx]
                if target < 0:
                    code = INCOMPATIBLE
                    aux = pc
                    sub = np.float64(idx)
                    break
                pc = target
            elif op == OP_JUMP:
                pc = dk
            elif op == OP_ENUM:
                idx, pos, code = read_varint(buf, pos, end)
                if code != OK:
                    break
                tab = ops[pc, 2]
                if tab >= 0:
                    ns = ops[pc, 1]
                    if idx < 0:
                        idx += ns
                    if idx < 0 or idx >= ns:
                        code = CORRUPT
                        sub = C_ENUM_INDEX
                        break
                    ridx = tables[tab + idx]
                    if ridx == -2:
                        code = UNKNOWN_ENUM
                        aux = pc
                        sub = np.float64(idx)
                        break
                    if ops[pc, 3] == D_SYM:
                        s = ops[pc, 4]
                        ival[s] = ridx
                        state[s] = 1
                pc += 1
            elif op == OP_ARR:
                count, pos, code = next_block(buf, pos, end, ops[pc, 2])
                if code != OK:
                    break
                if count == 0:
                    cs = ops[pc, 4]
                    if cs >= 0:
                        ival[cs] = 0
                        state[cs] = 1
                    pc = ops[pc, 1]
                else:
                    st_pc[sp] = pc
                    st_rem[sp] = count
                    st_idx[sp] = 0
                    sp += 1
                    pc += 1
            elif op == OP_ARR_NEXT:
                top = sp - 1
                st_rem[top] -= 1
                st_idx[top] += 1
                if st_rem[top] == 0:
                    arr = st_pc[top]
                    count, pos, code = next_block(buf, pos, end, ops[arr, 2])
                    if code != OK:
                        break
                    if count == 0:
                        cs = ops[arr, 4]
                        if cs >= 0:
                            ival[cs] = st_idx[top]
                            state[cs] = 1
                        sp -= 1
                        pc += 1
                        continue
                    st_rem[top] = count
                pc = st_pc[top] + 1
            elif op == OP_FIXED:
                if end - pos < dk:
                    code = TRUNCATED
                    break
                pos += dk
                pc += 1
            elif op == OP_SETF:
                s = dk
                fval[s] = consts[ops[pc, 2]]
                state[s] = 1
                pc += 1
            elif op == OP_SETI:
                s = dk
                ival[s] = ops[pc, 2]
                state[s] = 1
                pc += 1
            elif op == OP_SETS:
                s = dk
                ival[s] = -1 - ops[pc, 2]  # negative: an offset into the pool
                ilen[s] = ops[pc, 3]
                state[s] = 1
                pc += 1
            elif op == OP_SETID:
                out_id_off[e] = -1 - dk
                out_id_len[e] = ops[pc, 2]
                pc += 1
            elif op == OP_SETTIME:
                out_time[e] = dk
                pc += 1
            else:  # pragma: no cover - programs only hold the ops above
                code = CORRUPT
                break
        if code == OK and pos != end:
            code = TRAILING
            sub = np.float64(end - pos)
        if code != OK:
            out_err[e] = code
            err_aux[e] = aux if (code == INCOMPATIBLE or code == UNKNOWN_ENUM) else pc
            err_pos[e] = pos - base
            err_val[e] = sub
            out_id_len[e] = -1
            out_time[e] = 0
            continue
        # -- features ---------------------------------------------------------------
        for fi in range(n_feat):
            kind = feat[fi, 0]
            slot = feat[fi, 1]
            col = feat[fi, 2]
            width = feat[fi, 3]
            null_slot = feat[fi, 9] if kind == F_ARRAY else slot
            if state[null_slot] == 0:
                policy = feat[fi, 4]
                if policy == NULL_REJECT:
                    code = MISSING
                    err_pos[e] = -1
                    break
                fill = np.nan if policy == NULL_NAN else featf[fi, 0]
                for j in range(width):
                    out_f[e, col + j] = fill
                continue
            if kind == F_NUMBER:
                v = fval[slot]
                code = _check(v, fi, feat, featf)
                if code != OK:
                    err_val[e] = v
                    err_pos[e] = -1
                    break
                out_f[e, col] = v
            elif kind == F_ARRAY:
                count = ival[null_slot]
                if count != width:
                    code = MISSING
                    err_pos[e] = -2
                    err_val[e] = np.float64(count)
                    break
                for j in range(width):
                    v = fval[slot + j]
                    code = _check(v, fi, feat, featf)
                    if code != OK:
                        err_val[e] = v
                        err_pos[e] = j
                        break
                    out_f[e, col + j] = v
                if code != OK:
                    break
            else:
                sidx = -1
                if feat[fi, 12] == SYM_STRING:
                    off = ival[slot]
                    ln = ilen[slot]
                    for k in range(feat[fi, 11]):
                        t = feat[fi, 10] + k
                        if symtab[t, 1] != ln:
                            continue
                        toff = symtab[t, 0]
                        same = True
                        for q in range(ln):
                            c = pool[-1 - off + q] if off < 0 else buf[off + q]
                            if c != pool[toff + q]:
                                same = False
                                break
                        if same:
                            sidx = k
                            break
                    if sidx < 0:
                        err_pos[e] = off
                        err_val[e] = np.float64(ln)
                else:
                    ridx = ival[slot]
                    sidx = tables[feat[fi, 10] + ridx]
                    if sidx < 0:
                        err_pos[e] = ridx
                if sidx < 0:
                    code = UNKNOWN_ENUM
                    break
                if feat[fi, 5] != 0:
                    for j in range(width):
                        out_f[e, col + j] = 1.0 if j == sidx else 0.0
                else:
                    out_f[e, col] = np.float64(sidx)
        if code != OK:
            out_err[e] = code
            err_aux[e] = -1 - fi  # feature errors: negative


@njit(cache=True, nogil=True)
def gather_ids(buf, id_off, id_len, out, starts):  # type: ignore[no-untyped-def]
    """Copy every event's id bytes into ``out``, NUL-separated (an empty id where there is
    none), and where each begins into ``starts`` (``starts[n]``: one past the end, as if a
    separator followed); returns the length written, or -1 when an id itself holds a NUL
    byte."""
    w = 0
    for e in range(id_off.shape[0]):
        if e > 0:
            out[w] = 0
            w += 1
        starts[e] = w
        n = id_len[e]
        o = id_off[e]
        if n <= 0 or o < 0:
            continue
        for k in range(n):
            c = buf[o + k]
            if c == 0:
                return -1
            out[w] = c
            w += 1
    starts[id_off.shape[0]] = w + 1
    return w
