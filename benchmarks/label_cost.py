#!/usr/bin/env python
"""What reading a label costs the feedback reader: the compiled batch decoder against
fastavro per record.

``FeedbackReader`` decodes each consumed chunk of ``Label`` records with the pipeline's
``BatchDecoder`` (``label_spec``: the label as the index of one of the model's labels,
the event id, the time). Until 2026-11-27 it read each record with fastavro. Both run here
on the same framed records in memory (UUID-like ids, chunks of 500 as the reader consumes
them), in turn, ``--rounds`` times; their outputs are checked equal first. Pinned to one
CPU. The reader's thread holds the GIL while it decodes, so this is time the pipeline's
main thread cannot run.

``python benchmarks/label_cost.py [--n 100000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import fastavro
import numpy as np

from streamproc import schemas
from streamproc.codecs.decoder import BatchDecoder
from streamproc.codecs.source import DictSchemaSource
from streamproc.kafka.feedback import label_spec

CHUNK = 500  # FeedbackReader consumes up to 500 records at a time
LABELS = ("legit", "fraud")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    parsed = schemas.parsed("Label")
    head = b"\x00" + (7).to_bytes(4, "big")
    values = []
    for i in range(args.n):
        buf = io.BytesIO()
        rec = {"event_id": f"{i:08x}-7c1e-4b7a-9c3d-{i:012x}", "label": LABELS[i % 10 == 0],
               "time": 1_795_000_000_000 + i}  # fmt: skip
        fastavro.schemaless_writer(buf, parsed, rec)
        values.append(head + buf.getvalue())
    decoder = BatchDecoder(label_spec(LABELS), schemas.schema_dict("Label"),
                           DictSchemaSource({7: schemas.schema_dict("Label")}))  # fmt: skip
    symbols = np.array(LABELS, dtype=object)

    def batch() -> tuple[list[str], list[str]]:
        ids: list[str] = []
        labels = []
        for lo in range(0, len(values), CHUNK):
            dec = decoder.decode(values[lo : lo + CHUNK])
            ids += list(dec.event_ids)
            labels.append(symbols[dec.features[:, 0].astype(np.intp)])
        return ids, np.concatenate(labels).tolist()

    def per_record() -> tuple[list[str], list[str]]:
        ids, labels = [], []
        for v in values:
            rec = fastavro.schemaless_reader(io.BytesIO(v[5:]), parsed, None)
            ids.append(str(rec["event_id"]))
            labels.append(str(rec["label"]))
        return ids, labels

    assert batch() == per_record()
    runs: dict[str, list[float]] = {"batch_decoder": [], "fastavro_per_record": []}
    ways: dict[str, Callable[[], object]] = {"batch_decoder": batch,
                                             "fastavro_per_record": per_record}  # fmt: skip
    for _ in range(args.rounds):
        for name, way in ways.items():
            t = time.perf_counter()
            way()
            runs[name].append((time.perf_counter() - t) / args.n * 1e6)
    out: dict[str, object] = {f"{k}_us_per_label": round(statistics.median(v), 3)
                              for k, v in runs.items()}  # fmt: skip
    out["rounds"] = {k: [round(x, 3) for x in v] for k, v in runs.items()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
