"""The connection profile without a broker: the README's example, the properties file."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import SecretStr

from streamproc.config import KafkaSettings, PipelineConfig
from streamproc.kafka.configuration import aiokafka_config, client_config, read_properties

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_secured_kafka_example_loads() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(kafka:\n.*?)```", text, re.S)
    assert block is not None
    cfg = PipelineConfig.model_validate(
        {"name": "p", "model": "m", "topics": {"input": "t"}, **yaml.safe_load(block.group(1))}
    )
    conf = client_config(cfg.kafka)
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    assert conf["ssl.ca.location"] == "/etc/kafka/ca.pem"
    assert str(cfg.registry.ssl_ca_location) == "/etc/registry/ca.pem"


def test_a_kcat_properties_file_round_trips(tmp_path: Path) -> None:
    f = tmp_path / "client.properties"
    f.write_text(
        "# kcat -F\n"
        "bootstrap.servers=b:9093\n"
        "security.protocol=SASL_SSL\n"
        "sasl.mechanisms=SCRAM-SHA-256\n"
        "sasl.username=u\n"
        "sasl.password=p=w#rd\n"  # '=' and '#' inside a value stay in it
        "ssl.ca.location=/ca.pem\n"
        "socket.keepalive.enable=true\n"
    )
    k = KafkaSettings.model_validate(read_properties(f))
    assert k.sasl_password == SecretStr("p=w#rd")
    assert "p=w#rd" not in repr(k) and "p=w#rd" not in str(k.model_dump())
    conf = client_config(k)
    assert conf["sasl.password"] == "p=w#rd" and conf["sasl.mechanism"] == "SCRAM-SHA-256"
    assert conf["socket.keepalive.enable"] == "true" and conf["bootstrap.servers"] == "b:9093"
    aio = aiokafka_config(KafkaSettings.model_validate(
        {**read_properties(f), "ssl_ca_location": None, "extra": {}}))  # fmt: skip
    assert aio["sasl_plain_password"] == "p=w#rd" and aio["security_protocol"] == "SASL_SSL"


def test_config_show_masks_every_secret_of_a_properties_file(tmp_path: Path) -> None:
    from streamproc.cli.resolve import resolve_pipeline

    f = tmp_path / "client.properties"
    f.write_text("bootstrap.servers=b:1\nsasl.password=pw-1\nssl.key.password=pw-2\n"
                 "sasl.oauthbearer.client.secret=pw-3\nssl.keystore.password=pw-4\n")  # fmt: skip
    rows = resolve_pipeline(None, kafka_config=f, env={"STREAMPROC_SCHEMA_REGISTRY_URL": "http://r"},
                            stack=lambda: None).settings()  # fmt: skip
    text = repr(rows)
    assert "kafka.sasl_password" in text and "kafka.extra.ssl.keystore.password" in text
    assert not any(f"pw-{i}" in text for i in range(1, 5)), text


def test_the_readme_personal_data_example_loads() -> None:
    from streamproc.personal import Redactor

    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(personal_data:\n.*?)```", text, re.S)
    assert block is not None
    cfg = PipelineConfig.model_validate(
        {"name": "p", "model": "m", "topics": {"input": "t"}, **yaml.safe_load(block.group(1))}
    )
    r = Redactor.from_settings(cfg.personal_data, env={})
    assert r is not None and r.fields == ("account_id",) and r.key_personal
