"""One exception tree for the whole project.

Every error that streamproc raises derives from :class:`StreamprocError`; errors from
third-party libraries are wrapped with ``raise ... from exc`` so the original stays
attached, and errors about a Kafka record carry its topic, partition and offset::

    StreamprocError
    ├── ConfigError                  bad or missing configuration
    ├── DependencyMissingError       an optional extra is not installed (names the install)
    ├── LocalStackError              the local Kafka / registry could not start or stop
    │   ├── JavaNotFoundError
    │   ├── ArtifactFetchError       Maven Central unreachable with an empty cache
    │   └── ServiceStartError        a service died at start (last log lines attached)
    ├── KafkaError                   a broker call failed (topic/partition/offset attached)
    │   └── DeliveryError            a produced record was not acknowledged
    ├── SchemaRegistryError          the registry failed or refused a request
    │   └── RegistryUnavailableError transient: retried with backoff, never a dead letter
    ├── CodecError                   one event could not be decoded (carries a ReasonCode)
    ├── ModelError                   a model could not be loaded or configured
    │   └── BackendUnavailableError  the requested inference backend cannot run here
    └── DeploymentError              an invalid rollout command or state

>>> try:
...     raise DeliveryError("timed out", topic="t", partition=0, offset=5)
... except KafkaError as exc:
...     print(exc)
timed out [topic=t partition=0 offset=5]
"""

from __future__ import annotations


class StreamprocError(Exception):
    """Root of every error raised by streamproc."""


class ConfigError(StreamprocError):
    """A configuration file or value is invalid."""


class DependencyMissingError(StreamprocError):
    """A dependency is missing; the message names the extra of pyproject.toml to install
    (``extra`` None: a core dependency, which a plain install of streamproc brings)."""

    def __init__(self, module: str, extra: str | None) -> None:
        self.module = module
        self.extra = extra
        where = f"'streamproc[{extra}]'" if extra else "streamproc (a core dependency)"
        super().__init__(f"{module} is not installed; install it with: pip install {where}")


class LocalStackError(StreamprocError):
    """The local Kafka broker or schema registry could not be started or stopped."""


class JavaNotFoundError(LocalStackError):
    """No suitable ``java`` executable was found."""


class ArtifactFetchError(LocalStackError):
    """Jars could not be fetched from Maven Central and none are cached."""


class ServiceStartError(LocalStackError):
    """A service exited or never became ready; the message ends with its last log lines."""


class _RecordError(StreamprocError):
    """An error about a position in a Kafka topic."""

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        where = " ".join(
            f"{k}={v}"
            for k, v in (("topic", topic), ("partition", partition), ("offset", offset))
            if v is not None
        )
        super().__init__(f"{message} [{where}]" if where else message)


class KafkaError(_RecordError):
    """A Kafka client call failed."""


class DeliveryError(KafkaError):
    """A produced record was not acknowledged by the broker."""


class SchemaRegistryError(StreamprocError):
    """The schema registry refused or failed a request."""


class RegistryUnavailableError(SchemaRegistryError):
    """The registry could not be reached; transient, retried with backoff.

    Raised out of a batch decode, it names the writer schema ids it could not look up
    (``schema_ids``) and the batch's rows that need them (``rows``); None: the whole batch.
    """

    def __init__(
        self,
        message: str,
        *,
        schema_ids: tuple[int, ...] = (),
        rows: list[int] | None = None,
    ) -> None:
        self.schema_ids = schema_ids
        self.rows = rows
        super().__init__(message)


class CodecError(_RecordError):
    """One event could not be decoded; ``reason`` is a :class:`streamproc.types.ReasonCode`."""

    def __init__(self, reason: str, detail: str, **where: int | str | None) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}", **where)  # type: ignore[arg-type]


class ModelError(StreamprocError):
    """A model could not be loaded, validated or run."""


class BackendUnavailableError(ModelError):
    """The requested inference backend cannot run on this machine."""


class DeploymentError(StreamprocError):
    """A deployment command is invalid for the current deployment state."""
