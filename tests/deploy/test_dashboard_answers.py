"""A real Prometheus scraping a real processor under load answers every dashboard panel and
every alert rule: a panel or rule with no series is a failure.

Alert rules are evaluated whole (they must parse and run) and, since most hold their
condition only on a bad day, by their operands too: each side of every top-level comparison
or ``and`` (``lag > 1000 and deriv(lag[10m]) > 0`` -> ``lag`` and ``deriv(lag[10m])``) must
return series; scalar thresholds are not queries. The rollback and drift operands answer
because the processor exports those series at 0 from start-up. The GPU gauges come from a
stand-in target serving the processor's own GPU collector with NVML's readings stubbed (this
machine has no GPU): their names and labels are the real collector's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from streamproc.loadgen import produce_synthetic
from streamproc.telemetry.health import HealthServer, health_app
from streamproc.telemetry.prometheus import GpuCollector

from .promql import RULES, is_scalar, panel_queries, rules, split_top_level

pytestmark = pytest.mark.kafka


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        msg = "no `prometheus` binary: apt-get install -y --no-install-recommends prometheus"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run this test: {msg}")
        pytest.skip(msg)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, binary: str, tmp: Path, targets: dict[str, list[str]]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": t}]} for job, t in targets.items()
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.log_path = tmp / "prometheus.log"
        end = time.monotonic() + 60
        while not self._ready():
            assert self.proc.poll() is None, f"prometheus exited: {self.log_path.read_text()}"
            assert time.monotonic() < end, "prometheus not ready in 60 s"
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5):
                return True
        except OSError:
            return False

    def query(self, expr: str) -> dict[str, Any]:
        q = urllib.parse.urlencode({"query": expr})
        url = f"http://127.0.0.1:{self.port}/api/v1/query?{q}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:  # 400: the expression does not parse
            return json.loads(exc.read())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()


def queries() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(where, expr) that must return series: every panel's, every recording rule's, every
    alert rule's operands; and those that must only run: the alert rules whole (quiet now)."""
    answer, run = panel_queries(), []
    for r in rules():
        if "record" in r:
            answer.append((f"record {r['record']}", r["expr"]))
            continue
        run.append((f"alert {r['alert']}", r["expr"]))
        for i, operand in enumerate(split_top_level(r["expr"])):
            if not is_scalar(operand):
                answer.append((f"alert {r['alert']} operand {i}", operand))
    return answer, run


def test_every_panel_and_rule_answers(
    tmp_path, pipeline_config_factory, processor_factory, event_producer_factory
):
    binary = prometheus_binary()
    cfg = pipeline_config_factory(metrics={"port": 0})
    running = processor_factory(cfg)
    port = running.processor.metrics_port
    assert port

    gpus = CollectorRegistry()
    gpus.register(GpuCollector(cfg.name, lambda: [{"index": 0, "memory_used_bytes": 6e9,
                                                   "memory_total_bytes": 8e9,
                                                   "utilization_pct": 40.0}]))  # fmt: skip
    gpu_target = HealthServer(health_app(gpus), 0)

    stop = threading.Event()
    producer = event_producer_factory(cfg.topics.input)

    def load() -> None:  # a steady stream with dead letters in it, until the test ends
        i = 0
        while not stop.is_set():
            produce_synthetic(producer, 200, rate=1000, malformed=0.05, seed=i, offset=i * 200)
            i += 1

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    targets = {"streamproc": [f"127.0.0.1:{port}"],
               "gpu-standin": [f"127.0.0.1:{gpu_target.port}"]}  # fmt: skip
    prom = Prometheus(binary, tmp_path, targets)
    try:
        answer, run = queries()
        for where, expr in run:
            res = prom.query(expr)
            assert res.get("status") == "success", f"{where}: {expr!r} -> {res}"
        todo = dict.fromkeys(answer)
        results: dict[tuple[str, str], dict[str, Any]] = {}
        # Rates need two scrapes and the rules an evaluation or two: ask again until every
        # query answers or the deadline passes.
        end = time.monotonic() + 120
        while todo and time.monotonic() < end:
            for key in list(todo):
                results[key] = res = prom.query(key[1])
                if res.get("status") == "success" and res["data"]["result"]:
                    del todo[key]
            time.sleep(1)
        broken = [f"{where}: {expr!r} -> {results[(where, expr)]}" for where, expr in todo]
        assert not broken, "queries without series:\n" + "\n".join(broken)
        assert running.processor.counters.events_in > 0
    finally:
        stop.set()
        loader.join(30)
        prom.close()
        gpu_target.close()
