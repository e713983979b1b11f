"""The ``serving:`` section: defaults, errors, and the README's example."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from streamproc.config import PipelineConfig, ServingSettings
from streamproc.errors import ConfigError
from streamproc.serving.auth import Authenticator

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_serve_anonymously_without_cache():
    s = ServingSettings()
    assert (s.host, s.port, s.tenants, s.cache.enabled, s.batching) == (
        "127.0.0.1", 8000, [], False, None)  # fmt: skip


def test_the_readme_serving_example_loads_and_reads_its_keys(tmp_path):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(\s*serving:\n.*?)```", text, re.S)
    assert block is not None
    raw = yaml.safe_load(textwrap.dedent(block.group(1)))
    cfg = PipelineConfig.model_validate(
        {"name": "p", "model": "m", "topics": {"input": "t"}, **raw}
    )
    s = cfg.serving
    assert [t.name for t in s.tenants] == ["checkout", "backoffice"] and s.cache.enabled
    secret = tmp_path / "key"
    secret.write_text("bo-key\n")
    tenants = [s.tenants[0], s.tenants[1].model_copy(update={"key_file": secret})]
    auth = Authenticator.from_settings(tenants, env={"CHECKOUT_API_KEY": "co-key"})
    assert auth.authenticate("Bearer co-key", None).name == "checkout"
    assert auth.authenticate(None, "bo-key").name == "backoffice"
    with pytest.raises(ConfigError, match="CHECKOUT_API_KEY is not set"):
        Authenticator.from_settings(s.tenants, env={})


def test_the_readme_curl_record_is_a_valid_record():
    from streamproc.models.spec import load_model_spec
    from streamproc.pipeline.app import reader_schema
    from streamproc.serving.service import RecordReader

    text = (ROOT / "README.md").read_text()
    body = re.search(r"fraud:predict -d '(\{\"instances\": \[\{\"event_id\".*?)'\n", text, re.S)
    assert body is not None
    records = yaml.safe_load(body.group(1))["instances"]
    spec = load_model_spec(ROOT / "deploy" / "models" / "fraud" / "1.0.0")
    x, bad = RecordReader(spec, reader_schema(spec)).read(records)
    assert bad == [] and x.shape == (1, 16)
