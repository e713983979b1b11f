"""Metrics through a sensor object; Prometheus is one implementation."""

from streamproc.telemetry.sensor import BatchStats, CountingSensor, Sensor, SensorGroup

__all__ = ["BatchStats", "CountingSensor", "Sensor", "SensorGroup"]
