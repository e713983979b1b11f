r"""One resolution of addresses and settings for every command.

Each setting comes from the first of: the command's option, the environment
(:data:`streamproc.config.ENV_SETTINGS`), the pipeline file, the running local stack (addresses
only), the built-in default. :class:`Resolved` keeps where each effective value came from, so
``streamproc config show`` can say it.

>>> env = {"STREAMPROC_SCHEMA_REGISTRY_URL": "http://r:8081"}
>>> r = resolve_pipeline(None, env=env, stack=lambda: StackInfo("127.0.0.1:1", "http://s"))
>>> r.config.kafka.bootstrap, r.sources["kafka.bootstrap"]
('127.0.0.1:1', 'local stack')
>>> r.config.registry.url, r.sources["registry.url"]
('http://r:8081', 'env STREAMPROC_SCHEMA_REGISTRY_URL')
>>> resolve_pipeline(None, bootstrap="b:9", env=env, stack=lambda: None).sources["kafka.bootstrap"]
'option --bootstrap'

A Kafka properties file (``--kafka-config``) beats the pipeline file and loses to the options
and the environment:

>>> import tempfile
>>> props = Path(tempfile.mkdtemp()) / "client.properties"
>>> _ = props.write_text("bootstrap.servers=p:1\nsecurity.protocol=SASL_SSL\nacks=all\n")
>>> r = resolve_pipeline(None, kafka_config=props, env=env, stack=lambda: None)
>>> r.config.kafka.bootstrap, r.config.kafka.security_protocol, r.config.kafka.extra
('p:1', 'SASL_SSL', {'acks': 'all'})
>>> r.sources["kafka.security_protocol"] == f"file {props}"
True
>>> resolve_pipeline(None, bootstrap="b:9", kafka_config=props, env=env,
...                  stack=lambda: None).config.kafka.bootstrap
'b:9'
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from streamproc.config import ENV_SETTINGS, PipelineConfig, read_raw, validate
from streamproc.errors import ConfigError
from streamproc.kafka.configuration import read_properties, read_registry_properties
from streamproc.local.stack import StackInfo

StackLookup = Callable[[], StackInfo | None]
_KAFKA_CONFIG_VAR = "STREAMPROC_KAFKA_CONFIG"
# Pass-through settings (kafka.extra, e.g. from a properties file) that hold secrets by name:
# sasl.oauthbearer.client.secret, ssl.keystore.password, ssl.key.pem, ...
_SECRET = re.compile(r"password|secret|token|\.pem$|credential", re.IGNORECASE)

# The pipeline the commands assume without ``-c``: the demo's topics and model.
DEFAULT_PIPELINE: dict[str, Any] = {
    "name": "fraud",
    "model": "deploy/models/fraud/1.0.0",
    "topics": {"input": "transactions"},
}
# Settings the local stack can give: (section, key) -> StackInfo attribute.
_FROM_STACK = {("kafka", "bootstrap"): "bootstrap", ("registry", "url"): "schema_registry"}
_NO_ADDRESS = (
    "no {what} given: pass {option}, set {var}, name it in the pipeline file, or start the "
    "local stack (`streamproc local up`)"
)


@dataclass(frozen=True)
class Resolved:
    """The effective pipeline configuration and the source of each setting."""

    config: PipelineConfig
    sources: Mapping[str, str]  # dotted key -> "option --x" | "env X" | "file F" | ...
    origin: str  # the pipeline file, or "(built-in demo pipeline)"

    def settings(self) -> list[tuple[str, str, str]]:
        """``(key, value, source)`` for every setting; secrets masked."""
        out = []
        for key, value in _flatten(self.config):
            out.append((key, value, self.sources.get(key, "default")))
        return out


def _flatten(model: BaseModel, prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            out += _flatten(value, key + ".")
        elif isinstance(value, SecretStr):
            out.append((key, "**********"))
        elif isinstance(value, dict) and value:
            out += [(f"{key}.{k}", "**********" if _SECRET.search(k) else _text(v))
                    for k, v in sorted(_dotted(value).items())]  # fmt: skip
        else:
            out.append((key, _text(value)))
    return out


def _dotted(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _file_keys(raw: Mapping[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in raw.items():
        keys.add(f"{prefix}{k}")
        if isinstance(v, Mapping):
            keys |= _file_keys(v, f"{prefix}{k}.")
    return keys


def resolve_pipeline(
    path: Path | None,
    *,
    bootstrap: str | None = None,
    registry: str | None = None,
    kafka_config: Path | None = None,
    env: Mapping[str, str],
    stack: StackLookup,
    need: tuple[str, ...] = ("kafka.bootstrap", "registry.url"),
    strict: bool = True,
) -> Resolved:
    """The pipeline at ``path`` (or the demo pipeline) with every setting resolved.

    ``need`` names the addresses the command cannot do without: those fall back to the
    local stack, and a :class:`ConfigError` naming every way to give one is raised when
    none does (``strict=False``: the address is left at its default and marked unset). The
    stack is looked up only when an option, the environment and the file leave a needed
    address unset. ``kafka_config`` (else ``$STREAMPROC_KAFKA_CONFIG``) is a librdkafka
    properties file merged into the ``kafka`` section over the pipeline file's.
    """
    origin = str(path) if path is not None else "(built-in demo pipeline)"
    raw = read_raw(path) if path is not None else copy.deepcopy(DEFAULT_PIPELINE)
    sources = {k: f"file {path}" for k in _file_keys(raw)} if path is not None else {}
    options = {("kafka", "bootstrap"): ("--bootstrap", bootstrap),
               ("registry", "url"): ("--registry", registry)}  # fmt: skip
    props_file = kafka_config or (Path(env[_KAFKA_CONFIG_VAR]) if env.get(_KAFKA_CONFIG_VAR)
                                  else None)  # fmt: skip
    if props_file is not None:
        _merge_properties(raw, sources, props_file)
    for var, section, key in ENV_SETTINGS:
        option, given = options.get((section, key), ("", None))
        if given:
            raw.setdefault(section, {})[key] = given
            sources[f"{section}.{key}"] = f"option {option}"
        elif env.get(var):
            raw.setdefault(section, {})[key] = env[var]
            sources[f"{section}.{key}"] = f"env {var}"
    info: StackInfo | None = None
    looked = False
    for (section, key), attr in _FROM_STACK.items():
        dotted = f"{section}.{key}"
        if dotted in sources or dotted not in need:
            continue
        if not looked:
            info, looked = stack(), True
        if info is None and not strict:
            sources[dotted] = "UNSET: no option, environment, file or running local stack"
            continue
        if info is None:
            var = next(v for v, s, k in ENV_SETTINGS if (s, k) == (section, key))
            what = "Kafka bootstrap address" if section == "kafka" else "schema registry URL"
            raise ConfigError(_NO_ADDRESS.format(what=what, option=options[section, key][0],
                                                 var=var))  # fmt: skip
        raw.setdefault(section, {})[key] = getattr(info, attr)
        sources[dotted] = "local stack"
    return Resolved(validate(raw, origin), sources, origin)


def _merge_properties(raw: dict[str, Any], sources: dict[str, str], path: Path) -> None:
    """The properties file's settings over the ``kafka`` section of ``raw``, and its
    ``schema.registry.*`` settings over the ``registry`` section."""
    kafka = raw.setdefault("kafka", {})
    for key, value in read_properties(path).items():
        if key == "extra":
            kafka["extra"] = {**kafka.get("extra", {}), **value}
            sources.update({f"kafka.extra.{k}": f"file {path}" for k in value})
        else:
            kafka[key] = value
            sources[f"kafka.{key}"] = f"file {path}"
    registry = read_registry_properties(path)
    if registry:
        raw.setdefault("registry", {}).update(registry)
        sources.update({f"registry.{k}": f"file {path}" for k in registry})


def resolve_control_topic(option: str | None, resolved: Resolved) -> str:
    """The control topic: ``--topic``, else the resolved pipeline's (env, file, default)."""
    return option or resolved.config.topics.control
