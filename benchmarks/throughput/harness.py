"""The harness around the systems: the machine, the broker and registry, the broker's
unreported warm-up run, which peers are installed, and the in-process core measurement."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from systems.shared import COMPARED_BATCH

from streamproc.local import LocalStack, from_environment

from .config import BENCH, QUIX_SITE, ROOT, Params, log


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("confluent-kafka", "fastavro", "onnxruntime", "numpy", "faust-streaming",
                 "aiokafka"):  # fmt: skip
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    quix = _quix_version()
    if quix:
        versions["quixstreams"] = quix
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "git": git_state(),
        "versions": versions,
    }


def git_state() -> dict[str, Any]:
    """The commit measured and whether the working tree differed from it."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    import hashlib

    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "streamproc").splitlines()]
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip() or "unknown",
        "streamproc_changes": len(dirty),
        "streamproc_diff_sha256": hashlib.sha256(
            git("diff", "HEAD", "--", "streamproc").encode()
        ).hexdigest()[:12],
    }


def _quix_version() -> str | None:
    if importlib.util.find_spec("quixstreams") is not None:
        return importlib.metadata.version("quixstreams")
    for d in QUIX_SITE.glob("quixstreams-*.dist-info"):
        return d.name.removeprefix("quixstreams-").removesuffix(".dist-info") + " (isolated)"
    return None


# -- the services ----------------------------------------------------------------------------


@dataclass
class Services:
    bootstrap: str
    registry_url: str
    broker_pids: list[int] = field(default_factory=list)


@contextlib.contextmanager
def services(home: Path) -> Iterator[Services]:
    external = from_environment()
    if external is not None:
        log(f"using the services named in the environment: {external.public()}")
        yield Services(external.bootstrap, external.schema_registry)
        return
    stack = LocalStack(home=home / "stack")
    t0 = time.monotonic()
    info = stack.up()
    log(f"local broker + registry up in {time.monotonic() - t0:.1f}s: {info.public()}")
    try:
        pids = [p for p in (info.kafka_pid, info.registry_pid) if p]
        yield Services(info.bootstrap, info.schema_registry, pids)
    finally:
        stack.down()
        log("local broker + registry stopped")


def missing_package(name: str) -> str | None:
    """Why system ``name`` cannot run here (its package is not installed), else None."""
    if name == "faust" and importlib.util.find_spec("faust") is None:
        return (
            "faust-streaming is not installed: pip install 'faust-streaming>=0.11' "
            "'aiokafka[lz4]>=0.10' (or pip install -e '.[bench]')"
        )
    if name == "quix" and _quix_version() is None:
        return (
            "quixstreams is not installed: pip install quixstreams (or into an isolated "
            f"directory with: pip install --target {QUIX_SITE} quixstreams)"
        )
    return None


def warm_broker(p: Params, svc: Services, work: Path) -> dict[str, Any]:
    """The unreported warm-up run: a passthrough drain of ``p.warm_n`` events, then
    ``p.warm_s`` seconds paced at ``p.warm_rate``.

    The first worker after the broker starts saw ~0.5 s latencies for seconds (first system
    only, whichever it was), and the broker's JIT compiler took up to a third of a core for
    minutes (Params.warm_n): this run absorbs both.
    """
    from .runner import run_system  # the runner imports this module's Services
    from .workload import Workload

    warm = Params(**{**p.__dict__, "n": p.warm_n, "n_long": None, "warmup": 1_000,
                     "latency_s": p.warm_s})  # fmt: skip
    warm_load = Workload(svc, warm.warmup + warm.n, seed=4)
    try:
        result = run_system("passthrough", warm, svc, warm_load, work, p.drain_timeout_s,
                            only_rate=p.warm_rate)  # fmt: skip
    finally:
        warm_load.close()
    log(f"warm-up run (not reported): {result.get('status')}")
    return result


# -- core ------------------------------------------------------------------------------------


def run_core(p: Params, work: Path) -> dict[str, Any]:
    report = work / "core.json"
    env = {**os.environ, "PYTHONPATH": str(BENCH)}
    cmd = [sys.executable, "-m", "systems.core", str(p.core_events), str(report)]
    t0 = time.monotonic()
    try:
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=120,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        out = getattr(exc, "output", b"") or b""
        log(f"core: failed: {exc}\n{out.decode(errors='replace')[-2000:]}")
        return {"error": str(exc)}
    result: dict[str, Any] = json.loads(report.read_text())
    log(f"core: {result['events_per_s']:.0f} events/s on one core "
        f"({time.monotonic() - t0:.1f}s)")  # fmt: skip
    return result


def combine_cores(first: dict[str, Any], again: dict[str, Any]) -> dict[str, Any]:
    """Full runs measure the core twice, before the broker starts and after the last
    drain; events/s is the median of both runs' passes (the VM's speed drifts)."""
    if "error" in first or "error" in again:
        return first if "error" in again else again
    passes = first["events_per_s_passes"] + again["events_per_s_passes"]
    out = {**first, "events_per_s": float(np.median(passes)), "events_per_s_passes": passes,
           "runs_events_per_s": [first["events_per_s"], again["events_per_s"]]}  # fmt: skip
    key = f"batch_{COMPARED_BATCH}"
    if key in first and key in again:
        b1, b2 = first[key], again[key]
        both = b1["events_per_s_passes"] + b2["events_per_s_passes"]
        out[key] = {**b1, "events_per_s": float(np.median(both)),
                    "events_per_s_passes": both}  # fmt: skip
    log(f"core: median of both runs' passes {out['events_per_s']:.0f} events/s")
    return out
