"""HTTP serving: ``streamproc serve`` against BentoML (adaptive batching), same model, same
load generator, same concurrency and rows per request.

    python benchmarks/serving.py --quick      # prints one JSON object

It also runs benchmarks/backfill.py's measurement (``streamproc score`` over a topic range
against the in-process core rate) and merges its keys into the same object.

Both servers run the ONNX model deploy/models/fraud/1.1.0 on the CPU with one intra-op
thread, each in its own process on this machine; the load generator is Debian's ``hey``
(``apt-get install -y hey``), run the same way against both: ``-c`` connections for
``-z`` seconds after a warm-up, each request one JSON body of ``--rows`` rows.
streamproc serves the KServe v2 route (``/v2/models/fraud/infer``) with ``--no-control``
(the configured version, no Kafka: the HTTP path alone), BentoML its ``/predict`` route
(benchmarks/bentoml_fraud.py). BentoML is installed as its users do, in a virtualenv of
its own: ``python -m venv benchmarks/out/bentoml-venv &&
benchmarks/out/bentoml-venv/bin/pip install bentoml onnxruntime`` (``--bentoml-python``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "deploy" / "models" / "fraud" / "1.1.0"
BENTO_PY = ROOT / "benchmarks" / "out" / "bentoml-venv" / "bin" / "python"
START_LIMIT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {START_LIMIT_S} s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def rows(n: int) -> np.ndarray:
    from streamproc import synth
    from streamproc.models.spec import load_model_spec

    spec = load_model_spec(MODEL_DIR)
    return synth.feature_matrix(synth.generate_columns(n, seed=42), spec)


def hey(url: str, body: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """One ``hey`` run; its summary parsed (requests/s, p50, p99, status codes)."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST",
           "-T", "application/json", "-D", str(body), url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        if m is None:
            raise RuntimeError(f"hey output without {pattern!r}:\n{out}")
        return float(m.group(1))

    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    return {
        "requests_per_s": round(num(r"Requests/sec:\s+([\d.]+)"), 1),
        "p50_ms": round(num(r"50%+ in ([\d.]+) secs") * 1000, 2),
        "p99_ms": round(num(r"99%+ in ([\d.]+) secs") * 1000, 2),
        "status_codes": codes,
        # Non-200 answers and requests that got none (hey's "Error distribution").
        "errors": sum(n for c, n in codes.items() if c != 200) + _failed(out),
    }


def _failed(out: str) -> int:
    _, _, errors = out.partition("Error distribution:")
    return sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", errors, re.M))


def measure(name: str, url: str, body: Path, args: argparse.Namespace) -> dict[str, Any]:
    hey(url, body, args.concurrency, args.warmup)  # warm-up: connections, caches, JIT
    r = hey(url, body, args.concurrency, args.seconds)
    r.update(concurrency=args.concurrency, rows_per_request=args.rows, seconds=args.seconds)
    print(f"{name}: {r}", file=sys.stderr)
    return r


def streamproc_http(args: argparse.Namespace, x: np.ndarray, tmp: Path) -> dict[str, Any]:
    cfg = {
        "name": "bench-serve", "model": str(MODEL_DIR), "topics": {"input": "bench"},
        "batching": {"max_batch_size": args.max_batch, "max_wait_ms": args.max_wait_ms},
        "serving": {"max_queue_rows": 65_536},
    }  # fmt: skip
    path = tmp / "serve.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    port = free_port()
    log = tmp / "streamproc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamproc", "serve", "-c", str(path), "--no-control",
             "--port", str(port), "--log-level", "WARNING"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/v2/health/ready", proc, log)
        body = tmp / "v2.json"
        body.write_text(json.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                                                "shape": list(x.shape),
                                                "data": x.ravel().tolist()}]}))  # fmt: skip
        check = httpx.post(f"{base}/v2/models/fraud/infer", content=body.read_bytes())
        got = np.array(check.json()["outputs"][0]["data"], np.float32).reshape(len(x), -1)
        result = measure("streamproc_http", f"{base}/v2/models/fraud/infer", body, args)
        metrics = httpx.get(f"{base}/metrics").text
        n = _sample(metrics, "streamproc_http_batch_rows_count")
        s = _sample(metrics, "streamproc_http_batch_rows_sum")
        result["mean_batch_rows"] = round(s / n, 1) if n else None
        result["scores"] = got
        return result
    finally:
        stop(proc)


