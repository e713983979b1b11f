"""Adapters over confluent-kafka: the only package that imports it."""
