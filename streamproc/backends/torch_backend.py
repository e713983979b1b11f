"""PyTorch on the CPU (``torch``) or an NVIDIA GPU (``torch-cuda``).

The module comes from, in order: ``spec.file`` itself when it is a TorchScript
(``.pt``/``.ts``) or ``torch.export`` (``.pt2``) file; a ``model.pt2`` or
``model.torchscript.pt`` beside ``model.yaml``; otherwise the ONNX model's weights,
read with ``onnx.numpy_helper`` and rebuilt as an equivalent ``torch.nn.Sequential`` (one
source of truth: the ONNX file). The rebuild covers chain graphs of Gemm, MatMul, Add,
Relu, Sigmoid, Tanh, Softmax and Identity nodes, which is what small tabular MLPs export to.

On CUDA each bucket size gets a CUDA graph captured at load, optionally under fp16
autocast. With graphs the backend is asynchronous (:func:`streamproc.backends.base.submit`):
``submit`` copies the batch into one of two pinned host slots, queues the copies in, the
replays and the copies out on the device's stream, and returns; ``result()`` waits for that
slot's event. So a caller can decode the next batch while this one runs, with at most two
batches in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.backends.base import Backend, Done, Matrix, Pending, check_batch
from streamproc.backends.buckets import plan
from streamproc.errors import DependencyMissingError, ModelError
from streamproc.models.spec import ModelSpec

TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".torchscript")
EXPORT_SUFFIXES = (".pt2",)
SIBLINGS = ("model.pt2", "model.torchscript.pt")
_WARMUP_RUNS = 3


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise DependencyMissingError("torch", "torch") from exc
    return torch


def onnx_to_torch(
    model_path: str | Path, input_name: str = "features", output_name: str = "probabilities"
) -> Any:
    """An eval-mode ``torch.nn.Sequential`` computing the same function as a chain ONNX graph.

    For the demo model: ``Linear(16, 16) -> ReLU -> Linear(16, 2) -> Softmax(dim=-1)``
    (no runnable example here: torch is an optional extra; tests/backends/test_torch.py
    checks the rebuild against ONNX Runtime).
    """
    torch = _torch()
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as exc:
        raise DependencyMissingError("onnx", "torch") from exc
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise ModelError(f"cannot read ONNX model {model_path}: {exc}") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer}
    nn = torch.nn
    layers: list[Any] = []
    current = input_name

    def tensor(a: np.ndarray[Any, Any]) -> Any:
        return torch.from_numpy(np.array(a, dtype=np.float32, order="C"))

    for node in model.graph.node:
        data = [i for i in node.input if i and i not in inits]
        where = f"{model_path}: node {node.name or node.op_type}"
        if data != [current] or node.input[0] != current:
            raise ModelError(f"{where}: only single-path (chain) graphs can be rebuilt in torch")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op = node.op_type
        if op == "Gemm":
            if attrs.get("transA", 0):
                raise ModelError(f"{where}: Gemm with transA=1 is not supported")
            b = inits[node.input[1]] * float(attrs.get("alpha", 1.0))
            weight = b if attrs.get("transB", 0) else b.T
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=len(node.input) > 2)
            with torch.no_grad():
                linear.weight.copy_(tensor(weight))
                if len(node.input) > 2 and node.input[2]:
                    c = inits[node.input[2]] * float(attrs.get("beta", 1.0))
                    linear.bias.copy_(tensor(np.broadcast_to(c.reshape(-1), (weight.shape[0],))))
            layers.append(linear)
        elif op == "MatMul":
            weight = inits[node.input[1]].T
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            with torch.no_grad():
                linear.weight.copy_(tensor(weight))
            layers.append(linear)
        elif op == "Add":
            layers.append(_add_constant(tensor(inits[next(i for i in node.input if i in inits)])))
        elif op == "Relu":
            layers.append(nn.ReLU())
        elif op == "Sigmoid":
            layers.append(nn.Sigmoid())
        elif op == "Tanh":
            layers.append(nn.Tanh())
        elif op == "Identity":
            layers.append(nn.Identity())
        elif op == "Softmax":
            layers.append(nn.Softmax(dim=int(attrs.get("axis", -1 if opset >= 13 else 1))))
        else:
            raise ModelError(f"{where}: op {op} is not supported by the ONNX -> torch rebuild")
        current = node.output[0]
    if current != output_name:
        raise ModelError(f"{model_path}: the chain ends in {current!r}, not {output_name!r}")
    return nn.Sequential(*layers).eval()


def _add_constant(value: Any) -> Any:
    """A module adding a constant tensor (an ONNX ``Add`` with an initializer)."""
    torch = _torch()

    class AddConstant(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("value", value)

        def forward(self, x: Any) -> Any:
            return x + self.value

    return AddConstant()


def load_module(spec: ModelSpec) -> Any:
    """The torch module for ``spec`` (see the module docstring for the search order)."""
    torch = _torch()
    candidates = [spec.model_path, *((spec.home or Path(".")) / s for s in SIBLINGS)]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            if path.suffix in TORCHSCRIPT_SUFFIXES:
                return torch.jit.load(str(path), map_location="cpu").eval()
            if path.suffix in EXPORT_SUFFIXES:
                return torch.export.load(str(path)).module()
        except Exception as exc:  # torch raises RuntimeError, pickle errors, ...
            raise ModelError(f"torch cannot load {path}: {exc}") from exc
    return onnx_to_torch(spec.model_path, spec.input_tensor, spec.outputs.tensor)


def chain_layers(module: Any) -> list[tuple[str, Any, Any]]:
    """The steps of a ``torch.nn.Sequential`` of the rebuild's modules (see
    :func:`onnx_to_torch`) as NumPy arrays: what :class:`~streamproc.insight.explain.DeepShap`
    passes its multipliers back through. :class:`~streamproc.errors.ModelError` for any
    other module (TorchScript, ``torch.export``, other layer types)."""
    torch = _torch()
    nn = torch.nn
    if not isinstance(module, nn.Sequential):
        raise ModelError(f"not a chain of layers: {type(module).__name__}")

    def arr(t: Any) -> np.ndarray[Any, Any]:
        return np.asarray(t.detach().cpu().numpy(), dtype=np.float64)

    names = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Identity: "identity"}
    out: list[tuple[str, Any, Any]] = []
    for layer in module:
        if isinstance(layer, nn.Linear):
            out.append(("linear", arr(layer.weight),
                        None if layer.bias is None else arr(layer.bias)))  # fmt: skip
        elif type(layer) in names:
            out.append((names[type(layer)], None, None))
        elif isinstance(layer, nn.Softmax) and layer.dim in (-1, 1):
            out.append(("softmax", None, None))
        elif type(layer).__name__ == "AddConstant":
            out.append(("add", arr(layer.value), None))
        else:
            raise ModelError(f"no DeepSHAP rule for a {type(layer).__name__} layer")
    return out


def _first_tensor(out: Any) -> Any:
    if isinstance(out, (tuple, list)):
        return out[0]
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out


class TorchBackend(Backend):
    """A torch module on ``cpu`` or ``cuda[:i]``.

    ``fp16`` runs CUDA under ``torch.autocast(float16)``; ``cuda_graphs`` (CUDA only)
    captures one graph per bucket. ``threads`` sets torch's CPU thread count, which is
    process-wide in torch; leave it ``None`` to keep torch's default.
    """

    def __init__(
        self,
        module: Any,
        *,
        n_features: int,
        device: str = "cpu",
        buckets: Sequence[int] = (1, 8, 32, 64, 128, 256),
        fp16: bool = False,
        cuda_graphs: bool = True,
        threads: int | None = None,
    ) -> None:
        torch = self._t = _torch()
        self._device = torch.device(device)
        self.cuda = self._device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise ModelError(f"torch {torch.__version__} sees no CUDA device")
        if self.cuda and self._device.index is None:
            self._device = torch.device("cuda", torch.cuda.current_device())
        self.name = "torch-cuda" if self.cuda else "torch"
        self.device = str(self._device)
        self.n_features = n_features
        self.buckets = tuple(buckets)
        self.fp16 = fp16 and self.cuda
        if threads is not None:
            torch.set_num_threads(threads)
        self._module = module.to(self._device)
        with suppress(NotImplementedError):  # torch.export modules have no train/eval switch
            self._module.eval()
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}
        self._slots = (_Slot(), _Slot())  # pinned host buffers of two batches in flight
        self._turn = 0
        self._closed = False
        if self.cuda:
            largest = self.buckets[-1]
            self._host_in = torch.empty((largest, n_features), dtype=torch.float32).pin_memory()
            if cuda_graphs:
                for size in self.buckets:
                    self._graphs[size] = self._capture(size)
        # submit() returns before the GPU is done only when it replays graphs.
        self.asynchronous = bool(self._graphs)
        if self._graphs:
            self.n_outputs = int(self._graphs[self.buckets[0]][2].shape[1])
        else:
            self.n_outputs = int(self._forward(np.zeros((1, n_features), np.float32)).shape[1])

    @classmethod
    def from_spec(
        cls,
        spec: ModelSpec,
        *,
        device: str = "cpu",
        fp16: bool = False,
        cuda_graphs: bool = True,
        threads: int | None = None,
    ) -> TorchBackend:
        return cls(
            load_module(spec),
            n_features=spec.n_features,
            device=device,
            buckets=spec.buckets,
            fp16=fp16,
            cuda_graphs=cuda_graphs,
            threads=threads,
        )

    def _autocast(self) -> AbstractContextManager[Any]:
        if not self.fp16:
            return nullcontext()
        ctx: AbstractContextManager[Any] = self._t.autocast(
            device_type="cuda", dtype=self._t.float16, cache_enabled=False
        )
        return ctx

    def _capture(self, size: int) -> tuple[Any, Any, Any]:
        torch = self._t
        static_in = torch.zeros((size, self.n_features), dtype=torch.float32, device=self._device)
        side = torch.cuda.Stream(device=self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side), torch.no_grad(), self._autocast():
            for _ in range(_WARMUP_RUNS):
                _first_tensor(self._module(static_in))
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad(), self._autocast():
            static_out = _first_tensor(self._module(static_in)).float()
        return graph, static_in, static_out

    def _submit(self, x: Matrix) -> _CudaPending:
        """Queue ``x`` (``n >= 1`` rows) on the device and return at once (graphs only)."""
        torch = self._t
        slot = self._slots[self._turn]
        self._turn ^= 1
        if slot.event is not None:
            # The slot's previous batch: its copies must be done before its buffers are
            # reused. Normally its result was collected already and this returns at once.
            slot.event.synchronize()
        n = len(x)
        if slot.host_in is None or len(slot.host_in) < n:
            largest = self.buckets[-1]
            rows = -(-n // largest) * largest
            slot.host_in = torch.empty((rows, self.n_features), dtype=torch.float32).pin_memory()
            slot.host_out = torch.empty((rows, self.n_outputs), dtype=torch.float32).pin_memory()
            slot.event = torch.cuda.Event()
        slot.host_in.numpy()[:n] = x
        for a, b, size in plan(n, self.buckets):  # one replay per bucket-sized chunk
            graph, static_in, static_out = self._graphs[size]
            m = b - a
            static_in[:m].copy_(slot.host_in[a:b], non_blocking=True)
            if m < size:
                static_in[m:].zero_()  # padding rows: zeros, their outputs are dropped
            graph.replay()
            slot.host_out[a:b].copy_(static_out[:m], non_blocking=True)
        slot.event.record()
        slot.ticket += 1
        return _CudaPending(slot, slot.ticket, n)

    def _forward(self, x: Matrix) -> Matrix:
        torch = self._t
        if self._graphs:
            return self._submit(x).result()
        with torch.no_grad(), self._autocast():
            inp = torch.from_numpy(x)
            if self.cuda:
                staged = self._host_in[: len(x)] if len(x) <= len(self._host_in) else None
                if staged is not None:
                    staged.numpy()[...] = x
                    inp = staged
                inp = inp.to(self._device, non_blocking=True)
            out = _first_tensor(self._module(inp)).float()
            return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)

    def infer(self, batch: Matrix) -> Matrix:
        if self._closed:
            raise ModelError(f"the {self.name} backend is closed")
        x = check_batch(batch, self.n_features)
        if len(x) == 0:
            return np.empty((0, self.n_outputs), dtype=np.float32)
        try:
            return self._forward(x)
        except ModelError:
            raise
        except Exception as exc:  # torch raises RuntimeError for shape/device problems
            raise ModelError(f"{self.name} inference failed: {exc}") from exc

    def submit(self, batch: Matrix) -> Pending:
        """Start scoring ``batch``; ``result()`` returns what :meth:`infer` would. Returns
        before the GPU is done when :attr:`asynchronous`; at most two batches in flight."""
        if not self.asynchronous:
            return Done(self.infer(batch))
        if self._closed:
            raise ModelError(f"the {self.name} backend is closed")
        x = check_batch(batch, self.n_features)
        if len(x) == 0:
            return Done(np.empty((0, self.n_outputs), dtype=np.float32))
        try:
            return self._submit(x)
        except Exception as exc:  # torch raises RuntimeError for shape/device problems
            raise ModelError(f"{self.name} inference failed: {exc}") from exc

    def close(self) -> None:
        self._closed = True
        self._graphs.clear()
        self._slots = (_Slot(), _Slot())
        self._module = None
        if self.cuda:
            self._t.cuda.empty_cache()


class _Slot:
    """One batch's pinned host buffers and the event that marks its copies out done."""

    __slots__ = ("event", "host_in", "host_out", "ticket")

    def __init__(self) -> None:
        self.host_in: Any = None
        self.host_out: Any = None
        self.event: Any = None
        self.ticket = 0  # counts the batches submitted on this slot


class _CudaPending:
    __slots__ = ("_n", "_slot", "_ticket")

    def __init__(self, slot: _Slot, ticket: int, n: int) -> None:
        self._slot, self._ticket, self._n = slot, ticket, n

    def result(self) -> Matrix:
        slot = self._slot
        if slot.ticket != self._ticket:
            raise ModelError(
                "this batch's buffers were reused by a later submit: collect each result "
                "before more than two batches are in flight"
            )
        try:
            slot.event.synchronize()
        except Exception as exc:  # an asynchronous CUDA error surfaces here
            raise ModelError(f"torch-cuda inference failed: {exc}") from exc
        return np.array(slot.host_out[: self._n].numpy(), dtype=np.float32)  # a copy
