"""Model descriptions: how Avro fields become input columns and outputs become predictions."""

from streamproc.models.spec import FeatureSpec, ModelSpec, OutputSpec, load_model_spec

__all__ = ["FeatureSpec", "ModelSpec", "OutputSpec", "load_model_spec"]
