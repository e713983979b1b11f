"""The systems compared by ``benchmarks/throughput.py``, each run as its own OS process.

Run as ``python -m systems.<name> <config.json>`` with ``benchmarks/`` on ``PYTHONPATH``
(the harness does this); every worker reads a :class:`systems.shared.WorkerConfig`.
"""
