from tests.pipeline.conftest import (  # noqa: F401  (shared factories)
    event_producer_factory,
    pipeline_config_factory,
    processor_factory,
    read_topic,
)
