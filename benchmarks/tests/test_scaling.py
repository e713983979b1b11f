"""The scaling harness's pure parts: the runner's "assigned [...]" log line, the split of the
partitions between replicas and the balance of their counts, the rebalance time.

Run: ``PYTHONPATH=$PWD /work/main/.venv/bin/python -m pytest benchmarks/tests -q`` (the
harness's full behaviour is ``python benchmarks/scaling.py --quick`` on the real broker).
"""

from __future__ import annotations

import doctest
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scaling


def test_the_doctests_pass():
    assert doctest.testmod(scaling).failed == 0


def test_the_assigned_line_is_parsed_as_the_runner_logs_it(tmp_path):
    # The runner's own format string and `streamproc run`'s log format, not a copy of a line:
    # a change to either that the harness cannot read fails here.
    from streamproc.kafka import runner

    log = tmp_path / "r1.log"
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    runner.log.addHandler(handler)
    level = runner.log.level
    runner.log.setLevel(logging.INFO)
    try:
        runner.log.info("assigned %s (added %s)", [0, 3], [3])
        runner.log.info("assigned %s (added %s)", [1, 4, 5], [1, 4, 5])
    finally:
        runner.log.removeHandler(handler)
        runner.log.setLevel(level)
        handler.close()
    text = log.read_text()
    assert [p for _, p in scaling.assignments(text)] == [[0, 3], [1, 4, 5]]
    assert scaling.last_assignment(text) == [1, 4, 5]


def test_a_split_needs_every_partition_once_and_shares_within_one():
    assert scaling.split_ok({"r1": [0, 1, 2], "r2": [3, 4, 5]}, 6)
    assert scaling.split_ok({"r1": [0, 1, 2, 3], "r2": [4, 5, 6]}, 7)
    assert not scaling.split_ok({"r1": [0, 1, 2], "r2": [3, 4]}, 6)  # 5 held by none
    assert not scaling.split_ok({"r1": [0, 1, 2, 3, 4], "r2": [5]}, 6)
    assert not scaling.split_ok({"r1": [0, 1, 2, 3, 4, 5], "r2": []}, 6)


def test_balance_is_within_one_partitions_worth():
    per = 300_000 / 6
    assert scaling.balanced({"r1": 150_000, "r2": 150_000}, per)
    assert scaling.balanced({"r1": 100_000, "r2": 100_000, "r3": 100_000}, per)
    assert not scaling.balanced({"r1": 200_000, "r2": 100_000}, per - 1)


def test_the_rebalance_is_the_slowest_of_the_left_partitions():
    first = {0: 5_000, 1: 1_200, 2: 9_999, 3: 3_000}
    assert scaling.rebalance_s(first, 1_000, [1, 3]) == 2.0
    assert scaling.rebalance_s(first, 1_000, [0]) == 4.0


def test_a_partition_counts_as_taken_only_once_another_replica_logs_it():
    line = "2026-11-28 04:10:0{s},000 INFO streamproc.kafka.runner assigned {parts}\n"
    r2 = line.format(s=1, parts=[3]) + line.format(s=4, parts=[0, 3])
    taken = scaling.taken_at([r2, line.format(s=3, parts=[1])], [0, 1, 2])
    assert sorted(taken) == [0, 1]  # 2: no other replica holds it yet
    assert taken[0] - taken[1] == 1_000
