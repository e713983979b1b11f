"""Avro object container files read block by block, without a Python object per record.

A container is a header (``Obj\\x01``, a metadata map holding ``avro.schema`` and
``avro.codec``, a 16-byte sync marker) then blocks: a record count, a byte size, that many
bytes of datums laid end to end (compressed by the codec), the sync marker again.

:func:`read_blocks` yields each block's datums decompressed. Datums carry no length, so
where one ends is found by walking it: :func:`split_block` runs a compiled walk over the
block (the decoder's own program for the writer schema, :mod:`streamproc.codecs.program`,
with every field skipped but the key) and returns each record's start and end, and the
key's place when one is asked for. :func:`frame_block` then lays the records out as
Confluent-framed payloads in one buffer (:class:`FramedValues`), which the compiled decoder
takes as it is (:func:`streamproc.codecs.compiled.pack`): no ``bytes`` per record.

A record that cannot be walked (its block is corrupt) keeps the rest of the block as its
bytes, so the decoder gives it its reason (TRUNCATED, CORRUPT, TRAILING_BYTES); the records
the block says follow it cannot be found and have an empty body (TRUNCATED).
"""

from __future__ import annotations

import bz2
import contextlib
import io
import json
import logging
import lzma
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, overload

import numpy as np
import numpy.typing as npt
from numba import njit

from streamproc.codecs.kernel import TRUNCATED, gather_ids, next_block, read_varint
from streamproc.codecs.program import (
    D_ID,
    D_SYM_ID,
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
    OP_STR,
    OP_UNION,
    Program,
)
from streamproc.errors import StreamprocError
from streamproc.types import JoinedKeys

log = logging.getLogger(__name__)

MAGIC = b"Obj\x01"
HEADER_SIZE = 5  # Confluent framing: magic byte + schema id
WALK_OK, WALK_BAD = 0, 1


class ContainerError(StreamprocError):
    """The file is not an Avro container, or its blocks are not where they should be."""


def decompressor(codec: str) -> Any:
    """``bytes -> bytes`` for a container's codec (null, deflate, bzip2, xz, snappy, zstandard)."""
    if codec == "null":
        return lambda b: b
    if codec == "deflate":
        return lambda b: zlib.decompress(b, -15)
    if codec == "bzip2":
        return bz2.decompress
    if codec == "xz":
        return lzma.decompress
    if codec == "snappy":  # 4-byte big-endian CRC32 of the uncompressed data after it
        import cramjam

        def snappy(b: bytes) -> bytes:
            data = bytes(cramjam.snappy.decompress_raw(b[:-4]))
            if zlib.crc32(data) != int.from_bytes(b[-4:], "big"):
                raise ContainerError("snappy block fails its CRC32")
            return data

        return snappy
    if codec == "zstandard":
        import cramjam

        return lambda b: bytes(cramjam.zstd.decompress(b))
    raise ContainerError(f"Avro codec {codec!r} is not supported")


def compressor(codec: str) -> Any:
    """``bytes -> bytes`` for an output codec: null, deflate (raw, level 1) or snappy.

    Deflate at level 1, not zlib's default 6: on prediction records the output is a few
    percent larger and takes a fraction of the time (benchmarks/RESULTS.md, "Backfill").
    """
    if codec == "null":
        return lambda b: b
    if codec == "deflate":
        import cramjam

        # Raw deflate (RFC 1951, no zlib header), as the Avro spec says.
        return lambda b: bytes(cramjam.deflate.compress(b, level=1))
    if codec == "snappy":
        import cramjam

        return lambda b: bytes(cramjam.snappy.compress_raw(b)) + zlib.crc32(b).to_bytes(4, "big")
    raise ContainerError(f"Avro output codec {codec!r} is not supported (null, deflate, snappy)")


def _long(f: IO[bytes]) -> int | None:
    """A zig-zag varint from ``f``; None at end of file before its first byte."""
    z = shift = 0
    while True:
        c = f.read(1)
        if not c:
            if shift == 0:
                return None
            raise ContainerError("file ends inside a number")
        b = c[0]
        z |= (b & 0x7F) << shift
        if b < 0x80:
            return (z >> 1) ^ -(z & 1)
        shift += 7


def _need_long(f: IO[bytes]) -> int:
    v = _long(f)
    if v is None:
        raise ContainerError("file ends inside its header")
    return v


@dataclass
class Header:
    schema: Any
    codec: str
    sync: bytes


