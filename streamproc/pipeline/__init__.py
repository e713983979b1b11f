"""The pipeline: decode -> validate -> score -> encode, wired onto the Kafka runner."""
