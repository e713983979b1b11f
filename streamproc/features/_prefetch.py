"""``prefetch(array, index)``: a hint to the CPU to bring ``array[index]``'s cache line in,
for numba kernels (LLVM's ``llvm.prefetch``; no fault, no effect on results).

The window store's kernels are bound by cache misses on cold keys' rows: the slot of an
event's key, then the key's newest events. Asking for the rows of an event a few places ahead
while the current one is computed overlaps those misses with work, which the CPU's own
out-of-order window cannot do across a whole event's work.

>>> import numpy as np
>>> from numba import njit
>>> @njit
... def total(a, idx):
...     s = 0.0
...     for i in range(len(idx)):
...         if i + 4 < len(idx):
...             prefetch(a, idx[i + 4])
...         s += a[idx[i]]
...     return s
>>> total(np.arange(10.0), np.array([9, 1, 3, 3, 0, 2]))
18.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _prefetch(typingctx: Any, arr: Any, idx: Any) -> Any:
    """``llvm.prefetch`` of ``arr[idx]`` (1-d arrays, any layout): read, keep in all levels."""
    sig = types.void(arr, idx)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty = signature.args[0]
        ary, ind = args
        array = context.make_array(aryty)(context, builder, ary)
        ptr = cgutils.get_item_pointer(context, builder, aryty, array, [ind], wraparound=False)
        i32 = ir.IntType(32)
        ptr = builder.bitcast(ptr, ir.IntType(8).as_pointer())  # one declaration for all types
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # (address, rw 0 = read, locality 3 = keep in every cache level, 1 = data cache)
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


# What callers see (numba gives the intrinsic the typing context itself).
prefetch = cast(Callable[[Any, int], None], _prefetch)
