"""GPU telemetry through NVML (``nvidia-ml-py``, in ``streamproc[gpu]``).

>>> isinstance(gpu_stats(), list)  # [] on a machine without NVML
True
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

_LOG = logging.getLogger("streamproc.backends.nvml")


def _nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_stats() -> list[dict[str, Any]]:
    """One dict per GPU: ``index``, ``name``, ``utilization_pct``, ``memory_used_bytes``,
    ``memory_total_bytes``, ``temperature_c``; ``[]`` when NVML is unavailable.

    A reading the GPU does not support is ``None``.
    """
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        _LOG.debug("NVML unavailable: %s", exc)
        return []
    try:
        stats = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)

            def read(fn: Any, *args: Any, _handle: Any = handle) -> Any:
                try:
                    return fn(_handle, *args)
                except nvml.NVMLError:
                    return None

            util = read(nvml.nvmlDeviceGetUtilizationRates)
            mem = read(nvml.nvmlDeviceGetMemoryInfo)
            stats.append(
                {
                    "index": index,
                    "name": _text(read(nvml.nvmlDeviceGetName)),
                    "utilization_pct": None if util is None else float(util.gpu),
                    "memory_used_bytes": None if mem is None else int(mem.used),
                    "memory_total_bytes": None if mem is None else int(mem.total),
                    "temperature_c": read(nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU),
                }
            )
        return stats
    except nvml.NVMLError as exc:
        _LOG.debug("NVML query failed: %s", exc)
        return []
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()