def bentoml_http(args: argparse.Namespace, x: np.ndarray, tmp: Path) -> dict[str, Any]:
    python = Path(args.bentoml_python)
    if not python.exists():
        return {"error": f"no BentoML: {python} is missing; python -m venv "
                         "benchmarks/out/bentoml-venv && benchmarks/out/bentoml-venv/bin/pip "
                         "install bentoml onnxruntime"}  # fmt: skip
    port = free_port()
    log = tmp / "bentoml.log"
    env = {**os.environ, "BENCH_ONNX_MODEL": str(MODEL_DIR / "model.onnx"),
           "BENCH_MAX_BATCH": str(args.max_batch), "BENTOML_DO_NOT_TRACK": "True",
           "BENCH_MAX_LATENCY_MS": str(args.bentoml_max_latency_ms),
           "BENTOML_HOME": str(tmp / "bentoml-home")}  # fmt: skip
    env.pop("PYTHONPATH", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(python), "-m", "bentoml", "serve", "bentoml_fraud:Fraud", "--port", str(port),
             "--host", "127.0.0.1"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT / "benchmarks", env=env,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/readyz", proc, log)
        body = tmp / "bento.json"
        body.write_text(json.dumps({"features": x.tolist()}))
        check = httpx.post(f"{base}/predict", content=body.read_bytes(),
                           headers={"Content-Type": "application/json"})  # fmt: skip
        got = np.array(check.json(), np.float32).reshape(len(x), -1)
        result = measure("bentoml_http", f"{base}/predict", body, args)
        result["scores"] = got
        return result
    finally:
        if proc.poll() is None:  # BentoML starts worker processes: stop its whole group
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


def _sample(metrics: str, name: str) -> float:
    m = re.search(rf"^{name}\{{[^}}]*\}} ([\d.e+]+)$", metrics, re.M)
    return float(m.group(1)) if m else 0.0


def _version(python: str, module: str) -> str:
    r = subprocess.run([python, "-c", f"import {module}; print({module}.__version__)"],
                       capture_output=True, text=True, check=False)  # fmt: skip
    return r.stdout.strip() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 s runs after a 2 s warm-up")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rows", type=int, default=1, help="rows per request")
    ap.add_argument("--max-batch", type=int, default=256, help="both servers' batch cap")
    ap.add_argument("--max-wait-ms", type=float, default=2.0, help="streamproc's window")
    ap.add_argument("--bentoml-max-latency-ms", type=int, default=60_000,
                    help="BentoML's max_latency_ms (its default: 60 s)")  # fmt: skip
    ap.add_argument("--bentoml-python", default=str(BENTO_PY))
    ap.add_argument("--only", choices=["streamproc", "bentoml", "backfill"])
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.warmup = 5.0, 2.0
    http = args.only != "backfill"
    if http and shutil.which("hey") is None:
        sys.exit("hey is not installed: apt-get install -y hey")
    x = rows(args.rows)
    from streamproc.backends.onnx import OnnxRuntimeBackend
    from streamproc.models.spec import load_model_spec

    want = OnnxRuntimeBackend.from_spec(load_model_spec(MODEL_DIR)).infer(x)
    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "load_generator": "hey", "concurrency": args.concurrency, "rows_per_request": args.rows,
        "model": str(MODEL_DIR.relative_to(ROOT)),
        "versions": {"bentoml": _version(args.bentoml_python, "bentoml")
                     if args.only in (None, "bentoml") else None},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as d:
        tmp = Path(d)
        for name, run in (("streamproc_http", streamproc_http), ("bentoml_http", bentoml_http)):
            if args.only and not name.startswith(args.only):  # backfill: no HTTP
                continue
            r = run(args, x, tmp)
            scores = r.pop("scores", None)
            if scores is not None:  # both must serve the model's own scores
                r["scores_match_onnx"] = bool(np.allclose(scores, want, rtol=1e-5, atol=1e-6))
            out[name] = r
    if args.only in (None, "backfill"):
        # `streamproc score` over a topic range and over Avro files against the in-process
        # core, same run (benchmarks/backfill.py): backfill_events_per_s, files_*,
        # core_events_per_s and ratios.
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import backfill

        out.update(backfill.measure(args.quick))
    sp, bm = out.get("streamproc_http", {}), out.get("bentoml_http", {})
    if "requests_per_s" in sp and "requests_per_s" in bm:
        out["throughput_ratio"] = round(sp["requests_per_s"] / bm["requests_per_s"], 2)
        out["target_2x_at_lower_p99"] = bool(
            out["throughput_ratio"] >= 2.0 and sp["p99_ms"] <= bm["p99_ms"]
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
