"""Pick the first backend in a preference list that can run on this machine.

Each backend has a *probe* (why it cannot run here: no NVIDIA driver, a package missing;
cheap, imports nothing heavy unless the cheap checks pass) and a *loader*. Walking
``spec.backends`` skips what cannot run with a log line saying why; a list given
explicitly with ``prefer`` is walked the same way, and when nothing in it can run the
:class:`~streamproc.errors.BackendUnavailableError` names every reason.

>>> from streamproc.models.spec import load_model_spec
>>> from streamproc.backends.onnx import DEMO_MODEL
>>> backend = load_backend(load_model_spec(DEMO_MODEL), prefer=["onnxruntime"])
>>> backend.name, backend.device
('onnxruntime', 'cpu')
>>> backend.close()
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamproc.backends.base import Backend
from streamproc.errors import (
    BackendUnavailableError,
    ConfigError,
    DependencyMissingError,
    StreamprocError,
)
from streamproc.models.spec import ModelSpec

_LOG = logging.getLogger("streamproc.backends")
NO_DRIVER = "no NVIDIA driver found (no /proc/driver/nvidia/version, libcuda.so.1 cannot be loaded)"


@dataclass(frozen=True)
class BackendFactory:
    """How to tell whether a backend can run here, and how to load it."""

    probe: Callable[[], list[str]]  # reasons it cannot run here; [] when it can
    load: Callable[..., Backend]  # load(spec, **options)


def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version line, ``"libcuda"``, or None when there is none."""
    version = Path("/proc/driver/nvidia/version")
    if version.is_file():
        try:
            return version.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            return "unknown"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    return "libcuda"


def missing(module: str, extra: str | None) -> str | None:
    """The install hint when ``module`` cannot be imported, else None (imports nothing).
    ``extra``: the pyproject.toml extra that brings it (None: a core dependency).

    >>> missing("json", None) is None
    True
    >>> missing("no_such_module_xyz", "gpu")
    "no_such_module_xyz is not installed; install it with: pip install 'streamproc[gpu]'"
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else str(DependencyMissingError(module, extra))


def _probe_onnxruntime() -> list[str]:
    return [m for m in (missing("onnxruntime", None),) if m]


def _probe_torch() -> list[str]:
    return [m for m in (missing("torch", "torch"),) if m]


def _probe_torch_cuda() -> list[str]:
    reasons = [] if nvidia_driver() else [NO_DRIVER]
    reasons += _probe_torch()
    if not reasons:
        import torch

        if not torch.cuda.is_available():
            reasons.append(
                f"torch {torch.__version__} sees no CUDA device "
                f"(built for CUDA {torch.version.cuda or 'none: a CPU-only build'})"
            )
    return reasons


def _probe_tensorrt() -> list[str]:
    reasons = [] if nvidia_driver() else [NO_DRIVER]
    return reasons + [m for m in (missing("tensorrt", "gpu"), missing("pycuda", "gpu")) if m]


def _load_onnxruntime(spec: ModelSpec, **options: Any) -> Backend:
    from streamproc.backends.onnx import OnnxRuntimeBackend

    return OnnxRuntimeBackend.from_spec(spec, **options)


def _load_torch(spec: ModelSpec, **options: Any) -> Backend:
    from streamproc.backends.torch_backend import TorchBackend

    return TorchBackend.from_spec(spec, **{"device": "cpu", **options})


def _load_torch_cuda(spec: ModelSpec, **options: Any) -> Backend:
    from streamproc.backends.torch_backend import TorchBackend

    return TorchBackend.from_spec(spec, **{"device": "cuda", **options})


def _load_tensorrt(spec: ModelSpec, **options: Any) -> Backend:
    from streamproc.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend.from_spec(spec, **options)


FACTORIES: Mapping[str, BackendFactory] = {
    "tensorrt": BackendFactory(_probe_tensorrt, _load_tensorrt),
    "torch-cuda": BackendFactory(_probe_torch_cuda, _load_torch_cuda),
    "torch": BackendFactory(_probe_torch, _load_torch),
    "onnxruntime": BackendFactory(_probe_onnxruntime, _load_onnxruntime),
}


def probe(name: str, factories: Mapping[str, BackendFactory] | None = None) -> list[str]:
    """Why backend ``name`` cannot run on this machine; ``[]`` when it can.

    >>> probe("onnxruntime")
    []
    """
    table = FACTORIES if factories is None else factories
    if name not in table:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(table)}")
    return table[name].probe()


def load_backend(
    spec: ModelSpec,
    prefer: Sequence[str] | None = None,
    *,
    log: logging.Logger = _LOG,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    factories: Mapping[str, BackendFactory] | None = None,
) -> Backend:
    """Load ``spec`` on the first backend of ``prefer`` (default ``spec.backends``) that runs.

    ``options`` maps a backend name to keyword arguments for its loader, e.g.
    ``{"tensorrt": {"precision": "fp16"}, "onnxruntime": {"intra_op_threads": 2}}``.
    Raises :class:`BackendUnavailableError` naming every reason when none can run, and
    :class:`ConfigError` for an unknown backend name.
    """
    table = FACTORIES if factories is None else factories
    names = list(spec.backends if prefer is None else prefer)
    if not names:
        raise ConfigError("no backend to try: the preference list is empty")
    for name in names:
        if name not in table:
            raise ConfigError(f"unknown backend {name!r}; known: {', '.join(table)}")
    reasons: list[str] = []
    last: StreamprocError | None = None
    for name in names:
        why = table[name].probe()
        if why:
            log.info("backend %s skipped: %s", name, "; ".join(why))
            reasons.append(f"{name}: {'; '.join(why)}")
            continue
        try:
            backend = table[name].load(spec, **dict((options or {}).get(name, {})))
        except StreamprocError as exc:
            log.warning("backend %s could not load %s %s: %s", name, spec.name, spec.version, exc)
            reasons.append(f"{name}: {exc}")
            last = exc
            continue
        log.info(
            "model %s %s runs on %s (%s)", spec.name, spec.version, backend.name, backend.device
        )
        return backend
    raise BackendUnavailableError(
        f"no backend can run model {spec.name} {spec.version} here: " + " | ".join(reasons)
    ) from last
