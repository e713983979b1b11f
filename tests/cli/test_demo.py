"""The README's first command, `make demo` (``python -m streamproc.demo --payments``), end to
end on the session's broker and registry, with fewer events. The demo checks itself: every
event is a prediction or a dead letter of the expected reason, and the windowed features on
the predictions equal `features backfill` over the same topic; it exits 1 otherwise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streamproc.local import StackInfo

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]


def test_the_payments_demo_accounts_for_every_event_and_online_equals_offline(
    local_stack: StackInfo, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "STREAMPROC_KAFKA_BOOTSTRAP": local_stack.bootstrap,
        "STREAMPROC_SCHEMA_REGISTRY_URL": local_stack.schema_registry,
        "STREAMPROC_HOME": str(tmp_path),  # nothing of the user's own stack is touched
        "COLUMNS": "200",
    }
    p = subprocess.run(
        [sys.executable, "-m", "streamproc.demo", "--payments", "--events", "3000"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    ok = re.search(r"OK: ([\d,]+) produced = ([\d,]+) predictions \+ ([\d,]+) dead letters", out)
    assert ok, out[-4000:]
    produced, preds, dead = (int(g.replace(",", "")) for g in ok.groups())
    assert produced == preds + dead and preds > 0 and dead > 0
    same = re.search(r"online == offline: ([\d,]+) of the ([\d,]+) predictions", out)
    assert same and same.group(1) == same.group(2) and same.group(1).replace(",", "") == str(preds)
