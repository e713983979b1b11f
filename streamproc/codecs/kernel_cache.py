"""Compiling specialised decoding kernels, and caching them.

:class:`Specialiser` turns the source :func:`~streamproc.codecs.specialise.kernel_source`
writes into a numba kernel and caches it twice: in memory per program, and on disk as a
module named by the hash of its source, which numba's own cache (``cache=True``) then serves
to later processes in milliseconds. It compiles on a worker thread, so a processor meeting a
new writer schema goes on with the interpreter meanwhile.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.codecs.program import Program
from streamproc.codecs.specialise import MAX_OPS, Kernel, kernel_source

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$STREAMPROC_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/streamproc/kernels`` (``~/.cache``)."""
    env = os.environ.get("STREAMPROC_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamproc" / "kernels"


class Specialiser:
    """Compiles, caches and hands out specialised kernels.

    :meth:`submit` plans a program's kernel and returns its key (None: too large, stays
    interpreted); :meth:`ready` is the kernel once compiled. With ``background=True`` a
    worker thread compiles while the caller goes on with the interpreter (a processor meeting
    a new writer schema never stops for LLVM); otherwise :meth:`submit` compiles at once.
    :meth:`wait` blocks until a key's kernel is ready (at start-up, for the schema the
    processor expects). A kernel that fails to compile is logged and never retried: the
    interpreter keeps serving that schema.
    """

    def __init__(
        self, cache_dir: Path | None = None, max_ops: int = MAX_OPS, background: bool = False
    ) -> None:
        self.cache_dir = cache_dir or default_cache_dir()
        self.max_ops = max_ops
        self.background = background
        self.compile_seconds: dict[str, float] = {}  # per key: compile or cache load, measured
        self._ready: dict[str, Kernel] = {}
        self._failed: set[str] = set()
        self._pending: dict[str, tuple[str, Program]] = {}  # submitted, not started: source
        self._running: set[str] = set()  # being compiled by some thread
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None

    def submit(self, prog: Program) -> str | None:
        if len(prog.ops) > self.max_ops:
            log.info("program of %d instructions stays interpreted (max %d)",
                     len(prog.ops), self.max_ops)  # fmt: skip
            return None
        src = kernel_source(prog)
        key = hashlib.sha256(src.encode()).hexdigest()[:24]
        with self._lock:
            seen = (self._ready, self._failed, self._pending, self._running)
            if any(key in where for where in seen):  # compiled, failed, queued or compiling
                return key
            self._pending[key] = (src, prog)
            if self.background:
                if self._worker is None or not self._worker.is_alive():
                    self._worker = threading.Thread(
                        target=self._work, name="streamproc-kernels", daemon=True
                    )
                    self._worker.start()
                return key
        self._compile(key)
        return key

    def ready(self, key: str | None) -> Kernel | None:
        return None if key is None else self._ready.get(key)

    def wait(self, key: str | None, timeout_s: float | None = None) -> Kernel | None:
        """The kernel for ``key``, compiling it here if no worker has started on it."""
        if key is None:
            return None
        self._compile(key)  # a no-op if it is done or a worker holds it
        with self._done:
            self._done.wait_for(
                lambda: key not in self._pending and key not in self._running, timeout_s
            )
        return self._ready.get(key)

    def _work(self) -> None:
        while True:
            with self._lock:
                key = next(iter(self._pending), None)
            if key is None:
                return
            self._compile(key)

    def _compile(self, key: str) -> None:
        with self._lock:
            job = self._pending.pop(key, None)
            if job is None:
                return  # done, or being compiled by another thread
            src, prog = job
            self._running.add(key)
        t0 = time.perf_counter()
        fn: Kernel | None = None
        try:
            fn = self._load(key, src)
            _first_call(fn, prog)  # numba compiles (or loads its cache) on the first call
        except Exception:  # a generator bug must never stop the stream: interpret instead
            log.exception("specialised kernel %s failed to compile; interpreting", key)
            fn = None
        seconds = time.perf_counter() - t0
        with self._done:
            self._running.discard(key)
            if fn is None:
                self._failed.add(key)
            else:
                self._ready[key] = fn
                self.compile_seconds[key] = seconds
                log.info("specialised kernel %s ready in %.2fs (%d instructions)",
                         key, seconds, len(prog.ops))  # fmt: skip
            self._done.notify_all()

    def _load(self, key: str, src: str) -> Kernel:
        fn: Kernel = self.load_module(f"streamproc_kernel_{key}", src).decode
        return fn

    def load_module(self, name: str, src: str) -> Any:
        """Import ``src`` as module ``name`` from the cache directory (numba's ``cache=True``
        then keeps its compiled code beside it)."""
        path = self._write(name, src)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    def _write(self, name: str, src: str) -> Path:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            path = self.cache_dir / f"{name}.py"
            if not path.exists() or path.read_text() != src:
                # Written whole, then renamed: a concurrent process never imports half a file.
                fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    f.write(src)
                os.replace(tmp, path)
            return path
        except OSError as exc:  # a read-only home: compile anyway, without the disk cache
            log.info("kernel cache %s not writable (%s): compiling without it", self.cache_dir, exc)
            path = Path(tempfile.mkdtemp(prefix="streamproc-kernels-")) / f"{name}.py"
            path.write_text(src)
            return path


def _first_call(fn: Kernel, prog: Program) -> None:
    """Call ``fn`` on no events with the argument types decoding uses: compiles it."""
    from streamproc.codecs import compiled as native

    packed = native.pack([], 1)
    native.run(
        prog, packed, np.zeros(0, np.int64), np.zeros((0, 0), np.float32),
        np.zeros(0, np.uint8), np.zeros(0, np.int64), native.Outputs.empty(0), fn,
    )  # fmt: skip
