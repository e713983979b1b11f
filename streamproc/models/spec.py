"""``model.yaml``: a model's input mapping, constraints, outputs and backend preferences.

>>> spec = ModelSpec.model_validate({
...     "name": "fraud", "version": "1.2.0", "file": "model.onnx",
...     "inputs": [
...         {"field": "amount", "min": 0},
...         {"field": "device_trust_score", "null": "impute", "impute": 0.5},
...         {"field": "channel", "encoding": "onehot", "symbols": ["POS", "ECOM"]},
...     ],
... })
>>> spec.columns
['amount', 'device_trust_score', 'channel=POS', 'channel=ECOM']
>>> spec.n_features
4
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streamproc.errors import ModelError
from streamproc.features.spec import FeaturesSpec

SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

BackendName = Literal["tensorrt", "torch-cuda", "torch", "onnxruntime"]


class FeatureSpec(BaseModel):
    """One Avro field (dotted path for nested records) mapped to one or more columns."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    field: str
    # value: the number itself (booleans 0/1, timestamps in ms); onehot / index: enums.
    encoding: Literal["value", "onehot", "index"] = "value"
    symbols: tuple[str, ...] = ()  # enum symbols, in column order
    # What a null becomes: a dead letter (reject), NaN, or the imputed value.
    null: Literal["reject", "nan", "impute"] = "reject"
    impute: float = 0.0
    min: float | None = None
    max: float | None = None
    allow_nan: bool = False
    length: int | None = Field(None, ge=1)  # fixed-length array of numbers (embedding)

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        if self.encoding != "value" and not self.symbols:
            raise ValueError(f"feature {self.field!r}: encoding {self.encoding} needs symbols")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.field!r}: min > max")
        return self

    @property
    def columns(self) -> list[str]:
        if self.encoding == "onehot":
            return [f"{self.field}={s}" for s in self.symbols]
        if self.length:
            return [f"{self.field}[{i}]" for i in range(self.length)]
        return [self.field]


class OutputSpec(BaseModel):
    """How output tensors become Prediction fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tensor: str = "probabilities"  # output tensor holding per-class scores
    score_index: int = 1  # which column is "the" score (e.g. P(fraud))
    labels: tuple[str, ...] = ("legit", "fraud")
    threshold: float = 0.5  # label = labels[1] when score >= threshold (binary models)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    file: str = "model.onnx"
    input_tensor: str = "features"
    inputs: tuple[FeatureSpec, ...]
    outputs: OutputSpec = Field(default_factory=OutputSpec)
    backends: tuple[BackendName, ...] = ("onnxruntime",)
    # Batch-size buckets (TensorRT optimization profiles, CUDA graphs): a batch is padded to
    # the smallest bucket that holds it.
    buckets: tuple[int, ...] = (1, 8, 32, 64, 128, 256)
    reader_schema: str | None = None  # .avsc of the record this model reads
    key_field: str = "account_id"
    id_field: str = "event_id"
    time_field: str = "event_time"
    changelog: str = ""
    features: FeaturesSpec | None = None
    home: Path | None = Field(None, exclude=True)  # directory the spec was loaded from

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not SEMVER.match(v):
            raise ValueError(f"version {v!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return v

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(b < 1 for b in v) or list(v) != sorted(set(v)):
            raise ValueError("buckets must be positive and strictly increasing")
        return v

    @property
    def columns(self) -> list[str]:
        return [c for f in self.inputs for c in f.columns]

    @property
    def n_features(self) -> int:
        return len(self.columns)

    @property
    def model_path(self) -> Path:
        return (self.home or Path(".")) / self.file

    @property
    def reader_schema_path(self) -> Path | None:
        if self.reader_schema is None:
            return None
        return (self.home or Path(".")) / self.reader_schema


def load_model_spec(directory: str | Path) -> ModelSpec:
    """Load ``<directory>/model.yaml``."""
    directory = Path(directory)
    path = directory / "model.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
        return ModelSpec.model_validate({**raw, "home": directory})
    except (OSError, yaml.YAMLError, ValidationError, TypeError) as exc:
        raise ModelError(f"invalid model description {path}: {exc}") from exc
