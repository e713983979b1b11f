"""A real Kafka broker and schema registry on this machine, fetched from Maven Central."""

from streamproc.local.stack import LocalStack, StackInfo, from_environment

__all__ = ["LocalStack", "StackInfo", "from_environment"]
