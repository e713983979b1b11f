"""The compiled window store: the semantics of ``reference.py`` per batch, in numba kernels
(``kernels.py``), with the state of each partition in flat numpy arrays.

Per partition, each key has a *slot*; the key's events that can still be seen live in a block
of an event arena, sorted by (event time, arrival), with running sums beside them. The arena
is one row of 8-byte words per event (time, values, running sums) and the slots one row per
key, so that an event of a cold key costs a cache line or two, not one per array. A batch's
keys are joined into one buffer and mapped to slots by a compiled hash table
(``_KeyTable``); Python only adds the keys it has not seen. Everything per event or per key
after that is compiled.

Memory per key is bounded by ``FeaturesSpec.max_events_per_key`` (the oldest events beyond it
are dropped and counted); a key's block is the smallest power of two that holds its events.
Blocks outgrown or freed leave holes that a compaction reclaims once they are half the arena.

The changelog value of a key is ``n`` then its ``n`` event times then, per value field, its
``n`` values, as little-endian 8-byte words: 8 + 8 n (1 + fields) bytes; restore rebuilds the
running sums from them in one compiled pass over all keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from . import kernels as K
from .api import ClosedWindow, FeatureResult, StoreStats
from .spec import FeaturesSpec

_META = b"\x00streamproc.meta"  # the partition's watermark and counters, in the changelog
_I64 = np.int64
_F64 = np.float64
# A key's bytes object, its dict entry and its list entry, roughly (CPython, 64-bit).
_KEY_OVERHEAD = 120
# Holes (events' worth of capacity) below which a partition is never compacted; the tests set
# it to 0 to compact whenever holes are half the arena.
COMPACT_MIN = 1 << 14
# Events ahead of the one computed whose key's rows the kernel prefetches (0: none; see
# kernels.process).
PREFETCH = 8
_A = npt.NDArray[Any]
_GONE: Any = np.empty(0, np.int64)  # the arena views while their buffer moves (reserve)
# T, V, PSh, PSl, PQh, PQl, PC and bsh, bsl, bqh, bql, bc (see kernels.py)
_Arena = tuple[_A, _A, _A, _A, _A, _A, _A]
_Bases = tuple[_A, _A, _A, _A, _A]


class _Layout:
    """The definitions as the arrays the kernels read."""

    def __init__(self, spec: FeaturesSpec) -> None:
        fields = spec.value_fields
        defs = spec.definitions
        prefixed = [f for f in fields if any(d.value == f and d.agg in ("sum", "mean", "std")
                                             for d in defs)]  # fmt: skip
        squared = [f for f in prefixed if any(d.value == f and d.agg == "std" for d in defs)]
        self.nf = len(fields)
        self.fields = fields
        self.npr = len(prefixed)
        self.nq = len(squared)
        self.pfield = np.array([fields.index(f) for f in prefixed], _I64)
        self.qrow = np.array([squared.index(f) if f in squared else -1 for f in prefixed], _I64)
        self.codes = np.array([K.CODES[d.agg] for d in defs], _I64)
        self.vfield = np.array([-1 if d.value is None else fields.index(d.value) for d in defs],
                               _I64)  # fmt: skip
        self.prow = np.array(
            [prefixed.index(d.value) if d.value in prefixed else -1 for d in defs], _I64
        )
        self.qrow_of_def = np.array(
            [squared.index(d.value) if d.value in squared else -1 for d in defs], _I64
        )
        self.units = np.array([float(d.unit_ms) for d in defs], _F64)
        self.wtype = np.array([K.SLIDING if d.window.type == "sliding" else 1 for d in defs],
                              _I64)  # fmt: skip
        self.wsize = np.array([d.window.size_ms for d in defs], _I64)
        self.wstep = np.array([d.window.step for d in defs], _I64)
        # The order process() searches the windows in: sliding ones largest first, so that
        # each search starts where the previous (earlier) window's start was found.
        self.dorder = np.array(
            sorted(
                range(len(defs)),
                key=lambda j: (defs[j].window.type != "sliding", -defs[j].window.size_ms, j),
            ),
            _I64,
        )
        self.closing = np.array([j for j, d in enumerate(defs) if d.window.type != "sliding"], _I64)
        self.extremes = any(d.agg in ("min", "max") for d in defs)
        # arena bytes per event: time, values, running sums (hi, lo, count), squares (hi, lo)
        self.event_bytes = 8 * (1 + self.nf + 3 * self.npr + 2 * self.nq)


def _rows(view: _A) -> _A:
    base = view.base
    assert base is not None
    return base


class _KeyTable:
    """Keys to slots in compiled code (``kernels.key_lookup``): a batch's keys are joined
    into one buffer and looked up in one call, instead of a dict lookup per event. Mirrors
    ``_Part.index`` (which still answers membership and stats)."""

    MIN_SIZE = 1024  # entries (a power of two); the tests set it small to force rebuilds
    MIN_GARBAGE = 1 << 16  # bytes of removed keys below which the key bytes are kept

    def __init__(self, keys: Sequence[bytes | None] = ()) -> None:
        self.rebuild(keys)

    def rebuild(self, keys: Sequence[bytes | None]) -> None:
        live = [s for s, k in enumerate(keys) if k is not None]
        size = self.MIN_SIZE
        while size < 2 * (len(live) + 1):  # load <= 1/2 (add() rebuilds past it)
            size *= 2
        self.tab = np.zeros((size, 5), np.uint64)  # see kernels.key_lookup
        self.tab[:, 0] = np.uint64(2**64 - 1)  # -1: empty
        self.used = 0  # entries and deleted entries
        n = max(64, len(keys))
        self.koff = np.zeros(n, _I64)
        self.klen = np.zeros(n, _I64)
        lens = np.fromiter((len(k) if k is not None else 0 for k in keys), _I64, len(keys))
        self.klen[: len(keys)] = lens
        self.koff[: len(keys)] = np.cumsum(lens) - lens
        self.ktop = int(lens.sum())
        self.kb = np.zeros(max(64, 2 * self.ktop), np.uint8)
        self.kb[: self.ktop] = np.frombuffer(b"".join(k for k in keys if k is not None),
                                             np.uint8)  # fmt: skip
        self.garbage = 0
        self._insert(np.array(live, _I64))

    def _insert(self, slots: npt.NDArray[np.int64]) -> None:
        K.key_insert(slots, self.tab, self.kb, self.koff, self.klen)
        self.used += len(slots)

    def lookup(self, keys: Sequence[bytes]) -> tuple[npt.NDArray[np.int64], int]:
        q = np.frombuffer(b"".join(keys), np.uint8)
        qlen = np.fromiter(map(len, keys), _I64, len(keys))
        qstart = np.cumsum(qlen) - qlen
        out = np.empty(len(keys), _I64)
        missing = K.key_lookup(q, qstart, qlen, self.tab, self.kb, self.koff, out)
        return out, int(missing)

    def add(self, slots: list[int], keys: list[bytes], all_keys: Sequence[bytes | None]) -> None:
        """New keys at new slots (``all_keys``: every slot's key, these included)."""
        if not slots:
            return
        full = 2 * (self.used + len(slots)) > len(self.tab)
        if full or self.garbage > max(self.ktop // 2, self.MIN_GARBAGE):
            self.rebuild(all_keys)
            return
        need = max(slots) + 1
        if need > len(self.koff):
            n = max(need, 2 * len(self.koff))
            for name in ("koff", "klen"):
                a = getattr(self, name)
                b = np.zeros(n, _I64)
                b[: len(a)] = a
                setattr(self, name, b)
        raw = b"".join(keys)
        if self.ktop + len(raw) > len(self.kb):
            kb = np.zeros(max(2 * len(self.kb), self.ktop + len(raw)), np.uint8)
            kb[: self.ktop] = self.kb[: self.ktop]
            self.kb = kb
        self.kb[self.ktop : self.ktop + len(raw)] = np.frombuffer(raw, np.uint8)
        sl = np.array(slots, _I64)
        lens = np.fromiter(map(len, keys), _I64, len(keys))
        self.klen[sl] = lens
        self.koff[sl] = self.ktop + np.cumsum(lens) - lens
        self.ktop += len(raw)
        self._insert(sl)

    def nbytes(self) -> int:
        return int(self.tab.nbytes + self.kb.nbytes + self.koff.nbytes + self.klen.nbytes)

    def remove(self, slots: npt.NDArray[np.int64]) -> None:
        K.key_delete(slots, self.tab, self.kb, self.koff, self.klen)
        self.garbage += int(self.klen[slots].sum())


class _Part:
    """One partition's state."""

    def __init__(self, lay: _Layout, slots: int = 64, events: int = 256) -> None:
        self.lay = lay
        self.index: dict[bytes, int] = {}
        self.keys: list[bytes | None] = []
        self.free: list[int] = []
        self.gone: set[bytes] = set()  # keys evicted since the last changes()
        self.key_bytes = 0  # the keys' lengths, summed (stats() stays O(1))
        self.wm = 0
        self.has_wm = False
        self.closed_bound: int | None = None
        self.late = 0
        self.evicted = 0
        self.dropped = 0
        self.meta_dirty = False
        self.top = 0
        self.garbage = 0
        self.table = _KeyTable()
        self.ser_buf = np.empty(0, _I64)  # changes()' serialization buffer, kept
        self.sweep = True  # evict() must scan: late events may have left keys with no event
        self.min_first = 0  # no key's oldest event is older than this when sweep is False
        self._alloc_slots(slots)
        self._set_arena(*self._new_arena(events))

    # -- arrays --------------------------------------------------------------------------

    def _alloc_slots(self, n: int) -> None:
        # One row of 8-byte words per slot (a float view of the same buffer for the sums):
        # the kernel's reads of a cold key's slot are one or two cache lines, not twelve.
        lay = self.lay
        npr, nq = lay.npr, lay.nq
        w = 6 + 3 * npr + 2 * nq
        buf = np.zeros((n, w), _I64)
        fl = buf.view(_F64)
        self.slot_buf = buf
        self.off, self.capb, self.head, self.cnt, self.first = (buf[:, c] for c in range(5))
        # dirty flags apart: changes() scans them all each batch (100 kB, not every row)
        self.dirty = np.zeros(n, np.uint8)
        c = 5
        self.bsh = fl[:, c : c + 3 * npr : 3].T
        self.bsl = fl[:, c + 1 : c + 3 * npr : 3].T
        self.bc = buf[:, c + 2 : c + 3 * npr : 3].T
        c += 3 * npr
        self.bqh = fl[:, c : c + 2 * nq : 2].T
        self.bql = fl[:, c + 1 : c + 2 * nq : 2].T
        self.touched = buf[:, w - 1]  # plan()'s scratch, only read per batch

    def _grow_slots(self, n: int) -> None:
        old, dirty = self.slot_buf, self.dirty
        self._alloc_slots(n)
        self.slot_buf[: len(old)] = old
        self.dirty[: len(dirty)] = dirty

    def _new_arena(self, n: int) -> _Arena:
        # One row of 8-byte words per event: time, values, then per summed field its running
        # sum (hi, lo) and count, then per squared field (hi, lo). Views of one buffer, so a
        # cold key's event is one or two cache lines rather than one per array.
        buf = np.empty((n, self.lay.event_bytes // 8), _I64)
        buf.fill(0)  # touched now: not a page fault per 4 kB as relocations reach it later
        return self._views(buf)

    def _views(self, buf: _A) -> _Arena:
        lay = self.lay
        nf, npr, nq = lay.nf, lay.npr, lay.nq
        fl = buf.view(_F64)
        c = 1 + nf
        q = c + 3 * npr
        return (
            buf[:, 0],
            fl[:, 1:c].T,
            fl[:, c:q:3].T,
            fl[:, c + 1 : q : 3].T,
            fl[:, q : q + 2 * nq : 2].T,
            fl[:, q + 1 : q + 2 * nq : 2].T,
            buf[:, c + 2 : q : 3].T,
        )

    def _set_arena(self, *arrays: Any) -> None:
        self.T, self.V, self.PSh, self.PSl, self.PQh, self.PQl, self.PC = arrays
        blocks = len(self.T) // K.BLOCK + 1
        rows = self.lay.nf if self.lay.extremes else 0
        self.BMx = np.full((rows, blocks), np.nan)
        self.BMn = np.full((rows, blocks), np.nan)

    @property
    def rows(self) -> _A:
        """The arena's buffer, one row per event, that ``T``, ``V`` and the sums view."""
        return _rows(self.T)

    @property
    def arena(self) -> _Arena:
        return (self.T, self.V, self.PSh, self.PSl, self.PQh, self.PQl, self.PC)

    @property
    def bases(self) -> _Bases:
        return (self.bsh, self.bsl, self.bqh, self.bql, self.bc)

    def reserve(self, extra: int) -> None:
        """Room for ``extra`` more events at the arena's top."""
        size = len(self.T)
        if self.top + extra <= size:
            return
        # In place: realloc moves a large buffer's pages rather than copying them, and only
        # the new rows are touched (numpy zeroes them). The old views would point into the
        # freed buffer: the part's views are all made again from it at once.
        buf = self.rows
        assert buf.flags.owndata and buf.flags.c_contiguous
        self.T = self.V = self.PSh = self.PSl = self.PQh = self.PQl = self.PC = _GONE
        buf.resize((max(2 * size, self.top + extra), buf.shape[1]), refcheck=False)
        bmx, bmn = self.BMx, self.BMn
        self._set_arena(*self._views(buf))
        self.BMx[:, : bmx.shape[1]] = bmx
        self.BMn[:, : bmn.shape[1]] = bmn

    def maybe_compact(self) -> None:
        if self.garbage <= max(self.top // 2, COMPACT_MIN):
            return
        n = len(self.keys)
        sizes = K.compact_sizes(n, self.cnt, self.capb)
        new = self._new_arena(max(256, int(sizes.sum()) * 3 // 2))
        self.top = K.compact(sizes, self.off, self.capb, self.head, self.cnt, *self.arena, *new)
        self._set_arena(*new)
        K.rebuild_blocks(n, self.head, self.cnt, self.capb, self.V, self.BMx, self.BMn)
        self.garbage = 0

    # -- keys ----------------------------------------------------------------------------

    def slots_for(self, keys: Sequence[bytes]) -> npt.NDArray[np.int64]:
        sl, missing = self.table.lookup(keys)
        if missing:
            new_slots: list[int] = []
            new_keys: list[bytes] = []
            index = self.index
            for i in np.flatnonzero(sl < 0).tolist():
                k = keys[i]
                s = index.get(k, -1)  # a new key twice in the batch
                if s == -1:
                    s = self._new_slot(k)
                    new_slots.append(s)
                    new_keys.append(k)
                sl[i] = s
            self.table.add(new_slots, new_keys, self.keys)
        return sl

    def _new_slot(self, key: bytes) -> int:
        if self.free:
            s = self.free.pop()
            self.keys[s] = key
        else:
            s = len(self.keys)
            if s == len(self.off):
                self._grow_slots(2 * s)
            self.keys.append(key)
        self.index[key] = s
        self.key_bytes += len(key)
        return s

    def release(self, slots: npt.NDArray[np.int64], evicted: bool) -> None:
        self.table.remove(slots)
        for s in slots.tolist():
            key = self.keys[s]
            assert key is not None
            del self.index[key]
            self.key_bytes -= len(key)
            self.keys[s] = None
            self.free.append(s)
            if evicted:
                self.gone.add(key)
                self.evicted += 1

    def nbytes(self) -> int:
        arrays = (self.rows, self.slot_buf, self.dirty, self.BMx, self.BMn)
        return (
            int(sum(a.nbytes for a in arrays))
            + self.table.nbytes()
            + self.key_bytes
            + _KEY_OVERHEAD * len(self.index)
        )


class CompiledStore:
    """A :class:`~streamproc.features.api.WindowStore` whose work per batch is compiled."""

    def __init__(self, spec: FeaturesSpec) -> None:
        self.spec = spec
        self._lay = _Layout(spec)
        self._parts: dict[int, _Part] = {}
        self.prefetch = PREFETCH

    def warm(self) -> float:
        """Compile the kernels (or load them from numba's cache) now, not in the first
        batch: a throwaway store runs a batch, a changelog and a restore. Returns seconds."""
        t0 = time.perf_counter()
        scratch = CompiledStore(self.spec)
        t = np.array([0, 1, 1], _I64)
        vals = {f: np.array([1.0, np.nan, 2.0]) for f in self._lay.fields}
        scratch.process(0, [b"a", b"b", b"a"], t, vals)
        later = np.array([self.spec.max_window_ms * 3], _I64)  # closes windows, evicts
        scratch.process(0, [b"a"], later, {f: v[:1] for f, v in vals.items()})
        CompiledStore(self.spec).restore(0, scratch.changes(0))
        return time.perf_counter() - t0

    def _part(self, partition: int) -> _Part:
        p = self._parts.get(partition)
        if p is None:
            p = self._parts[partition] = _Part(self._lay)
        return p

    def process(
        self,
        partition: int,
        keys: Sequence[bytes],
        event_time_ms: npt.NDArray[np.int64],
        values: Mapping[str, npt.NDArray[np.float64]],
    ) -> FeatureResult:
        p = self._part(partition)
        lay = self._lay
        n = len(keys)
        out = np.empty((n, len(lay.codes)), _F64)
        late = np.zeros(n, np.bool_)
        if n:
            cap = self.spec.max_events_per_key
            p.maybe_compact()
            slots = p.slots_for(keys)
            times = np.ascontiguousarray(event_time_ms, dtype=_I64)
            vals = np.empty((lay.nf, n), _F64)
            for f, name in enumerate(lay.fields):
                vals[f] = values[name]
            grow, size = K.plan(slots, p.cnt, p.capb, cap, p.touched)
            if len(grow):
                p.reserve(int(size.sum()))
                p.top, freed = K.relocate(grow, size, p.top, p.off, p.capb, p.head, p.cnt,
                                          *p.arena, p.BMx, p.BMn, p.rows)  # fmt: skip
                p.garbage += freed
            wm, has_wm, n_late, dropped = K.process(
                slots, times, vals, lay.codes, lay.vfield, lay.prow, lay.qrow_of_def,
                lay.units, lay.wtype, lay.wsize, lay.wstep, lay.pfield, lay.qrow, p.wm,
                p.has_wm, self.spec.allowed_lateness_ms, cap, p.off, p.capb, p.head, p.cnt,
                p.dirty, *p.arena, *p.bases, p.first, p.BMx, p.BMn, out, late, lay.dorder,
                self.prefetch,
            )  # fmt: skip
            p.wm, p.has_wm = int(wm), bool(has_wm)
            p.min_first = min(p.min_first, int(times.min()))  # a key's oldest may be new
            p.sweep = p.sweep or bool(n_late)  # a key seen only late holds no event
            p.late += int(n_late)
            p.dropped += int(dropped)
            p.meta_dirty = True
        closed = self._close(p)
        self._evict(p)
        return FeatureResult(out, late, closed)

    def _close(self, p: _Part) -> list[ClosedWindow]:
        if not p.has_wm:
            return []
        bound = p.wm - self.spec.allowed_lateness_ms
        before = p.closed_bound
        p.closed_bound = bound
        lay = self._lay
        if not len(lay.closing) or (before is not None and bound <= before):
            return []
        z = np.empty(0, _I64)
        args: tuple[Any, ...] = (
            before or 0, before is not None, bound, len(p.keys), lay.closing, lay.codes,
            lay.vfield, lay.prow, lay.qrow_of_def, lay.units, lay.wsize, lay.wstep,
            self.spec.max_events_per_key, p.head, p.cnt, p.capb, *p.arena, *p.bases, p.BMx,
            p.BMn,
        )  # fmt: skip
        k = K.close(False, *args, z, z, z, np.empty(0, _F64), z)  # type: ignore[call-arg]
        if not k:
            return []
        o_def, o_slot, o_start, o_events = (np.empty(k, _I64) for _ in range(4))
        o_value = np.empty(k, _F64)
        K.close(True, *args, o_def, o_slot, o_start, o_value, o_events)  # type: ignore[call-arg]
        names = self.spec.names
        keys = p.keys
        closed = [
            ClosedWindow(names[j], keys[s], st, st + int(lay.wsize[j]), v, e)  # type: ignore[arg-type]
            for j, s, st, v, e in zip(o_def.tolist(), o_slot.tolist(), o_start.tolist(),
                                      o_value.tolist(), o_events.tolist(), strict=True)
        ]  # fmt: skip
        order = {name: i for i, name in enumerate(names)}
        closed.sort(key=lambda c: (order[c.feature], c.key, c.start_ms))
        return closed

    def _evict(self, p: _Part) -> None:
        if not p.has_wm:
            return
        cut = p.wm - self.spec.allowed_lateness_ms - self.spec.max_window_ms
        if not p.sweep and cut < p.min_first:  # nothing to evict: no scan of every slot
            return
        gone, orphans, freed, oldest = K.evict(
            cut, len(p.keys), p.off, p.capb, p.head, p.cnt, p.dirty, p.T, p.PSh, p.PSl, p.PQh,
            p.PQl, p.PC, *p.bases, p.first,
        )  # fmt: skip
        p.garbage += int(freed)
        p.sweep = False
        p.min_first = int(oldest)
        if len(gone):
            p.release(gone, evicted=True)
        if len(orphans):
            p.release(orphans, evicted=False)

    # -- changelog ---------------------------------------------------------------------------

    def changes(self, partition: int, prefix: bytes = b"") -> list[tuple[bytes, bytes | None]]:
        p = self._part(partition)
        nf = self._lay.nf
        sel = np.flatnonzero(p.dirty[: len(p.keys)]).astype(_I64)
        p.dirty[sel] = 0
        # A prefix of whole words is written into the buffer ahead of each value, so that
        # each value is one copy out of it; any other prefix is joined to each value.
        pw = len(prefix) // 8 if len(prefix) % 8 == 0 else 0
        words = pw + 1 + p.cnt[sel] * (1 + nf)
        ends = np.cumsum(words)
        starts = ends - words
        total = int(ends[-1]) if len(ends) else 0
        if len(p.ser_buf) < total:  # kept: a fresh buffer of megabytes page-faults each batch
            p.ser_buf = np.empty(max(total, 2 * len(p.ser_buf)), _I64)
        buf = p.ser_buf
        K.serialize(sel, p.head, p.cnt, p.T, p.V, buf, buf.view(_F64), starts + pw)
        for w, word in enumerate(np.frombuffer(prefix, _I64) if pw else ()):
            buf[starts + w] = word
        # One copy of the buffer, then one bytes object per key (a slice of it), with the
        # per-key loop in C (map): the Python work per key is what this costs.
        blob = buf[:total].tobytes()
        values = list(map(blob.__getitem__, map(slice, (8 * starts).tolist(),
                                                (8 * ends).tolist())))  # fmt: skip
        if prefix and not pw:
            values = [prefix + v for v in values]
        out: list[tuple[bytes, bytes | None]] = list(
            zip(map(p.keys.__getitem__, sel.tolist()), values, strict=True)  # type: ignore[arg-type]
        )
        index = p.index
        out.extend((k, None) for k in p.gone if k not in index)
        p.gone.clear()
        if out or p.meta_dirty:
            meta = [p.wm if p.has_wm else None, p.closed_bound, p.late, p.evicted, p.dropped]
            out.append((_META, prefix + json.dumps(meta).encode()))
        p.meta_dirty = False
        return out

    def restore(self, partition: int, entries: Iterable[tuple[bytes, bytes | None]]) -> int:
        lay = self._lay
        latest: dict[bytes, bytes | None] = {}
        meta: bytes | None = None
        n = 0
        for key, state in entries:
            n += 1
            if key == _META:
                meta = state
            else:
                latest[key] = state
        keys = [k for k, v in latest.items() if v is not None]
        blobs = [v for v in latest.values() if v is not None]
        p = _Part(lay, slots=max(64, len(keys)), events=64)
        raw = b"".join(blobs)
        words = np.frombuffer(raw, _I64)
        lens = np.fromiter(map(len, blobs), _I64, len(blobs)) // 8
        starts = np.cumsum(lens) - lens
        sizes = K.restore_sizes(words, starts)
        # Room for the relocations of the next batches: an arena that grows doubles, and
        # first touching that much memory mid-stream stalls the batches that meet it
        # (benchmarks/README.md, "windows.py"); a restore does it before the first event.
        p.reserve(int(sizes.sum()) * 2)
        p.top = K.restore_fill(words, words.view(_F64), starts, sizes, lay.pfield, lay.qrow,
                               p.off, p.capb, p.head, p.cnt, *p.arena, *p.bases,
                               p.first)  # fmt: skip
        K.rebuild_blocks(len(keys), p.head, p.cnt, p.capb, p.V, p.BMx, p.BMn)
        p.keys = list(keys)
        p.index = dict(zip(keys, range(len(keys)), strict=True))
        p.table.rebuild(p.keys)
        p.key_bytes = sum(map(len, keys))
        if meta is not None:
            wm, p.closed_bound, p.late, p.evicted, p.dropped = json.loads(meta)
            p.has_wm = wm is not None
            p.wm = wm or 0
        self._parts[partition] = p
        return n

    def revoke(self, partition: int) -> None:
        self._parts.pop(partition, None)

    def stats(self, partition: int) -> StoreStats:
        p = self._part(partition)
        return StoreStats(
            keys=len(p.index),
            bytes=p.nbytes(),
            late_events=p.late,
            evicted_keys=p.evicted,
            watermark_ms=p.wm if p.has_wm else None,
            dropped_events=p.dropped,
        )
