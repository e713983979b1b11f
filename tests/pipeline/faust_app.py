"""The Faust app of streamproc.integrations.faust's docstring, for tests/pipeline/test_faust.py.

``python tests/pipeline/faust_app.py worker`` with ``STREAMPROC_FAUST_PIPELINE`` (a pipeline
file) and ``STREAMPROC_FAUST_COUNTS`` (where the counters are written after each batch).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import faust

from streamproc.config import load_config
from streamproc.integrations.faust import FaustScorer

cfg = load_config(os.environ["STREAMPROC_FAUST_PIPELINE"])
counts = Path(os.environ["STREAMPROC_FAUST_COUNTS"])
app = faust.App(f"faust-{cfg.name}", broker=f"kafka://{cfg.kafka.bootstrap}",
                web_enabled=False, consumer_auto_offset_reset="earliest",
                datadir=str(counts.parent / "faust-data"))  # fmt: skip
scorer = FaustScorer.from_config(cfg)
events = scorer.topic(app)


@app.agent(events)
async def score(stream):  # type: ignore[no-untyped-def]
    for name in ("aiokafka", "faust", "mode"):  # the worker sets them to DEBUG
        logging.getLogger(name).setLevel(logging.WARNING)
    async for _outputs in scorer.take(app, stream, n=500, within=0.05):
        c = scorer.counters
        tmp = counts.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "events_in": c.events_in,
                    "events_out": c.events_out,
                    "rejected": dict(c.rejected),
                    "batches": c.batches,
                }
            )
        )
        tmp.replace(counts)  # the test reads whole files only


if __name__ == "__main__":
    app.main()