def read_header(f: IO[bytes]) -> Header:
    """The header of a container, ``f`` left at its first block."""
    start = f.tell()
    head = io.BytesIO(f.read(1 << 16))  # parsed in memory, not a read(1) a byte
    try:
        out = _read_header(head)
    except ContainerError:
        if len(head.getbuffer()) < 1 << 16:
            raise
        f.seek(start)  # a header over 64 kB: from the file itself
        return _read_header(f)
    f.seek(start + head.tell())
    return out


def _read_header(f: IO[bytes]) -> Header:
    if f.read(4) != MAGIC:
        raise ContainerError("not an Avro object container file (no Obj\\x01)")
    meta: dict[str, bytes] = {}
    while True:
        n = _need_long(f)
        if n == 0:
            break
        if n < 0:
            n = -n
            _need_long(f)  # the block's byte size
        for _ in range(n):
            k = f.read(_need_long(f)).decode()
            meta[k] = f.read(_need_long(f))
    sync = f.read(16)
    if len(sync) != 16 or "avro.schema" not in meta:
        raise ContainerError("Avro container header without its schema or sync marker")
    codec = meta.get("avro.codec", b"null").decode() or "null"
    return Header(json.loads(meta["avro.schema"]), codec, sync)


def read_blocks(f: IO[bytes], header: Header) -> Iterator[tuple[int, bytes]]:
    """Each block after the header: (record count, its datums as stored: compressed by
    the header's codec, see :func:`decompressor`). The file is mapped, not read byte by
    byte (a seekable file); otherwise it is read through."""
    import mmap

    try:
        mm: Any = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, io.UnsupportedOperation):  # not a file: its bytes
        mm = f.read()
        pos = 0
    else:
        pos = f.tell()
    try:
        yield from _blocks(mm, pos, header.sync)
    finally:
        if isinstance(mm, mmap.mmap):
            with contextlib.suppress(BufferError):  # a view still out: the GC closes it
                mm.close()


def _blocks(buf: Any, pos: int, sync: bytes) -> Iterator[tuple[int, bytes]]:
    """The blocks from ``pos``: their headers found by :func:`scan_blocks` a chunk at a time."""
    arr = np.frombuffer(buf, np.uint8)
    want = np.frombuffer(sync, np.uint8)
    counts = np.empty(1024, np.int64)
    starts = np.empty(1024, np.int64)
    sizes = np.empty(1024, np.int64)
    try:
        while pos < arr.shape[0]:
            n, pos, bad = scan_blocks(arr, pos, want, counts, starts, sizes)
            for c, s, z in zip(counts[:n].tolist(), starts[:n].tolist(), sizes[:n].tolist(),
                               strict=True):  # fmt: skip
                yield c, buf[s : s + z]
            if bad:
                raise ContainerError("a block is cut short, negative, or its sync marker is wrong")
    finally:
        del arr  # no view left on a mapped file: it can be closed


@njit(cache=True, nogil=True)
def scan_blocks(buf, pos, sync, counts, starts, sizes):  # type: ignore[no-untyped-def]
    """Block headers from ``pos`` (count, where the data starts, its size), each checked
    against its sync marker, until the arrays are full or the file ends; returns (blocks
    found, position after them, 1 when the next block is not whole)."""
    end = buf.shape[0]
    n = 0
    while pos < end and n < counts.shape[0]:
        c, p, err = read_varint(buf, pos, end)
        if err != 0:
            return n, pos, 1
        z, p, err = read_varint(buf, p, end)
        if err != 0 or c < 0 or z < 0 or z + 16 > end - p:
            return n, pos, 1
        for k in range(16):
            if buf[p + z + k] != sync[k]:
                return n, pos, 1
        counts[n] = c
        starts[n] = p
        sizes[n] = z
        n += 1
        pos = p + z + 16
    return n, pos, 0


def count_records(f: IO[bytes]) -> int:
    """Records in a container: the blocks' counts, nothing decompressed."""
    header = read_header(f)
    return sum(count for count, _ in read_blocks(f, header))


