"""Backend selection: preference order, skipping, explicit requests, errors."""

from __future__ import annotations

import logging

import pytest

from streamproc.backends import select
from streamproc.backends.select import BackendFactory, load_backend, probe
from streamproc.errors import BackendUnavailableError, ConfigError, ModelError


class Fake:
    def __init__(self, name, **options):
        self.name, self.device, self.options = name, "fake", options

    def infer(self, batch):
        return batch

    def close(self):
        pass


def factory(name, reasons=(), fail=None, loaded=None):
    def load(spec, **options):
        if loaded is not None:
            loaded.append(name)
        if fail is not None:
            raise fail
        return Fake(name, **options)

    return BackendFactory(lambda: list(reasons), load)


@pytest.fixture
def spec(demo_spec):
    assert demo_spec.backends == ("tensorrt", "torch-cuda", "onnxruntime")
    return demo_spec


def test_walks_spec_backends_and_logs_what_it_skips(spec, caplog):
    loaded = []
    table = {
        "tensorrt": factory("tensorrt", ["no NVIDIA driver"], loaded=loaded),
        "torch-cuda": factory("torch-cuda", ["torch is not installed"], loaded=loaded),
        "onnxruntime": factory("onnxruntime", loaded=loaded),
    }
    with caplog.at_level(logging.INFO, logger="streamproc.backends"):
        backend = load_backend(spec, factories=table)
    assert backend.name == "onnxruntime"
    assert loaded == ["onnxruntime"]  # unavailable backends are never loaded
    text = caplog.text
    assert "tensorrt skipped: no NVIDIA driver" in text
    assert "torch-cuda skipped: torch is not installed" in text
    assert "runs on onnxruntime" in text


def test_first_available_wins(spec):
    table = {n: factory(n) for n in ("tensorrt", "torch-cuda", "onnxruntime")}
    assert load_backend(spec, factories=table).name == "tensorrt"


def test_prefer_overrides_the_spec_order(spec):
    table = {n: factory(n) for n in ("tensorrt", "torch", "onnxruntime")}
    assert load_backend(spec, prefer=["torch", "tensorrt"], factories=table).name == "torch"


def test_explicit_unavailable_backend_raises_with_every_reason(spec):
    table = {"tensorrt": factory("tensorrt", ["no NVIDIA driver", "pip install it"])}
    with pytest.raises(BackendUnavailableError) as err:
        load_backend(spec, prefer=["tensorrt"], factories=table)
    assert "tensorrt: no NVIDIA driver; pip install it" in str(err.value)
    assert isinstance(err.value, ModelError)


def test_a_backend_that_fails_to_load_falls_through_and_is_chained(spec):
    boom = ModelError("engine build failed")
    table = {
        "tensorrt": factory("tensorrt", fail=boom),
        "onnxruntime": factory("onnxruntime"),
    }
    assert load_backend(spec, prefer=["tensorrt", "onnxruntime"], factories=table).name == (
        "onnxruntime"
    )
    with pytest.raises(BackendUnavailableError, match="engine build failed") as err:
        load_backend(spec, prefer=["tensorrt"], factories=table)
    assert err.value.__cause__ is boom


def test_bugs_in_a_loader_are_not_swallowed(spec):
    table = {"onnxruntime": factory("onnxruntime", fail=KeyError("bug"))}
    with pytest.raises(KeyError):
        load_backend(spec, prefer=["onnxruntime"], factories=table)


def test_options_reach_only_their_backend(spec):
    table = {n: factory(n) for n in ("torch", "onnxruntime")}
    backend = load_backend(
        spec,
        prefer=["onnxruntime"],
        options={"onnxruntime": {"intra_op_threads": 2}, "torch": {"fp16": True}},
        factories=table,
    )
    assert backend.options == {"intra_op_threads": 2}


def test_unknown_or_empty_preferences_are_config_errors(spec):
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        load_backend(spec, prefer=["onnxruntime", "tpu"])
    with pytest.raises(ConfigError, match="empty"):
        load_backend(spec, prefer=[])
    with pytest.raises(ConfigError):
        probe("tpu")


def test_real_onnxruntime_loads_here(spec, features):
    backend = load_backend(spec)  # tensorrt / torch-cuda skipped or used, whatever is here
    try:
        assert backend.infer(features[:2]).shape == (2, 2)
    finally:
        backend.close()


def test_tensorrt_without_driver_or_package_names_what_is_missing(spec, monkeypatch):
    monkeypatch.setattr(select, "nvidia_driver", lambda: None)
    monkeypatch.setattr(select.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailableError) as err:
        load_backend(spec, prefer=["tensorrt"])
    msg = str(err.value)
    assert "no NVIDIA driver" in msg
    assert "tensorrt is not installed" in msg and "pycuda is not installed" in msg
    assert "pip install 'streamproc[gpu]'" in msg


def test_torch_probes_name_the_missing_driver_and_extra(spec, monkeypatch):
    monkeypatch.setattr(select, "nvidia_driver", lambda: None)
    assert probe("torch-cuda")[0] == select.NO_DRIVER
    monkeypatch.setattr(select.importlib.util, "find_spec", lambda name: None)
    assert "pip install 'streamproc[torch]'" in " ".join(probe("torch-cuda"))
    assert "pip install 'streamproc[torch]'" in " ".join(probe("torch"))


def test_nvidia_driver_reads_the_proc_file(tmp_path, monkeypatch):
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15\nGCC\n")
    real_path = select.Path
    monkeypatch.setattr(
        select, "Path", lambda p: version if p == "/proc/driver/nvidia/version" else real_path(p)
    )
    assert select.nvidia_driver() == "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15"


def test_torch_backend_without_torch_names_the_extra(spec, monkeypatch):
    import sys

    from streamproc.backends.torch_backend import TorchBackend
    from streamproc.errors import DependencyMissingError

    monkeypatch.setitem(sys.modules, "torch", None)  # import raises ImportError
    with pytest.raises(DependencyMissingError, match=r"pip install 'streamproc\[torch\]'"):
        TorchBackend.from_spec(spec)
