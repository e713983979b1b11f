"""The one interface every inference backend implements.

A backend turns a float32 feature matrix ``(n, F)`` into a float32 output matrix ``(n, K)``,
row ``i`` of the output belonging to row ``i`` of the input, for any ``n >= 1`` (``n == 0``
returns an empty ``(0, K)`` matrix). Backends that need fixed shapes pad and split
internally (:mod:`streamproc.backends.buckets`); callers never see it.

A backend whose device works apart from the host (a GPU) sets ``asynchronous`` and
overrides ``submit(batch)``: it queues the batch's work and returns at once with a
:class:`Pending`, whose ``result()`` waits for it. The pipeline decodes and encodes other
batches meanwhile. :func:`submit` gives every backend that verb; a synchronous one
computes at once.

Every backend subclasses :class:`Backend` explicitly, which gives it the defaults (device
``"cpu"``, synchronous, ``close`` a no-op):

>>> class Double(Backend):
...     name = "double"
...     def infer(self, batch): return 2 * check_batch(batch, 2)
>>> backend: Backend = Double()
>>> backend.device, backend.asynchronous
('cpu', False)
>>> backend.infer(np.ones((1, 2))).tolist()
[[2.0, 2.0]]
>>> submit(backend, np.ones((1, 2))).result().tolist()
[[2.0, 2.0]]
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from streamproc.errors import ModelError

Matrix = npt.NDArray[np.float32]


def check_batch(batch: npt.ArrayLike, n_features: int) -> Matrix:
    """``batch`` as a C-contiguous float32 ``(n, n_features)`` matrix, or :class:`ModelError`.

    >>> check_batch([[1, 2]], 2).dtype.name
    'float32'
    >>> check_batch(np.zeros((3, 4)), 2)
    Traceback (most recent call last):
    ...
    streamproc.errors.ModelError: expected a batch of shape (n, 2), got (3, 4)
    """
    arr: Any = np.asarray(batch)
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise ModelError(f"expected a batch of shape (n, {n_features}), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class Pending(Protocol):
    """A batch whose inference was started; ``result()`` waits for it and returns the
    ``(n, K)`` output (or raises what the inference raised)."""

    def result(self) -> Matrix: ...


class Done:
    """A :class:`Pending` whose result is already there."""

    __slots__ = ("_value",)

    def __init__(self, value: Matrix) -> None:
        self._value = value

    def result(self) -> Matrix:
        return self._value


@runtime_checkable
class Backend(Protocol):
    """A loaded model on one device. Subclass it explicitly to get the defaults."""

    name: str  # a streamproc.models.spec.BackendName: "onnxruntime", "torch", ...
    device: str = "cpu"  # "cpu", "cuda:0", ...
    # Whether :meth:`submit` returns before the work is done (a GPU backend), so that a
    # caller gains by doing other work before ``result()``.
    asynchronous: bool = False

    def infer(self, batch: Matrix) -> Matrix:
        """Score ``batch`` ``(n, F)``; returns ``(n, K)`` float32 in input order."""
        ...

    def submit(self, batch: Matrix) -> Pending:
        """Start scoring ``batch``; an asynchronous backend returns before the work is done.
        By default: :meth:`infer` now."""
        return Done(self.infer(batch))

    def close(self) -> None:
        """Release device memory, sessions and streams; the backend is unusable after.
        By default: nothing to release."""
        return None


def is_asynchronous(backend: Backend) -> bool:
    """Whether ``backend.submit`` returns before the work is done (a GPU backend), so that a
    caller gains by doing other work before ``result()``."""
    return backend.asynchronous


def submit(backend: Backend, batch: Matrix) -> Pending:
    """Start scoring ``batch``: the backend's own ``submit`` where it is asynchronous, else
    ``infer`` now (its errors raise here)."""
    if backend.asynchronous:
        return backend.submit(batch)
    return Done(backend.infer(batch))