# -- the walk ------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def walk(buf, count, ops, tables, max_depth, starts, ends, key_off, key_len):  # type: ignore[no-untyped-def]
    """Walk ``count`` datums laid end to end in ``buf`` with a program's ops (values are
    skipped; a string marked as the event id is the key). Fills starts/ends/key_*; returns
    (records walked whole, WALK_OK or WALK_BAD). Structural checks only: lengths, union
    branches, bounds."""
    end = buf.shape[0]
    st_pc = np.zeros(max_depth + 1, np.int64)
    st_rem = np.zeros(max_depth + 1, np.int64)
    pos = np.int64(0)
    for r in range(count):
        starts[r] = pos
        key_off[r] = 0
        key_len[r] = -1
        pc = 0
        sp = 0
        code = 0
        while True:
            op = ops[pc, 0]
            if op == OP_END:
                break
            dk = ops[pc, 1]
            if op == OP_LONG or op == OP_ENUM:
                _, pos, code = read_varint(buf, pos, end)
                if code != 0:
                    break
                pc += 1
            elif op == OP_DOUBLE or op == OP_FLOAT or op == OP_BOOL:
                w = 8 if op == OP_DOUBLE else (4 if op == OP_FLOAT else 1)
                if end - pos < w:
                    code = TRUNCATED
                    break
                pos += w
                pc += 1
            elif op == OP_STR:
                n, pos, code = read_varint(buf, pos, end)
                if code != 0:
                    break
                if n < 0 or n > end - pos:
                    code = TRUNCATED
                    break
                if dk == D_ID or dk == D_SYM_ID:
                    key_off[r] = pos
                    key_len[r] = n
                pos += n
                pc += 1
            elif op == OP_UNION:
                idx, pos, code = read_varint(buf, pos, end)
                if code != 0:
                    break
                nb = ops[pc, 1]
                if idx < 0:
                    idx += nb
                if idx < 0 or idx >= nb:
                    code = TRUNCATED
                    break
                target = tables[ops[pc, 2] + idx]
                if target < 0:
                    code = TRUNCATED
                    break
                pc = target
            elif op == OP_JUMP:
                pc = dk
            elif op == OP_ARR:
                n, pos, code = next_block(buf, pos, end, ops[pc, 2])
                if code != 0:
                    break
                if n == 0:
                    pc = ops[pc, 1]
                else:
                    st_pc[sp] = pc
                    st_rem[sp] = n
                    sp += 1
                    pc += 1
            elif op == OP_ARR_NEXT:
                top = sp - 1
                st_rem[top] -= 1
                if st_rem[top] == 0:
                    arr = st_pc[top]
                    n, pos, code = next_block(buf, pos, end, ops[arr, 2])
                    if code != 0:
                        break
                    if n == 0:
                        sp -= 1
                        pc += 1
                        continue
                    st_rem[top] = n
                pc = st_pc[top] + 1
            elif op == OP_FIXED:
                if end - pos < dk:
                    code = TRUNCATED
                    break
                pos += dk
                pc += 1
            else:  # defaults (SET*): nothing to read
                pc += 1
        if code != 0:
            # This record keeps the rest of the block; those after it cannot be found.
            ends[r] = end
            key_len[r] = -1
            for q in range(r + 1, count):
                starts[q] = end
                ends[q] = end
                key_len[q] = -1
            return r, WALK_BAD
        ends[r] = pos
    if count > 0 and pos != end:  # bytes after the last record: it is the one at fault
        ends[count - 1] = end
        return count - 1, WALK_BAD
    return count, WALK_OK


@njit(cache=True, nogil=True)
def strip(buf, ends, cut, out):  # type: ignore[no-untyped-def]
    """Records laid end to end (``ends``) without the first ``cut`` bytes of each."""
    pos = 0
    start = 0
    for i in range(ends.shape[0]):
        s = start + cut
        n = ends[i] - s
        if n > 0:
            out[pos : pos + n] = buf[s : s + n]
            pos += n
        start = ends[i]
    return pos


# -- framed records in one buffer ------------------------------------------------------------


class FramedValues(Sequence[bytes]):
    """Confluent-framed payloads without the copy: datums laid end to end in ``raw``
    (``starts``/``ends``), all framed by the same ``head`` (magic byte and writer schema
    id). A ``RawBatch.values`` that the compiled decoder reads in place, its header known
    (:func:`streamproc.codecs.compiled.pack`); an item is only made into ``bytes``, header
    and datum, when asked for (a dead letter)."""

    __slots__ = ("buf", "ends", "head", "raw", "schema_id", "starts")

    def __init__(
        self, raw: bytes, starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64], head: bytes
    ) -> None:
        self.raw = raw
        self.buf = np.frombuffer(raw, np.uint8)
        self.starts = starts
        self.ends = ends
        self.head = head
        self.schema_id = int.from_bytes(head[1:5], "big", signed=True)

    def view(self, i: int, j: int) -> FramedValues:
        return FramedValues(self.raw, self.starts[i:j], self.ends[i:j], self.head)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    @overload
    def __getitem__(self, i: int) -> bytes: ...

    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.head + self.raw[int(self.starts[i]) : int(self.ends[i])]

    def __iter__(self) -> Iterator[bytes]:
        raw, head = self.raw, self.head
        for s, e in zip(self.starts.tolist(), self.ends.tolist(), strict=True):
            yield head + raw[s:e]


