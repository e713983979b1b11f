"""TensorRT 10 engines driven through pycuda.

The engine is built from the ONNX model with optimization profiles spanning the spec's
buckets (min 1, opt a typical bucket, max the largest) in fp32, fp16 or int8 (int8
calibrated with an entropy calibrator fed from a numpy array of reference rows). Built
engines and the builder's timing cache are kept on disk; an engine's file name is
:func:`cache_key` of the model's sha256, the TensorRT version, the GPU name, the precision
and the profile, so a changed model, driver stack or card never loads a stale engine.

Inference stages each chunk through pinned host memory and runs it with
``execute_async_v3`` on one of two slots (execution context + optimization profile + CUDA
stream + buffers): while slot A computes chunk N, slot B copies chunk N+1 in.

Everything that does not need a GPU (keys, profiles, calibration batches, the pipelining
schedule in :mod:`streamproc.backends.buckets`) is a pure function tested in CI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streamproc.backends.base import Backend, Matrix, check_batch
from streamproc.backends.buckets import Chunk, pipelined_batches
from streamproc.errors import DependencyMissingError, ModelError
from streamproc.models.spec import ModelSpec

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
SLOTS = 2  # double buffering: copy of chunk N+1 overlaps compute of chunk N
_LOG = logging.getLogger("streamproc.backends.tensorrt")


# --------------------------------------------------------------------------- pure logic


def normalize_gpu_name(name: str) -> str:
    """A file-name-safe, case-folded GPU name.

    >>> normalize_gpu_name("  NVIDIA H100 80GB HBM3 ")
    'nvidia-h100-80gb-hbm3'
    """
    return "-".join(name.lower().split())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(
    model_sha256: str,
    trt_version: str,
    gpu_name: str,
    precision: str,
    *,
    profile: Sequence[Sequence[int]] = (),
    extra: str = "",
) -> str:
    """The engine cache key: sha256 over everything an engine depends on.

    ``profile`` is the ``(min, opt, max)`` input shapes; ``extra`` anything else that
    changes the engine (the int8 calibration data's digest).

    >>> k = cache_key("ab" * 32, "10.3.0", "NVIDIA H100", "fp16", profile=[(1, 16), (64, 16)])
    >>> len(k), k == cache_key("ab" * 32, "10.3.0", "nvidia  h100", "fp16",
    ...                        profile=[(1, 16), (64, 16)])
    (64, True)
    >>> k == cache_key("ab" * 32, "10.3.0", "NVIDIA H100", "fp32", profile=[(1, 16), (64, 16)])
    False
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if len(model_sha256) != 64:
        raise ValueError("model_sha256 must be a sha256 hex digest")
    doc = {
        "model": model_sha256.lower(),
        "tensorrt": trt_version,
        "gpu": normalize_gpu_name(gpu_name),
        "precision": precision,
        "profile": [list(map(int, shape)) for shape in profile],
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def timing_cache_key(trt_version: str, gpu_name: str) -> str:
    """Timing caches are per TensorRT version and GPU, shared by all models.

    >>> timing_cache_key("10.3.0", "NVIDIA H100")
    'timing-10.3.0-nvidia-h100'
    """
    return f"timing-{trt_version}-{normalize_gpu_name(gpu_name)}"


def profile_shapes(
    buckets: Sequence[int], n_features: int, opt: int | None = None
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """``(min, opt, max)`` input shapes for an optimization profile covering ``buckets``.

    ``opt`` (the shape kernels are tuned for) defaults to the middle bucket.

    >>> profile_shapes((1, 8, 32, 64, 128, 256), 16)
    ((1, 16), (64, 16), (256, 16))
    >>> profile_shapes((1, 8, 32, 64, 128, 256), 16, opt=128)[1]
    (128, 16)
    """
    if not buckets:
        raise ValueError("no buckets")
    lo, hi = 1, max(buckets)
    o = buckets[len(buckets) // 2] if opt is None else opt
    if not lo <= o <= hi:
        raise ValueError(f"opt batch {o} outside [{lo}, {hi}]")
    return (lo, n_features), (o, n_features), (hi, n_features)


def calibration_batches(data: npt.ArrayLike, batch_size: int) -> list[Matrix]:
    """Reference rows cut into full float32 batches for int8 calibration.

    The tail that does not fill a batch is dropped, unless there is less than one batch,
    in which case the rows are tiled to fill one.

    >>> [b.shape for b in calibration_batches(np.zeros((70, 3)), 32)]
    [(32, 3), (32, 3)]
    >>> calibration_batches(np.arange(3.0).reshape(3, 1), 4)[0].ravel().tolist()
    [0.0, 1.0, 2.0, 0.0]
    """
    arr = np.ascontiguousarray(np.asarray(data), dtype=np.float32)
    if arr.ndim != 2 or len(arr) == 0:
        raise ValueError("calibration data must be a non-empty (n, F) matrix")
    if len(arr) < batch_size:
        arr = np.resize(arr, (batch_size, arr.shape[1]))
    n = len(arr) // batch_size
    return [np.ascontiguousarray(arr[i * batch_size : (i + 1) * batch_size]) for i in range(n)]


def default_cache_dir() -> Path:
    """``$STREAMPROC_TRT_CACHE`` or the user cache directory's ``tensorrt`` folder."""
    env = os.environ.get("STREAMPROC_TRT_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("streamproc")) / "tensorrt"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- GPU runtime


def _runtime() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise DependencyMissingError("tensorrt", "gpu") from exc
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise DependencyMissingError("pycuda", "gpu") from exc
    return trt, cuda


def _logger(trt: Any) -> Any:
    class _Bridge(trt.ILogger):  # type: ignore[misc,name-defined]
        """TensorRT's log messages into Python logging."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            level = {
                trt.ILogger.INTERNAL_ERROR: logging.CRITICAL,
                trt.ILogger.ERROR: logging.ERROR,
                trt.ILogger.WARNING: logging.WARNING,
                trt.ILogger.INFO: logging.DEBUG,
            }.get(severity, logging.DEBUG)
            _LOG.log(level, "%s", msg)

    return _Bridge()


def _calibrator(trt: Any, cuda: Any, batches: list[Matrix], cache_path: Path) -> Any:
    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        """Feeds reference batches to the int8 calibration, caching the result on disk."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._next = 0
            self._device = cuda.mem_alloc(batches[0].nbytes)

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._next >= len(batches):
                return None
            cuda.memcpy_htod(self._device, batches[self._next])
            self._next += 1
            return [int(self._device)] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            _atomic_write(cache_path, bytes(cache))

        def free(self) -> None:
            self._device.free()

    return _EntropyCalibrator()


@dataclass
class _Slot:
    context: Any  # IExecutionContext bound to this slot's optimization profile
    stream: Any  # pycuda.driver.Stream
    host_in: Matrix  # pinned (max, F)
    host_out: Matrix  # pinned (max, K)
    dev_in: Any  # pycuda.driver.DeviceAllocation
    dev_out: Any
    rows: int = 0


class TensorRTBackend(Backend):
    """A TensorRT engine on one GPU; see the module docstring."""

    name = "tensorrt"

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        n_features: int,
        input_name: str = "features",
        output_name: str = "probabilities",
        buckets: Sequence[int] = (1, 8, 32, 64, 128, 256),
        precision: Precision = "fp32",
        calibration_data: npt.ArrayLike | str | Path | None = None,
        cache_dir: str | Path | None = None,
        opt_batch: int | None = None,
        device_index: int = 0,
        workspace_bytes: int = 1 << 30,
    ) -> None:
        if precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        trt, cuda = self._trt, self._cuda = _runtime()
        self.device = f"cuda:{device_index}"
        self.precision = precision
        self.n_features = n_features
        self.buckets = tuple(buckets)
        self._input, self._output = input_name, output_name
        self._lock = threading.Lock()
        self._closed = False
        onnx_path = Path(onnx_path)
        try:
            cuda.init()
            device = cuda.Device(device_index)
            self.gpu_name = str(device.name())
        except cuda.Error as exc:
            raise ModelError(f"CUDA device {device_index} is not usable: {exc}") from exc
        self._trt_logger = _logger(trt)
        self.profile = profile_shapes(self.buckets, n_features, opt_batch)
        calib: list[Matrix] = []
        extra = ""
        if precision == "int8":
            if calibration_data is None:
                raise ModelError("int8 needs calibration_data: reference rows (n, F) or a .npy")
            rows = (
                np.load(calibration_data)
                if isinstance(calibration_data, str | Path)
                else np.asarray(calibration_data)
            )
            calib = calibration_batches(rows, self.profile[1][0])
            extra = "calib:" + hashlib.sha256(b"".join(b.tobytes() for b in calib)).hexdigest()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.key = cache_key(
            sha256_file(onnx_path),
            trt.__version__,
            self.gpu_name,
            precision,
            profile=self.profile,
            extra=extra,
        )
        self.engine_path = self.cache_dir / f"{self.key}.engine"
        self.built = False  # True when this load built the engine instead of reading it
        self._slots: list[_Slot] = []
        try:
            self._cu_ctx = device.retain_primary_context()
        except cuda.Error as exc:
            raise ModelError(f"cannot use CUDA device {device_index}: {exc}") from exc
        self._cu_ctx.push()  # TensorRT and pycuda share the device's primary context
        try:
            self._engine = self._load_or_build(onnx_path, calib, workspace_bytes)
            for i in range(SLOTS):
                self._slots.append(self._make_slot(i))
            self.n_outputs = int(self._slots[0].host_out.shape[1])
            for size in self.buckets:  # warm-up: every shape once on every slot
                zeros = [np.zeros((size, n_features), np.float32)] * SLOTS
                for _ in pipelined_batches(zeros, self.buckets, self._submit, self._collect):
                    pass
        except BaseException:
            self._release()
            cuda.Context.pop()
            self._cu_ctx.detach()
            raise
        cuda.Context.pop()

    @classmethod
    def from_spec(cls, spec: ModelSpec, **options: Any) -> TensorRTBackend:
        return cls(
            spec.model_path,
            n_features=spec.n_features,
            input_name=spec.input_tensor,
            output_name=spec.outputs.tensor,
            buckets=spec.buckets,
            **options,
        )

    # ------------------------------------------------------------------ engine

    def _load_or_build(self, onnx_path: Path, calib: list[Matrix], workspace: int) -> Any:
        trt = self._trt
        runtime = self._trt_runtime = trt.Runtime(self._trt_logger)
        if self.engine_path.is_file():
            engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is not None and engine.num_optimization_profiles >= SLOTS:
                _LOG.info("TensorRT engine %s read from cache", self.engine_path.name)
                return engine
            _LOG.warning("cached engine %s is unusable; rebuilding", self.engine_path)
        serialized = self._build(onnx_path, calib, workspace)
        _atomic_write(self.engine_path, serialized)
        self.built = True
        engine = runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise ModelError(f"TensorRT could not deserialize the engine it built for {onnx_path}")
        return engine

    def _build(self, onnx_path: Path, calib: list[Matrix], workspace: int) -> bytes:
        trt, cuda = self._trt, self._cuda
        builder = trt.Builder(self._trt_logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, self._trt_logger)
        if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        lo, opt, hi = self.profile
        for _ in range(SLOTS):  # one profile per execution context, so slots run concurrently
            profile = builder.create_optimization_profile()
            profile.set_shape(self._input, lo, opt, hi)
            config.add_optimization_profile(profile)
        if self.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        calibrator = None
        if self.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            calib_profile = builder.create_optimization_profile()
            shape = calib[0].shape
            calib_profile.set_shape(self._input, shape, shape, shape)
            config.set_calibration_profile(calib_profile)
            calibrator = _calibrator(trt, cuda, calib, self.cache_dir / f"{self.key}.calibration")
            config.int8_calibrator = calibrator
        timing_path = self.cache_dir / f"{timing_cache_key(trt.__version__, self.gpu_name)}.bin"
        timing = config.create_timing_cache(
            timing_path.read_bytes() if timing_path.is_file() else b""
        )
        config.set_timing_cache(timing, False)
        _LOG.info(
            "building TensorRT %s engine for %s (profile %s); this takes a while once",
            self.precision,
            onnx_path,
            self.profile,
        )
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            if calibrator is not None:
                calibrator.free()
        if serialized is None:
            raise ModelError(f"TensorRT failed to build an engine for {onnx_path}")
        _atomic_write(timing_path, bytes(memoryview(config.get_timing_cache().serialize())))
        return bytes(memoryview(serialized))

    def _make_slot(self, index: int) -> _Slot:
        trt, cuda, engine = self._trt, self._cuda, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if self._input not in names or self._output not in names:
            raise ModelError(f"engine tensors are {names}; need {self._input}, {self._output}")
        out_shape = engine.get_tensor_shape(self._output)
        k = int(out_shape[-1])
        if k < 1:
            raise ModelError(f"output {self._output} has no static class dimension: {out_shape}")
        largest = self.profile[2][0]
        in_dtype = trt.nptype(engine.get_tensor_dtype(self._input))
        out_dtype = trt.nptype(engine.get_tensor_dtype(self._output))
        stream = cuda.Stream()
        context = engine.create_execution_context()
        if context is None:
            raise ModelError("TensorRT could not create an execution context (out of memory?)")
        if not context.set_optimization_profile_async(index, stream.handle):
            raise ModelError(f"cannot select optimization profile {index}")
        stream.synchronize()
        host_in = cuda.pagelocked_empty((largest, self.n_features), in_dtype)
        host_out = cuda.pagelocked_empty((largest, k), out_dtype)
        dev_in = cuda.mem_alloc(host_in.nbytes)
        dev_out = cuda.mem_alloc(host_out.nbytes)
        context.set_tensor_address(self._input, int(dev_in))
        context.set_tensor_address(self._output, int(dev_out))
        return _Slot(context, stream, host_in, host_out, dev_in, dev_out)

    # ------------------------------------------------------------------ inference

    def _submit(self, slot_index: int, chunk: Chunk) -> None:
        cuda, slot = self._cuda, self._slots[slot_index]
        batch, (start, stop, size) = chunk
        n = stop - start
        slot.host_in[:n] = batch[start:stop]
        slot.host_in[n:size] = 0
        if not slot.context.set_input_shape(self._input, (size, self.n_features)):
            raise ModelError(f"TensorRT rejected input shape ({size}, {self.n_features})")
        cuda.memcpy_htod_async(slot.dev_in, slot.host_in[:size], slot.stream)
        if not slot.context.execute_async_v3(slot.stream.handle):
            raise ModelError("TensorRT execute_async_v3 failed")
        cuda.memcpy_dtoh_async(slot.host_out[:size], slot.dev_out, slot.stream)
        slot.rows = n

    def _collect(self, slot_index: int) -> Matrix:
        slot = self._slots[slot_index]
        slot.stream.synchronize()
        return np.array(slot.host_out[: slot.rows], dtype=np.float32)

    def infer(self, batch: Matrix) -> Matrix:
        x = check_batch(batch, self.n_features)
        if len(x) == 0:
            return np.empty((0, self.n_outputs), dtype=np.float32)
        (out,) = self.infer_stream([x])  # unpacking runs the generator to its end
        return out

    def infer_stream(self, batches: Iterable[Matrix]) -> Iterator[Matrix]:
        """Score many batches, overlapping the copies of one with the compute of another."""
        with self._lock:
            if self._closed:
                raise ModelError("the TensorRT backend is closed")
            checked = (check_batch(b, self.n_features) for b in batches)
            self._cu_ctx.push()
            try:
                yield from pipelined_batches(
                    checked, self.buckets, self._submit, self._collect, SLOTS
                )
            except self._cuda.Error as exc:
                raise ModelError(f"CUDA error during TensorRT inference: {exc}") from exc
            finally:
                for slot in self._slots:  # nothing left in flight, even after an error
                    slot.stream.synchronize()
                self._cuda.Context.pop()

    def _release(self) -> None:
        for slot in self._slots:
            slot.stream.synchronize()
            slot.dev_in.free()
            slot.dev_out.free()
        self._slots = []
        self._engine = None
        self._trt_runtime = None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cu_ctx.push()
            try:
                self._release()
            finally:
                self._cuda.Context.pop()
                self._cu_ctx.detach()
