"""streamproc: streaming inference on Kafka.

Avro events in, checked against a Confluent-compatible schema registry, micro-batched,
scored by an inference backend, predictions out; every rejected event is a dead letter.
"""

__version__ = "0.1.0"