@dataclass
class Split:
    """One block's records: framed values, and where each key is in ``values.raw``
    (``key_len`` -1: none)."""

    values: FramedValues
    key_off: npt.NDArray[np.int64]
    key_len: npt.NDArray[np.int64]
    walked: int  # records found whole; those after them are dead letters
    ok: bool


class Walker:
    """The walk for one writer schema: its specialised kernel (:func:`walk_source`) when
    it compiled, else :func:`walk` interpreting the program."""

    def __init__(self, program: Program, fn: Callable[..., tuple[int, int]] | None = None):
        self.program = program
        self.fn = fn

    def __call__(self, buf: Any, count: int, *out: Any) -> tuple[int, int]:
        if self.fn is not None:
            return self.fn(buf, count, *out)
        p = self.program
        return walk(buf, count, p.ops, p.tables, p.max_depth, *out)  # type: ignore[no-any-return]


def specialised_walker(writer: Any, key_path: tuple[str, ...] | None, program: Program) -> Walker:
    """A :class:`Walker` with its kernel compiled (or loaded from the kernel cache); the
    interpreted walk when that fails."""
    import hashlib

    from streamproc.codecs.kernel_cache import Specialiser

    src = walk_source(writer, key_path)
    name = "streamproc_walk_" + hashlib.sha256(src.encode()).hexdigest()[:24]
    try:
        fn = Specialiser().load_module(name, src).walk
        fn(np.zeros(0, np.uint8), 0, *(np.zeros(0, np.int64) for _ in range(4)))  # compiles
    except Exception:  # a generator bug must not stop the job: interpret instead
        log.exception("the specialised walk did not compile; interpreting")
        return Walker(program)
    return Walker(program, fn)


def split_block(data: bytes, count: int, prog: Walker, head: bytes) -> Split:
    """Find the ``count`` records of a decompressed block; ``head`` frames them."""
    buf = np.frombuffer(data, np.uint8)
    starts = np.empty(count, np.int64)
    ends = np.empty(count, np.int64)
    key_off = np.empty(count, np.int64)
    key_len = np.empty(count, np.int64)
    walked, code = prog(buf, count, starts, ends, key_off, key_len)
    return Split(FramedValues(data, starts, ends, head), key_off, key_len, int(walked),
                 code == WALK_OK)  # fmt: skip


def keys(
    raw: bytes, key_off: npt.NDArray[np.int64], key_len: npt.NDArray[np.int64]
) -> list[bytes | None]:
    """The keys at ``key_off``/``key_len`` in ``raw``: a :class:`JoinedKeys` (one buffer,
    one split) when every record has one, UTF-8 without NUL; else a list."""
    n = key_off.shape[0]
    if n and (key_len >= 0).all():
        scratch = np.empty(int(key_len.sum()) + n, np.uint8)
        starts = np.empty(n + 1, np.int64)
        w = gather_ids(np.frombuffer(raw, np.uint8), key_off, key_len, scratch, starts)
        if w >= 0:
            joined = scratch[:w].tobytes()
            try:
                joined.decode("utf-8")
                return JoinedKeys(joined, n)  # type: ignore[return-value]
            except UnicodeDecodeError:
                pass
    pairs = zip(key_off.tolist(), key_len.tolist(), strict=True)
    return [raw[s : s + k] if k >= 0 else None for s, k in pairs]


# -- the walk, specialised -----------------------------------------------------------------


