"""Route events to the stable or candidate version by a stable hash of their key.

Each key falls into one of :data:`BUCKETS` buckets by a 64-bit FNV-1a hash of
``salt + key`` finished with the murmur3 ``fmix64`` mixer, computed for all keys of a
batch in one compiled pass. The hash is defined on bytes alone, so every process on every
machine puts a key in the same bucket (Python's ``hash()`` is salted per process and is not
used). The salt is ``"<model>:<candidate>"``: a key keeps its variant for the whole
rollout, each rollout samples different keys, and since a key is on the candidate when
its bucket is below ``percent * 100``, raising the share in a gradual rollout only adds
keys — no key flips back.

>>> bucket_of(b"acct-42", b"fraud:1.1.0") == int(buckets([b"acct-42"], b"fraud:1.1.0")[0])
True
>>> from streamproc.rollout.state import Deploy, Strategy, StrategyParams, apply
>>> s = apply(None, Deploy("fraud", "1.0.0", at_ms=0))
>>> s = apply(s, Deploy("fraud", "1.1.0", Strategy.CANARY, StrategyParams(percent=10), at_ms=1))
>>> a = assign([f"acct-{i}".encode() for i in range(10_000)], s)
>>> round(float(a.variant.mean()), 2), a.shadow, a.versions
(0.1, False, ('1.0.0', '1.1.0'))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
from numba import njit

from streamproc.errors import DeploymentError
from streamproc.rollout.state import DeploymentState

BUCKETS = 10_000
STABLE, CANDIDATE = 0, 1

_MASK = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_M1, _M2 = 0xFF51AFD7ED558CCD, 0xC4CEB93FE53D3F4D


def _fnv_scalar(data: bytes, h: int = _FNV_OFFSET) -> int:
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def _fmix_scalar(h: int) -> int:
    h ^= h >> 33
    h = (h * _M1) & _MASK
    h ^= h >> 33
    h = (h * _M2) & _MASK
    return h ^ (h >> 33)


def bucket_of(key: bytes, salt: bytes = b"") -> int:
    """The bucket of one key: the plain-Python reference for :func:`buckets`.

    >>> bucket_of(b"acct-00000001", b"fraud:1.1.0"), bucket_of(b"", b"")
    (1325, 5190)
    """
    return _fmix_scalar(_fnv_scalar(key, _fnv_scalar(salt))) % BUCKETS


def buckets(keys: Sequence[bytes], salt: bytes = b"") -> npt.NDArray[np.int64]:
    """Bucket of every key: one compiled pass over the batch's keys, laid end to end."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=n)
    data = np.frombuffer(b"".join(keys), dtype=np.uint8)
    out = np.empty(n, dtype=np.int64)
    _buckets_kernel(data, lengths, np.uint64(_fnv_scalar(salt)), out)
    return out


_U_PRIME = np.uint64(_FNV_PRIME)
_U_M1, _U_M2 = np.uint64(_M1), np.uint64(_M2)
_U_33, _U_BUCKETS = np.uint64(33), np.uint64(BUCKETS)


@njit(cache=True, nogil=True)
def _buckets_kernel(  # pragma: no cover - compiled
    data: npt.NDArray[np.uint8],
    lengths: npt.NDArray[np.int64],
    seed: np.uint64,
    out: npt.NDArray[np.int64],
) -> None:
    """FNV-1a from ``seed`` over each key, then fmix64, modulo BUCKETS. Every operand is
    uint64 (numba turns uint64 mixed with a signed integer into float64), so the
    multiplications wrap exactly like the plain-Python reference's ``& _MASK``."""
    at = 0
    for i in range(lengths.size):
        h = seed
        for b in range(at, at + lengths[i]):
            h = (h ^ np.uint64(data[b])) * _U_PRIME
        at += lengths[i]
        h ^= h >> _U_33
        h *= _U_M1
        h ^= h >> _U_33
        h *= _U_M2
        h ^= h >> _U_33
        out[i] = np.int64(h % _U_BUCKETS)


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where each event of a batch goes."""

    variant: npt.NDArray[np.int8]  # per event: 0 = stable serves it, 1 = candidate does
    shadow: bool  # the candidate also scores every event, for the shadow topic only
    versions: tuple[str | None, str | None]  # (stable, candidate-or-None)

    def version_of(self, index: int) -> str | None:
        return self.versions[int(self.variant[index])]


def salt_for(state: DeploymentState) -> bytes:
    return f"{state.model}:{state.candidate or ''}".encode()


def assign(
    keys: Sequence[bytes | None],
    state: DeploymentState | None,
    event_ids: Sequence[str | bytes] | None = None,
) -> Assignment:
    """Variant of every event; a ``None`` key hashes on the event's id instead.

    With no rollout in progress everything goes to stable and nothing is hashed.
    """
    n = len(keys)
    if state is None or not state.in_progress:
        stable = state.stable if state is not None else None
        return Assignment(np.zeros(n, dtype=np.int8), False, (stable, None))
    versions = (state.stable, state.candidate)
    threshold = round(state.candidate_percent * BUCKETS / 100)
    if threshold <= 0:
        return Assignment(np.zeros(n, dtype=np.int8), state.shadow, versions)
    if threshold >= BUCKETS:
        return Assignment(np.ones(n, dtype=np.int8), state.shadow, versions)
    salt = salt_for(state)
    try:  # a None key stops buckets() at len(None), before any hashing
        b = buckets(cast("Sequence[bytes]", keys), salt)
    except TypeError:
        b = buckets(_with_event_ids(keys, event_ids), salt)
    variant = (b < threshold).astype(np.int8)
    return Assignment(variant, state.shadow, versions)


def _with_event_ids(
    keys: Sequence[bytes | None], event_ids: Sequence[str | bytes] | None
) -> list[bytes]:
    out: list[bytes] = []
    for i, k in enumerate(keys):
        if k is not None:
            out.append(k)
            continue
        if event_ids is None or i >= len(event_ids):
            raise DeploymentError(f"event {i} has no key: routing needs its event_id")
        eid = event_ids[i]
        out.append(eid.encode() if isinstance(eid, str) else eid)
    return out
