"""``python -m throughput`` (with ``benchmarks/`` on the path) runs the benchmark too."""

import sys

from throughput.cli import main

sys.exit(main())