class _Gen:
    """Python source walking one record of a writer schema: the tree written out (records
    as sequences, unions as ``if``/``elif``, arrays and maps as loops), as
    :mod:`streamproc.codecs.specialise` writes the decoder; :func:`walk` interprets the
    same walk from a program."""

    def __init__(self, key_path: tuple[str, ...] | None) -> None:
        self.key_path = key_path
        self.lines: list[str] = []
        self.n = 0

    def w(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def var(self, stem: str) -> str:
        self.n += 1
        return f"{stem}{self.n}"

    def varint(self, d: int, target: str) -> None:
        self.w(d, f"{target}, pos, code = read_varint(buf, pos, end)")
        self.w(d, "if code != 0:")
        self.w(d + 1, "return pos, code")

    def skip_varint(self, d: int) -> None:
        self.w(d, "while True:")
        self.w(d + 1, "if pos >= end:")
        self.w(d + 2, "return pos, TRUNCATED")
        self.w(d + 1, "pos += 1")
        self.w(d + 1, "if buf[pos - 1] < 0x80:")
        self.w(d + 2, "break")

    def fixed(self, d: int, size: int) -> None:
        self.w(d, f"if end - pos < {size}:")
        self.w(d + 1, "return pos, TRUNCATED")
        self.w(d, f"pos += {size}")

    def node(self, n: Any, d: int, path: tuple[str, ...] | None) -> None:
        k = n.kind
        if k == "null":
            return
        if k == "boolean":
            self.fixed(d, 1)
        elif k in ("int", "long", "enum"):
            self.skip_varint(d)
        elif k == "float":
            self.fixed(d, 4)
        elif k == "double":
            self.fixed(d, 8)
        elif k == "fixed":
            self.fixed(d, n.size)
        elif k in ("string", "bytes"):
            ln = self.var("n")
            self.varint(d, ln)
            self.w(d, f"if {ln} < 0 or {ln} > end - pos:")
            self.w(d + 1, "return pos, TRUNCATED")
            if path is not None and path == self.key_path:
                self.w(d, "key_off[r] = pos")
                self.w(d, f"key_len[r] = {ln}")
            self.w(d, f"pos += {ln}")
        elif k == "record":
            for f in n.fields:
                self.node(f.type, d, None if path is None else (*path, f.name))
        elif k == "union":
            idx = self.var("u")
            self.varint(d, idx)
            nb = len(n.branches)
            self.w(d, f"if {idx} < 0:")
            self.w(d + 1, f"{idx} += {nb}")
            for i, b in enumerate(n.branches):
                self.w(d, f"{'if' if i == 0 else 'elif'} {idx} == {i}:")
                before = len(self.lines)
                self.node(b, d + 1, path)
                if len(self.lines) == before:
                    self.w(d + 1, "pass")
            self.w(d, "else:")
            self.w(d + 1, "return pos, TRUNCATED")
        elif k in ("array", "map"):
            cnt, size, loop = self.var("c"), self.var("s"), self.var("i")
            self.w(d, "while True:")
            self.varint(d + 1, cnt)
            self.w(d + 1, f"if {cnt} == 0:")
            self.w(d + 2, "break")
            self.w(d + 1, f"if {cnt} < 0:  # a block with its byte size: jumped over")
            self.varint(d + 2, size)
            self.w(d + 2, f"if {size} < 0 or {size} > end - pos:")
            self.w(d + 3, "return pos, TRUNCATED")
            self.w(d + 2, f"pos += {size}")
            self.w(d + 2, "continue")
            self.w(d + 1, f"for {loop} in range({cnt}):")
            if k == "map":
                self.node(_STRING, d + 2, None)
            before = len(self.lines)
            self.node(n.items, d + 2, None)
            if len(self.lines) == before:
                self.w(d + 2, "pass")
        else:  # pragma: no cover - tree.build makes no other kinds
            raise ValueError(f"cannot walk {k}")


class _Str:
    kind = "string"


_STRING = _Str()


def walk_source(writer: Any, key_path: tuple[str, ...] | None) -> str:
    """A module with ``walk`` (the signature of :func:`walk`, less the program) for records
    of ``writer`` (a :class:`~streamproc.codecs.tree.Node`, not recursive)."""
    g = _Gen(key_path)
    g.node(writer, 1, ())
    body = "\n".join(g.lines) or "    pass"
    return f"""# streamproc specialised container walk
import numpy as np
from numba import njit

from streamproc.codecs.kernel import TRUNCATED, read_varint


@njit(cache=True, nogil=True)
def record(buf, pos, end, r, key_off, key_len):
    code = 0
{body}
    return pos, code


@njit(cache=True, nogil=True)
def walk(buf, count, starts, ends, key_off, key_len):
    end = buf.shape[0]
    pos = np.int64(0)
    for r in range(count):
        starts[r] = pos
        key_off[r] = 0
        key_len[r] = -1
        pos, code = record(buf, pos, end, r, key_off, key_len)
        if code != 0:
            ends[r] = end
            key_len[r] = -1
            for q in range(r + 1, count):
                starts[q] = end
                ends[q] = end
                key_len[q] = -1
            return r, 1
        ends[r] = pos
    if count > 0 and pos != end:
        ends[count - 1] = end
        return count - 1, 1
    return count, 0
"""
