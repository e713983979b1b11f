"""Insight on the stream: per-event outlier scores, probing detection, sampled explanations.

Pure logic (no Kafka): :mod:`streamproc.pipeline.insight` wires it to the batch handler.
"""
