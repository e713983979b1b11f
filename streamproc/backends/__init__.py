"""Inference backends: one interface (:class:`Backend`), one verb (``infer``).

Runtimes are imported lazily, so importing this package costs nothing beyond numpy:
``onnxruntime`` (CPU, always installed), ``torch`` / ``torch-cuda`` (``streamproc[torch]``),
``tensorrt`` (``streamproc[gpu]``). :func:`load_backend` picks the first one in the model's
preference list that can run on this machine.
"""

from streamproc.backends.base import Backend, check_batch
from streamproc.backends.select import load_backend, probe

__all__ = ["Backend", "check_batch", "load_backend", "probe"]
