"""``streamproc serve`` as a user types it: a process, a request, SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from streamproc import synth

pytestmark = pytest.mark.kafka

LIMIT_S = 120  # the process imports, loads the model and reads the control topic


def test_serve_command_answers_then_stops_on_sigterm(pipeline_config_factory, tmp_path):
    cfg = pipeline_config_factory(partitions=1)
    path = tmp_path / "pipeline.yaml"
    raw = cfg.model_dump(mode="json")
    raw["serving"] = {"tenants": [{"name": "shop", "key_env": "SHOP_KEY", "rate_per_s": 100}]}
    path.write_text(yaml.safe_dump(raw))
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "streamproc", "serve", "-c", str(path), "--port", "0"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "SHOP_KEY": "k-123"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + LIMIT_S
        url = None
        while url is None:
            assert p.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            found = re.search(r"on (http://127\.0\.0\.1:\d+) ", log.read_text())
            url = found.group(1) if found else None
            time.sleep(0.05)
        records, _ = synth.generate(3, seed=11)
        with httpx.Client(base_url=url, timeout=LIMIT_S) as c:
            while c.get("/v2/health/ready").status_code != 200:  # bound before the app starts
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            body = {"instances": records}
            assert c.post("/v1/models/fraud:predict", json=body).status_code == 401
            r = c.post("/v1/models/fraud:predict", json=body,
                       headers={"Authorization": "Bearer k-123"})  # fmt: skip
            assert r.status_code == 200, r.text
            preds = r.json()["predictions"]
            assert [x["event_id"] for x in preds] == [x["event_id"] for x in records]
            assert {x["model_version"] for x in preds} == {"1.0.0"}
            metrics = c.get("/metrics").text
            assert re.search(
                r'streamproc_http_requests_total\{[^}]*code="200"[^}]*\} 1\.0', metrics
            )
            assert re.search(r'streamproc_events_out_total\{[^}]*version="1.0.0"\} 3\.0', metrics)
        p.send_signal(signal.SIGTERM)
        assert p.wait(LIMIT_S) == 0, log.read_text()
        assert "every accepted request answered" in log.read_text()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)


def test_serve_without_the_extra_names_the_install(tmp_path):
    """With fastapi not found (a sitecustomize hides it from find_spec, as an install
    without the extra lacks it) the command stops with the extra to install."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import importlib.util, sys\n"
        "_find = importlib.util.find_spec\n"
        "def find_spec(name, *a, **k):\n"
        "    return None if name == 'fastapi' else _find(name, *a, **k)\n"
        "importlib.util.find_spec = find_spec\n"
    )
    path = [str(shim), os.environ.get("PYTHONPATH", ""), os.getcwd()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    r = subprocess.run(
        [sys.executable, "-m", "streamproc", "serve", "-c", "deploy/pipelines/fraud.yaml",
         "--no-control"], capture_output=True, text=True, env=env, timeout=LIMIT_S, check=False,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "pip install 'streamproc[serve]'" in " ".join(r.stderr.split())  # rich wraps lines
