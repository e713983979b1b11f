"""The throughput harness's pure logic: the passthrough's latency at streamproc's rate and
the p99 target against it, the time budget that shortens but never skips a system, and the
systems that could not run (reported, and the run fails).

Run: ``PYTHONPATH=$PWD /work/main/.venv/bin/python -m pytest benchmarks/tests -q`` (the
harness's full behaviour is ``python benchmarks/throughput.py --quick`` on the real broker).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import throughput
from throughput import cli, harness
from throughput.summary import hot_path_targets, summarize


def phase(rate: float, p99: float, main: bool) -> dict[str, Any]:
    return {"main": main, "target_rate": rate, "achieved_rate": rate - 3, "p50_ms": p99 / 3,
            "p99_ms": p99, "input_p99_ms": 4.0}  # fmt: skip


def results(sp_p99: float, pt_p99: float | None) -> dict[str, dict[str, Any]]:
    """streamproc's main phase at 40,000/s; the passthrough's main at 300,000/s and, unless
    ``pt_p99`` is None, one at streamproc's rate."""
    pt = [phase(300_000.0, 9.0, True)]
    if pt_p99 is not None:
        pt.insert(0, phase(40_000.0, pt_p99, False))
    return {
        "streamproc": {"status": "ok", "events_per_s": 80_000.0, "p99_ms": sp_p99,
                       "latency_phases": [phase(2_000.0, 5.0, False),
                                          phase(40_000.0, sp_p99, True)]},
        "passthrough": {"status": "ok", "events_per_s": 600_000.0, "p99_ms": 9.0,
                        "latency_phases": pt},
    }  # fmt: skip


def test_passthrough_at_streamproc_rate_and_the_p99_target_against_it() -> None:
    s = summarize(results(sp_p99=30.0, pt_p99=25.0), {}, {})
    pt = s["passthrough_at_streamproc_rate"]
    assert pt["rate"] == 40_000.0 and pt["p99_ms"] == 25.0 and pt["achieved_rate"] == 39_997.0
    assert s["targets"]["p99_vs_passthrough"] == {"value": 30.0, "max": 35.0, "met": True}
    # the existing absolute target stays beside it
    assert s["targets"]["p99_ms_at_half_max_rate"]["met"] is False

    missed = hot_path_targets(results(sp_p99=30.0, pt_p99=19.0), {})["p99_vs_passthrough"]
    assert missed == {"value": 30.0, "max": 29.0, "met": False}


def test_p99_against_passthrough_uses_the_medians_over_rounds() -> None:
    res = results(sp_p99=30.0, pt_p99=25.0)
    res["streamproc"]["latency_rounds"] = [
        {"round": i, "p99_ms": v} for i, v in enumerate((30.0, 80.0, 20.0), 1)
    ]
    res["passthrough"]["latency_rounds"] = [
        {"round": i, "p99_ms": v} for i, v in enumerate((25.0, 5.0, 12.0), 1)
    ]
    s = summarize(res, {}, {})
    assert s["passthrough_at_streamproc_rate"]["p99_ms"] == 12.0
    assert s["passthrough_at_streamproc_rate"]["rounds"] == 3
    assert s["targets"]["p99_vs_passthrough"] == {"value": 30.0, "max": 22.0, "met": False}


def test_without_the_passthroughs_phase_the_target_is_undecided_and_says_why() -> None:
    res = results(sp_p99=30.0, pt_p99=None)
    res["passthrough"]["budget"] = "drain cut at 25 s by the time budget"
    s = summarize(res, {}, {})
    pt = s["passthrough_at_streamproc_rate"]
    assert pt["p99_ms"] is None and "time budget" in pt["status"]
    assert s["targets"]["p99_vs_passthrough"]["met"] is None
    assert s["passthrough"]["budget"] == "drain cut at 25 s by the time budget"


def test_the_budget_shortens_every_systems_drain_but_never_to_nothing() -> None:
    p = throughput.QUICK
    assert p.budget_s is not None
    spent = time.monotonic() - 10 * p.budget_s  # long past the budget
    assert cli.drain_cut(p, spent, 1) == p.min_drain_s
    assert cli.drain_cut(p, time.monotonic(), 2) == pytest.approx(p.budget_s / 2 - 20.0, abs=1)
    assert cli.drain_cut(throughput.FULL, spent, 1) is None


def test_a_missing_peer_is_reported_and_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = harness.importlib.util.find_spec
    monkeypatch.setattr(
        harness.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("faust", "quixstreams") else real(name, *a),
    )
    monkeypatch.setattr(harness, "QUIX_SITE", tmp_path / "no-quix-site")
    assert "faust-streaming is not installed" in (harness.missing_package("faust") or "")
    assert "quixstreams is not installed" in (harness.missing_package("quix") or "")
    assert harness.missing_package("naive") is None

    res = {"naive": {"status": "ok"}, "quix": {"status": "not run: quixstreams is not ..."}}
    assert cli.failures(res, ["naive", "quix", "faust"]) == {
        "quix": "not run: quixstreams is not ...",
        "faust": "no result",
    }
    assert cli.failures(res, ["naive"]) == {}


def test_streamproc_runs_before_the_passthrough() -> None:
    assert cli.order_systems(["passthrough", "streamproc"]) == ["streamproc", "passthrough"]
    assert cli.order_systems(["streamproc", "naive"]) == ["streamproc", "naive"]
