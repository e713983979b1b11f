#!/usr/bin/env python
"""Throughput and latency of streamproc against four other ways to run the same workload.

``python benchmarks/throughput.py --quick`` (a few minutes on 2 cores) or without ``--quick``
for the full run, which also writes ``benchmarks/RESULTS.md``. The last line printed is one
JSON object with the figures. The harness is the package ``benchmarks/throughput/`` (its
``__init__`` says which module does what); this script only runs its ``main``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The package ``throughput/`` beside this file: with ``benchmarks/`` on the path, a package
# takes precedence over a module of the same name, so ``import throughput`` finds it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput.cli import main

if __name__ == "__main__":
    sys.exit(main())
