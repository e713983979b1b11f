"""The pipeline factories (tests/pipeline/conftest.py), for deployment tests on the real stack."""

from tests.pipeline.conftest import (  # noqa: F401  (fixtures, registered by import)
    event_producer_factory,
    pipeline_config_factory,
    processor_factory,
)
