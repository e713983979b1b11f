"""The README's commands, typed as a user types them, in the README's order, on a fresh
local stack, in subprocesses with a scrubbed environment (no address set by hand).

local up -> config show -> schemas apply -> run -> produce -> tail -> deploy a canary ->
status -> rollback -> deploy, promote, rollback -> rollback --to -> alerts tail -> local down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "streamproc"
FRAUD = "deploy/pipelines/fraud.yaml"


def _scrubbed_env(home: Path) -> dict[str, str]:
    """What a user's shell has: no STREAMPROC_* address. The stack's state goes to a
    directory of this test's (STREAMPROC_HOME), so the user's own stack is not touched."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "JAVA_HOME", "TMPDIR", "PYTHONPATH")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    for k in ("STREAMPROC_CACHE_DIR", "STREAMPROC_MAVEN_SETTINGS"):  # where jars come from
        if k in os.environ:
            env[k] = os.environ[k]
    env["STREAMPROC_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


Cli = Callable[..., str]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    env = _scrubbed_env(tmp_path_factory.mktemp("user-home"))

    def run(*args: str, ok: bool = True, timeout: float = 180) -> str:
        p = subprocess.run([str(BIN), *args], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=timeout, check=False)  # fmt: skip
        if ok:
            assert p.returncode == 0, f"streamproc {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
        return p.stdout if p.returncode == 0 else p.stdout + p.stderr

    run.env = env  # type: ignore[attr-defined]
    try:
        yield run
    finally:
        run("local", "down", ok=False)


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _status(cli: Cli) -> dict[str, Any]:
    return dict(json.loads(cli("status", "fraud", "-o", "json"))[0])


def _wait_serving(cli: Cli, check: Callable[[dict[str, Any]], bool], what: str) -> dict:
    """The status once replica-1 reports what ``check`` wants (at most 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        out = cli("status", "fraud", "-o", "json", ok=False)
        if "has never been deployed" in out:  # the processor has not published yet
            assert time.monotonic() < deadline, "the processor never published its model"
            time.sleep(0.5)
            continue
        state = json.loads(out)[0]
        replicas = [r for r in state["replicas"] if r["instance"] == "replica-1"]
        if replicas and replicas[0]["revision"] == state["revision"] and check(replicas[0]):
            return {**state, "replica": replicas[0]}
        assert time.monotonic() < deadline, f"replica-1 never served {what}: {state}"
        time.sleep(0.5)


def _versions(cli: Cli, seed: int) -> Counter[str]:
    """model_version of every prediction of the events ``produce --seed`` made."""
    out = _lines(cli("tail", "transactions.predictions", "-n", "1000000", "--timeout", "8"))
    return Counter(p["model_version"] for p in out if p["event_id"].startswith(f"ev-{seed}-"))


def test_the_readme_flow_as_typed(cli: Cli, tmp_path: Path) -> None:
    stack = json.loads(cli("local", "up"))
    assert stack["bootstrap"].startswith("127.0.0.1:")

    shown = json.loads(cli("config", "show", "-c", FRAUD, "-o", "json"))["settings"]
    assert shown["kafka.bootstrap"] == {"value": stack["bootstrap"], "source": "local stack"}
    assert shown["registry.url"] == {"value": stack["schema_registry"], "source": "local stack"}

    subjects = json.loads(cli("schemas", "apply", "-c", FRAUD))
    assert "transactions-value" in subjects and "transactions.predictions-value" in subjects

    # As in the README, but on a free metrics port: 9464 may be taken on a test machine.
    env: dict[str, str] = cli.env  # type: ignore[attr-defined]
    log_path = tmp_path / "run.log"  # a file, not a pipe nobody reads while it runs
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        [str(BIN), "run", "-c", FRAUD, "--instance", "replica-1", "--metrics-port", "0"],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        # The processor makes its configured model the stable version and reports it.
        first = _wait_serving(cli, lambda r: r["stable"] == "1.0.0", "1.0.0")
        assert first["actor"] == "processor replica-1" and first["revision"] == 1

        args = ["--count", "3000", "--rate", "2000", "--malformed", "0.02", "--shift", "0.5"]
        report = json.loads(cli("produce", "--topic", "transactions", *args))
        bad = sum(report["malformed"].values())
        assert report["produced"] == 3000 and bad > 0
        preds = _lines(cli("tail", "transactions.predictions", "-n", "5"))
        assert len(preds) == 5 and {p["model_version"] for p in preds} == {"1.0.0"}
        dead = _lines(cli("tail", "transactions.dlq", "-n", "5"))
        assert len(dead) == 5 and all(d["reason"] for d in dead)

        # A canary on the running processor: 10% of keys on 1.1.0, live.
        out = cli("deploy", "fraud", "1.1.0", "--strategy", "canary", "--percent", "10")
        returned_ms = time.time_ns() // 1_000_000
        assert "candidate 1.1.0 [canary, canary 10%], active" in out
        canary = _wait_serving(cli, lambda r: r["candidate"] == "1.1.0", "the canary")
        took_ms = canary["replica"]["applied_ms"] - canary["updated_ms"]
        print(
            f"canary served {took_ms} ms after the command stamped it, "
            f"{canary['replica']['applied_ms'] - returned_ms} ms after the command returned"
        )
        assert 0 <= took_ms < 10_000  # the target is 2 s; see the closing note
        text = cli("status", "fraud")
        assert "replica-1: serving revision 2 (stable 1.0.0, 1.1.0 at 10%)" in text
        cli("produce", "--count", "4000", "--seed", "1")
        versions = _versions(cli, 1)
        share = versions["1.1.0"] / sum(versions.values())
        assert sum(versions.values()) == 4000 and 0.08 <= share <= 0.12, versions

        out = cli("rollback", "fraud")
        returned_ms = time.time_ns() // 1_000_000
        assert "stable 1.0.0 (1.1.0 rolled back)" in out
        back = _wait_serving(cli, lambda r: r["candidate"] is None, "stable only")
        print(
            f"rollback served {back['replica']['applied_ms'] - back['updated_ms']} ms after "
            f"the command stamped it, {back['replica']['applied_ms'] - returned_ms} ms after "
            "the command returned"
        )
        cli("produce", "--count", "500", "--seed", "2")
        assert _versions(cli, 2) == Counter({"1.0.0": 500})

        # Promotion, then rollback: back to the previous stable version.
        cli("deploy", "fraud", "1.1.0")
        cli("promote", "fraud")
        _wait_serving(cli, lambda r: r["stable"] == "1.1.0", "1.1.0 promoted")
        cli("produce", "--count", "300", "--seed", "3")
        assert _versions(cli, 3) == Counter({"1.1.0": 300})
        assert "revert 1.1.0, back to 1.0.0" in cli("rollback", "fraud")
        _wait_serving(cli, lambda r: r["stable"] == "1.0.0", "1.0.0 again")
        # And --to any version that was stable before.
        assert "roll back to 1.1.0 from 1.0.0" in cli("rollback", "fraud", "--to", "1.1.0")
        refused = cli("rollback", "fraud", "--to", "9.9.9", ok=False)
        assert "9.9.9 was never its stable version" in refused
        hist = json.loads(cli("history", "fraud", "-o", "json"))
        assert [h["stable"] for h in hist] == ["1.0.0", "1.0.0", "1.0.0", "1.0.0", "1.1.0",
                                               "1.0.0", "1.1.0"]  # fmt: skip

        # The shifted traffic raised drift alerts, for subscribers to read.
        alerts = _lines(cli("alerts", "tail", "--model", "fraud", "-n", "3", "--timeout", "8"))
        assert alerts and {a["model_name"] for a in alerts} == {"fraud"}
        assert any(a["type"] == "input_drift" for a in alerts)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log_file.close()
    log = log_path.read_text()
    assert proc.returncode == 0, log
    assert "stopped:" in log
    # A clean stop leaves no replica behind in the status.
    assert _status(cli)["replicas"] == []
