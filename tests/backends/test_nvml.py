"""GPU telemetry: NVML readings mapped to plain dicts; [] wherever NVML is unavailable."""

from __future__ import annotations

import sys
import types

import pytest

from streamproc.backends.nvml import gpu_stats


class NVMLError(Exception):
    pass


def fake_nvml(count=2, init_error=False, unsupported=()):
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError
    m.NVML_TEMPERATURE_GPU = 0
    m.calls = []

    def init():
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")
        m.calls.append("init")

    def reading(name, value):
        def fn(handle, *args):
            if name in unsupported:
                raise NVMLError("Not Supported")
            return value(handle) if callable(value) else value

        return fn

    m.nvmlInit = init
    m.nvmlShutdown = lambda: m.calls.append("shutdown")
    m.nvmlDeviceGetCount = lambda: count
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = reading("name", lambda h: f"NVIDIA H100 #{h}".encode())
    m.nvmlDeviceGetUtilizationRates = reading("util", types.SimpleNamespace(gpu=37, memory=5))
    m.nvmlDeviceGetMemoryInfo = reading("mem", types.SimpleNamespace(used=1 << 30, total=80 << 30))
    m.nvmlDeviceGetTemperature = reading("temp", 51)
    return m


def test_maps_every_gpu(monkeypatch):
    nvml = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    stats = gpu_stats()
    assert stats == [
        {
            "index": i,
            "name": f"NVIDIA H100 #{i}",
            "utilization_pct": 37.0,
            "memory_used_bytes": 1 << 30,
            "memory_total_bytes": 80 << 30,
            "temperature_c": 51,
        }
        for i in range(2)
    ]
    assert nvml.calls == ["init", "shutdown"]


def test_unsupported_readings_are_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(count=1, unsupported=("util", "temp")))
    (gpu,) = gpu_stats()
    assert gpu["utilization_pct"] is None and gpu["temperature_c"] is None
    assert gpu["memory_total_bytes"] == 80 << 30


@pytest.mark.parametrize("module", [None, fake_nvml(init_error=True)])
def test_no_nvml_means_no_gpus(monkeypatch, module):
    monkeypatch.setitem(sys.modules, "pynvml", module)
    assert gpu_stats() == []


def test_real_nvml_on_this_machine_returns_a_list():
    stats = gpu_stats()
    assert isinstance(stats, list)
    for gpu in stats:  # only on a GPU machine
        assert gpu["memory_total_bytes"] > 0 and gpu["name"]
