"""GPU checks: torch on CUDA against ONNX Runtime on the CPU, by batch size and in the pipeline.

Three parts, each written to the JSON report:

1. **correctness**: the demo model on 4,396 rows (300 test rows, a few far out of
   distribution, plus 4,096 synthetic rows), ONNX Runtime on the CPU as the reference; for
   each GPU configuration the max and mean absolute difference of the probabilities and the
   share of rows whose decision (score >= threshold) agrees.
2. **throughput by batch size**: ``infer`` alone, rows/s and the median microseconds per
   call, for ONNX Runtime (CPU) and torch on CUDA (eager, CUDA graphs, fp16 graphs), on the
   demo model (16-16-2) and a wide model (16-2048-2048-2, same inputs and outputs) that gives
   the GPU real work.
3. **pipeline against the backend alone**: the in-process pipeline (framed payload batches ->
   ``BatchHandler``: decode, score, encode, drift monitor; as ``systems/core.py`` builds it)
   on torch CUDA graphs, against ``infer`` alone on the same feature matrices. The pipeline
   runs twice: one batch at a time (``handler(raw)``), and *overlapped* as the Kafka runner
   drives a handler whose backend is asynchronous (start batch k+1, then finish batch k).
   Every batch of one size launches the same GPU work, so the ratio of batches per second
   is the ratio of GPU busy time: the share of the GPU's work rate the pipeline keeps up.
   NVML's utilization (sampled every 20 ms) is recorded beside it as a cross-check.

``python benchmarks/gpu.py --json out.json [--device cpu]``; ``--device cpu`` runs torch on
the CPU in place of CUDA (a dry run of the script on a machine without a GPU; its figures
are not GPU figures).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from systems.core import WRITER_ID, raw_batches

from streamproc import schemas, synth
from streamproc.backends.base import submit
from streamproc.backends.nvml import gpu_stats
from streamproc.backends.onnx import DEMO_MODEL, OnnxRuntimeBackend
from streamproc.codecs.decoder import BatchDecoder
from streamproc.codecs.source import DictSchemaSource
from streamproc.models.spec import ModelSpec, load_model_spec
from streamproc.pipeline.app import reader_schema
from streamproc.pipeline.handler import BatchHandler, OutputTopics, SchemaIds
from streamproc.pipeline.monitoring import build_monitor
from streamproc.pipeline.scoring import SingleScorer

BATCH_SIZES = (1, 8, 32, 64, 128, 256, 1024, 4096)
BIG_BUCKETS = (1, 8, 32, 64, 128, 256, 1024, 4096)
WIDE_HIDDEN = 2048


def log(msg: str) -> None:
    print(f"[gpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wide_model(path: Path, hidden: int = WIDE_HIDDEN, seed: int = 3) -> Path:
    """A chain MLP 16 -> hidden -> hidden -> 2 (softmax) as ONNX, random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [16, hidden, hidden, 2]
    nodes, inits = [], []
    current = "features"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]  # fmt: skip
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        current = out
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes, "wide",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 2])],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def features_for(spec: ModelSpec, n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return synth.feature_matrix(synth.generate_columns(n, seed=seed, shift=shift), spec)


def torch_backend(spec: ModelSpec, device: str, **options: Any) -> Any:
    from streamproc.backends.torch_backend import TorchBackend

    return TorchBackend.from_spec(spec, device=device, **options)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# -- 1. correctness ---------------------------------------------------------------------------


def correctness(spec: ModelSpec, device: str) -> list[dict[str, Any]]:
    x = np.concatenate([features_for(spec, 280, 123), features_for(spec, 20, 7, shift=3.0),
                        features_for(spec, 4096, 77)])  # fmt: skip
    ort = OnnxRuntimeBackend.from_spec(spec)
    ref = np.concatenate([ort.infer(x[i : i + 256]) for i in range(0, len(x), 256)])
    ort.close()
    thr, idx = spec.outputs.threshold, spec.outputs.score_index
    rows = []
    for name, opts in [("fp32, CUDA graphs", {}), ("fp32, eager", {"cuda_graphs": False}),
                       ("fp16, CUDA graphs", {"fp16": True}),
                       ("fp16, eager", {"fp16": True, "cuda_graphs": False})]:  # fmt: skip
        backend = torch_backend(spec, device, **opts)
        # batches of mixed sizes: bucket padding and the split of batches over the largest
        sizes, out, i = [1, 7, 256, 300, 33, 1000], [], 0
        while i < len(x):
            n = sizes[len(out) % len(sizes)]
            out.append(backend.infer(x[i : i + n]))
            i += n
        got = np.concatenate(out)
        backend.close()
        diff = np.abs(got - ref)
        rows.append({
            "config": name, "rows": len(x),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "decision_agreement": float(((got[:, idx] >= thr) == (ref[:, idx] >= thr)).mean()),
        })  # fmt: skip
        log(f"correctness {name}: max |diff| {diff.max():.3g}")
    return rows


# -- 2. throughput by batch size --------------------------------------------------------------


def time_calls(fn: Callable[[], Any], device: str, min_s: float = 0.25) -> tuple[float, int]:
    """Median seconds per call of ``fn`` (which returns host results, so it is synchronous)."""
    for _ in range(3):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def throughput(specs: dict[str, ModelSpec], device: str) -> list[dict[str, Any]]:
    rows = []
    for model, spec in specs.items():
        big = spec.model_copy(update={"buckets": BIG_BUCKETS})
        x = features_for(spec, max(BATCH_SIZES), 5)
        configs: list[tuple[str, Callable[[], Any]]] = [
            ("onnxruntime (CPU)", lambda s=spec: OnnxRuntimeBackend.from_spec(s)),
            ("torch eager fp32", lambda s=big: torch_backend(s, device, cuda_graphs=False)),
            ("torch graphs fp32, the spec's buckets", lambda s=spec: torch_backend(s, device)),
            ("torch graphs fp32, buckets to 4096", lambda s=big: torch_backend(s, device)),
            ("torch graphs fp16, buckets to 4096",
             lambda s=big: torch_backend(s, device, fp16=True)),
        ]  # fmt: skip
        for name, make in configs:
            t0 = time.perf_counter()
            backend = make()
            load_s = time.perf_counter() - t0
            for n in BATCH_SIZES:
                batch = np.ascontiguousarray(x[:n])
                per_call, calls = time_calls(lambda b=batch, be=backend: be.infer(b), device)
                rows.append({"model": model, "config": name, "batch": n,
                             "us_per_call": per_call * 1e6, "rows_per_s": n / per_call,
                             "calls": calls, "load_s": load_s})  # fmt: skip
            backend.close()
            log(f"throughput {model} / {name}: done (load {load_s:.2f} s)")
    return rows


# -- 3. pipeline against the backend alone ----------------------------------------------------


class NvmlSampler(threading.Thread):
    """NVML GPU utilization of device 0, sampled every 20 ms while running."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML (a CPU dry run): no samples
            return
        while not self._halt.wait(0.02):
            self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def stop(self) -> float | None:
        self._halt.set()
        self.join()
        # the first samples still describe the period before the loop
        rest = self.samples[5:]
        return float(np.mean(rest)) if rest else None


def run_for(fn: Callable[[Any], Any], items: list[Any], seconds: float) -> tuple[int, float]:
    """Call ``fn`` on ``items`` in turn, whole passes, until ``seconds`` have passed:
    (calls, wall seconds)."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for item in items:
            fn(item)
        done += len(items)
    return done, time.perf_counter() - start


def loop_for(
    fn: Callable[[Any], Any],
    items: list[Any],
    device: str,
    seconds: float,
    drain: Callable[[], Any] = lambda: None,
) -> dict[str, Any]:
    for item in items[:3]:
        fn(item)
    drain()
    sync(device)
    sampler = NvmlSampler()
    sampler.start()
    start = time.perf_counter()
    done, _ = run_for(fn, items, seconds)
    drain()  # the batch still in flight (overlapped) is finished inside the timed span
    sync(device)  # the GPU work the last calls queued counts too
    wall = time.perf_counter() - start
    return {"batches_per_s": done / wall, "nvml_util_pct": sampler.stop(), "wall_s": wall}


class TwoInFlight:
    """``infer`` alone, but batch k+1 is submitted before batch k's result is collected."""

    def __init__(self, backend: Any) -> None:
        self.backend, self.held = backend, None

    def __call__(self, x: Any) -> None:
        pending = submit(self.backend, x)
        self.drain()
        self.held = pending

    def drain(self) -> None:
        if self.held is not None:
            self.held.result()
            self.held = None


class Overlapped:
    """The runner's overlap (``streamproc.kafka.runner``) under a backlog: start batch k+1,
    then finish batch k, so batch k's scores run on the GPU while k+1 is decoded and k's
    outputs are encoded and monitored."""

    def __init__(self, handler: BatchHandler, stages: dict[str, float]) -> None:
        self.handler, self.stages, self.held = handler, stages, None

    def __call__(self, raw: Any) -> None:
        started = self.handler.start(raw)
        self.drain()
        self.held = started

    def drain(self) -> None:
        if self.held is not None:
            out = self.handler.finish(self.held)
            self.held = None
            for k, v in out.stats.stage_s.items():
                self.stages[k] = self.stages.get(k, 0.0) + v


def build_handler(spec: ModelSpec, device: str) -> tuple[BatchHandler, Any, BatchDecoder]:
    """The pipeline's handler as ``systems/core.py`` builds it, on torch (CUDA graphs)."""
    backend = torch_backend(spec, device)
    source = DictSchemaSource({WRITER_ID: schemas.schema_text("Transaction")})
    decoder = BatchDecoder(spec, reader_schema(spec), source)
    handler = BatchHandler(
        decoder=decoder, scorer=SingleScorer(spec, backend),
        topics=OutputTopics("g.p", "g.dlq", "g.alerts", "g.metrics", "g.s"),
        schema_ids=SchemaIds(prediction=2, dead_letter=3, alert=4, metrics=5),
        processor_id="gpu", pipeline="gpu", monitor=build_monitor(spec, {}),
        snapshot_interval_s=3600.0,
    )  # fmt: skip
    return handler, backend, decoder


def _process(spec: ModelSpec, batch_size: int, device: str, seconds: float,
             barrier: Any, results: Any) -> None:  # fmt: skip
    """One of several pipeline processes sharing the GPU (``--procs``)."""
    handler, backend, _ = build_handler(spec, device)
    batches = raw_batches(batch_size * 16, batch_size)
    ov = Overlapped(handler, {})  # as the runner drives a handler that overlaps
    for b in batches[:3]:
        ov(b)
    ov.drain()
    barrier.wait()
    done, wall = run_for(ov, batches, seconds)
    ov.drain()
    results.put(done / wall)
    backend.close()


def shared_gpu(spec: ModelSpec, batch_size: int, device: str, seconds: float, procs: int) -> dict:
    """``procs`` pipeline processes on one GPU: their summed batches per second."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs + 1), ctx.Queue()
    workers = [ctx.Process(target=_process, args=(spec, batch_size, device, seconds, barrier,
                                                  results)) for _ in range(procs)]  # fmt: skip
    for w in workers:
        w.start()
    barrier.wait(timeout=900)  # each process imports torch and compiles its decoder first
    sampler = NvmlSampler()
    sampler.start()
    rates = [results.get(timeout=seconds + 120) for _ in workers]
    util = sampler.stop()
    for w in workers:
        w.join(timeout=60)
    return {"procs": procs, "batches_per_s": sum(rates), "nvml_util_pct": util}


def pipeline_vs_alone(
    specs: dict[str, ModelSpec],
    device: str,
    seconds: float,
    sizes: tuple[int, ...],
    procs: tuple[int, ...] = (),
) -> list[dict[str, Any]]:
    rows = []
    for model, spec in specs.items():
        for batch_size in sizes:
            big = spec.model_copy(update={"buckets": BIG_BUCKETS})
            handler, backend, decoder = build_handler(big, device)
            batches = raw_batches(batch_size * 16, batch_size)
            matrices = [decoder.decode(b.values).features for b in batches]
            alone = loop_for(backend.infer, matrices, device, seconds)
            # The backend alone with two batches in flight: the GPU's own upper bound, with
            # the copies and the synchronisation of one batch hidden behind the next.
            two = TwoInFlight(backend)
            alone2 = loop_for(two, matrices, device, seconds, drain=two.drain)
            stages: dict[str, float] = {}

            def run(b: Any, _h: Any = handler, _st: dict[str, float] = stages) -> None:
                out = _h(b)
                for k, v in out.stats.stage_s.items():
                    _st[k] = _st.get(k, 0.0) + v

            pipe = loop_for(run, batches, device, seconds)
            ov_stages: dict[str, float] = {}
            ov = Overlapped(handler, ov_stages)
            assert handler.overlaps == device.startswith("cuda")
            over = loop_for(ov, batches, device, seconds, drain=ov.drain)
            backend.close()
            n_pipe = pipe["batches_per_s"] * pipe["wall_s"] * batch_size
            n_over = over["batches_per_s"] * over["wall_s"] * batch_size
            rows.append({
                "model": model, "batch": batch_size, "alone": alone, "pipeline": pipe,
                "busy_ratio": pipe["batches_per_s"] / alone["batches_per_s"],
                "pipeline_events_per_s": pipe["batches_per_s"] * batch_size,
                "pipeline_stage_us_per_event": {k: v / n_pipe * 1e6 for k, v in stages.items()},
                "overlapped": over,
                "overlapped_busy_ratio": over["batches_per_s"] / alone["batches_per_s"],
                "alone_two_in_flight": alone2,
                "overlapped_vs_two_in_flight": over["batches_per_s"] / alone2["batches_per_s"],
                "overlapped_stage_us_per_event": {k: v / n_over * 1e6
                                                  for k, v in ov_stages.items()},
                "shared": [],
            })  # fmt: skip
            log(f"pipeline {model} batch {batch_size}: ratio {rows[-1]['busy_ratio']:.2f}, "
                f"overlapped {rows[-1]['overlapped_busy_ratio']:.2f}, against two in flight "
                f"{rows[-1]['overlapped_vs_two_in_flight']:.2f}")  # fmt: skip
            for n in procs:
                shared = shared_gpu(big, batch_size, device, seconds, n)
                shared["busy_ratio"] = shared["batches_per_s"] / alone["batches_per_s"]
                rows[-1]["shared"].append(shared)
                log(f"  {n} processes: ratio {shared['busy_ratio']:.2f}")
    return rows


def environment(device: str) -> dict[str, Any]:
    import onnxruntime
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "onnxruntime": onnxruntime.__version__, "device": device,
                           "cpu": platform.processor() or platform.machine()}  # fmt: skip
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    env["nvml"] = gpu_stats()
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seconds", type=float, default=2.0, help="per pipeline/alone loop")
    ap.add_argument("--parts", default="correctness,throughput,pipeline")
    ap.add_argument(
        "--widths",
        default=str(WIDE_HIDDEN),
        help="hidden widths of the wide models, comma-separated",
    )
    ap.add_argument("--batches", default="256,1024", help="pipeline batch sizes")
    ap.add_argument("--procs", default="", help="also N pipeline processes sharing the GPU")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    demo = load_model_spec(DEMO_MODEL)
    tmp = Path(tempfile.mkdtemp(prefix="streamproc-gpu-"))
    specs = {"demo 16-16-2": demo}
    for w in (int(w) for w in args.widths.split(",") if w):
        onnx_file = wide_model(tmp / f"wide{w}.onnx", hidden=w)
        specs[f"wide 16-{w}-{w}-2"] = demo.model_copy(update={"file": str(onnx_file)})
    sizes = tuple(map(int, args.batches.split(",")))
    procs = tuple(int(n) for n in args.procs.split(",") if n)
    report: dict[str, Any] = {"environment": environment(args.device)}
    log(json.dumps(report["environment"], default=str))

    def save() -> None:
        args.json.write_text(json.dumps(report, indent=1, default=str))

    steps = [("correctness", lambda: correctness(demo, args.device)),
             ("throughput", lambda: throughput(specs, args.device)),
             ("pipeline", lambda: pipeline_vs_alone(specs, args.device, args.seconds,
                                                    sizes, procs))]  # fmt: skip
    for name, step in steps:
        if name not in parts:
            continue
        try:
            report[name] = step()
        except Exception as exc:  # keep what the other parts measured
            import traceback

            traceback.print_exc()
            report[f"{name}_error"] = repr(exc)
        save()
    log(f"report: {args.json}")


if __name__ == "__main__":
    main()
