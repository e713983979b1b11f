"""Typed pipeline configuration, split by concern, loaded from one YAML file per pipeline.

Addresses and secrets may be overridden from the environment:
``STREAMPROC_KAFKA_BOOTSTRAP``, ``STREAMPROC_SCHEMA_REGISTRY_URL``,
``STREAMPROC_KAFKA_SASL_PASSWORD``, ``STREAMPROC_SCHEMA_REGISTRY_PASSWORD``,
``STREAMPROC_METRICS_HOST``, ``STREAMPROC_CONTROL_TOPIC`` (:data:`ENV_SETTINGS`).

>>> cfg = PipelineConfig.model_validate({"name": "p", "model": "m", "topics": {"input": "t"}})
>>> cfg.topics.predictions, cfg.batching.max_batch_size, cfg.delivery.guarantee
('t.predictions', 4096, 'at-least-once')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from streamproc.errors import ConfigError
from streamproc.types import Severity


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Strict):
    bootstrap: str = "127.0.0.1:9092"
    client_id: str = "streamproc"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # OAUTHBEARER: "oidc" fetches tokens from an OpenID Connect token endpoint with the client
    # credentials grant (client id and secret, optional scope); "default" makes unsecured
    # tokens from sasl_oauthbearer_config ("principal=NAME ..."), for test brokers only.
    sasl_oauthbearer_method: Literal["default", "oidc"] | None = None
    sasl_oauthbearer_client_id: str | None = None
    sasl_oauthbearer_client_secret: SecretStr | None = None
    sasl_oauthbearer_token_endpoint_url: str | None = None
    sasl_oauthbearer_scope: str | None = None
    sasl_oauthbearer_config: str | None = None
    # TLS (security_protocol SSL or SASL_SSL): PEM files. The CA verifies the brokers; the
    # certificate and key are the client's own, for brokers that require one (mutual TLS).
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    # False turns off the check that a broker's certificate names its host: only for
    # certificates made without the host's name, never across a network one does not own.
    ssl_endpoint_identification: bool = True
    # Failure detection in the processors' consumer group (README.md, "Guarantees";
    # benchmarks/README.md, "Failover after kill -9"). "classic": the client sets the session
    # and heartbeat below, within the broker's group.min.session.timeout.ms; "consumer"
    # (KIP-848, Kafka 4): the broker sets both (group.consumer.session.timeout.ms,
    # group.consumer.heartbeat.interval.ms) and the two fields below are not used.
    group_protocol: Literal["classic", "consumer"] = "classic"
    session_timeout_ms: int = Field(2_000, gt=0)
    heartbeat_interval_ms: int = Field(500, gt=0)
    # Each replica joins as a static member named by its instance id: a replica restarted
    # with the same id takes its partitions back at once, without a rebalance. A stopped
    # static member does not leave the group: its partitions move after the session timeout.
    static_membership: bool = True
    # Passed through to librdkafka unchanged, for settings this model does not name.
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _oauth(self) -> KafkaSettings:
        if self.sasl_oauthbearer_method == "oidc":
            missing = [f"sasl_oauthbearer_{k}" for k in ("client_id", "client_secret",
                                                         "token_endpoint_url")
                       if getattr(self, f"sasl_oauthbearer_{k}") is None]  # fmt: skip
            if missing:
                raise ValueError(f"sasl_oauthbearer_method oidc needs {', '.join(missing)}")
        return self


class RegistrySettings(_Strict):
    url: str = "http://127.0.0.1:8081"
    username: str | None = None
    password: SecretStr | None = None
    ssl_ca_location: Path | None = None  # a PEM CA bundle for an https registry
    # A registry outage is retried with exponential backoff between these bounds; the
    # affected partitions are paused meanwhile, never dead-lettered.
    retry_initial_ms: int = Field(100, gt=0)
    retry_max_ms: int = Field(5_000, gt=0)
    # Per HTTP request. The client's default is none: a registry that accepts the
    # connection and never answers would hold the processor forever instead of counting
    # as an outage.
    request_timeout_s: float = Field(10.0, gt=0)


# "state": a window store's changelog (a model with windowed features); its repartition
# topic is of kind "input", its closed windows' topic of kind "predictions".
TopicKind = Literal[
    "input", "predictions", "dlq", "alerts", "metrics", "control", "feedback", "state"
]
TOPIC_KINDS: tuple[TopicKind, ...] = ("input", "predictions", "dlq", "alerts", "metrics",
                                      "control", "feedback", "state")  # fmt: skip


class TopicPolicy(_Strict):
    """How one kind of topic is made (``streamproc topics apply``, and the processor when it
    creates a missing topic). None leaves a setting to the broker's default
    (``default.replication.factor``, ``min.insync.replicas``, ``log.retention.ms``)."""

    replication_factor: int | None = Field(None, ge=1)
    min_insync_replicas: int | None = Field(None, ge=1)
    retention_ms: int | None = Field(None, ge=-1)  # -1: kept forever
    cleanup_policy: Literal["delete", "compact", "compact,delete"] | None = None
    config: dict[str, str] = Field(default_factory=dict)  # any other topic config, as is

    @model_validator(mode="after")
    def _check(self) -> TopicPolicy:
        rf, isr = self.replication_factor, self.min_insync_replicas
        if rf is not None and isr is not None and isr > rf:
            raise ValueError(f"min_insync_replicas {isr} > replication_factor {rf}: every "
                             "acks=all write would fail")  # fmt: skip
        return self


class TopicPolicies(_Strict):
    """The ``topics.policy`` section: ``default`` for every kind, and per kind the keys that
    differ from it (dead letters are kept 30 days by default: long enough to replay them).

    >>> p = TopicPolicies.model_validate({"default": {"replication_factor": 3},
    ...                                   "dlq": {"min_insync_replicas": 2}})
    >>> d = p.for_kind("dlq")
    >>> d.replication_factor, d.min_insync_replicas, d.retention_ms
    (3, 2, 2592000000)
    >>> p.for_kind("input").retention_ms is None
    True
    """

    default: TopicPolicy = Field(default_factory=TopicPolicy)
    input: TopicPolicy = Field(default_factory=TopicPolicy)
    predictions: TopicPolicy = Field(default_factory=TopicPolicy)  # and the shadow topic
    dlq: TopicPolicy = Field(default_factory=TopicPolicy)
    alerts: TopicPolicy = Field(default_factory=TopicPolicy)
    metrics: TopicPolicy = Field(default_factory=TopicPolicy)
    control: TopicPolicy = Field(default_factory=TopicPolicy)  # and its audit, replicas topics
    feedback: TopicPolicy = Field(default_factory=TopicPolicy)
    state: TopicPolicy = Field(default_factory=TopicPolicy)  # window stores' changelogs

    def for_kind(self, kind: TopicKind) -> TopicPolicy:
        """The kind's own settings, over ``default``'s, over the built-in ones of the kind;
        the ``config`` maps merged the same way."""
        own = getattr(self, kind)
        fields: dict[str, Any] = dict(_KIND_DEFAULTS.get(kind, {}))
        for layer in (self.default, own):
            fields |= {k: getattr(layer, k) for k in layer.model_fields_set if k != "config"}
        fields["config"] = {**self.default.config, **own.config}
        return TopicPolicy.model_validate(fields)  # checks the merged pair


# Built-in policy of a kind, below anything the config sets.
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {"dlq": {"retention_ms": 30 * 86_400_000}}


class TopicSettings(_Strict):
    input: str
    predictions: str = ""
    dlq: str = ""
    metrics: str = "streamproc.metrics"
    alerts: str = "streamproc.alerts"
    shadow: str = ""
    feedback: str | None = None
    control: str = "streamproc.control"
    partitions: int = Field(4, ge=1)  # used when the pipeline creates missing topics
    policy: TopicPolicies = Field(default_factory=TopicPolicies)

    @model_validator(mode="after")
    def _derive(self) -> TopicSettings:
        # Derived names keep one source of truth: the input topic.
        for attr, suffix in (("predictions", "predictions"), ("dlq", "dlq"), ("shadow", "shadow")):
            if not getattr(self, attr):
                object.__setattr__(self, attr, f"{self.input}.{suffix}")
        return self


class BatchSettings(_Strict):
    # With 5 ms windows a batch passes 1024 events only above ~200k events/s (a backlog, a
    # burst); there a larger batch spreads the per-batch costs (consume call, producer
    # requests, commits, metrics) over more events: a backlog drains faster at 4096 than
    # at 1024 (benchmarks/README.md, "Batch size").
    max_batch_size: int = Field(4096, ge=1)
    # The window counts from when the runner last looked for records, so a batch that took
    # longer than this to process leaves the next one due at once. 0 makes every consume's
    # records a batch at once: a lower median latency for a little more CPU, the same p99
    # (benchmarks/README.md, "The batch window and latency" and "The window's start").
    max_wait_ms: float = Field(5.0, ge=0)
    # Release a batch when its oldest event (by event_time) is this old, whatever its size.
    max_event_age_ms: float | None = Field(None, gt=0)


class DeliverySettings(_Strict):
    guarantee: Literal["at-least-once", "exactly-once"] = "at-least-once"
    transactional_id: str | None = None  # exactly-once; defaults to "<group>-<instance>"
    max_message_bytes: int = Field(1_000_000, gt=0)  # larger inputs are dead-lettered
    # at-least-once: at most this often, commit the input offsets of the batches whose
    # outputs are all acknowledged (when the producer's queue is empty; after another interval
    # with a flush). A crash replays the input since the last commit. Longer intervals
    # flush less often and drain faster (benchmarks/README.md, "How the commit protocol
    # learns of delivery").
    commit_interval_ms: float = Field(1000.0, ge=0)
    # Stop and serve acknowledgements while the producer holds more unacknowledged records.
    max_pending: int = Field(100_000, gt=0)
    flush_timeout_s: float = Field(30.0, gt=0)


class DecodingSettings(_Strict):
    # "specialised": each writer schema gets a kernel of its own, compiled in the background
    # while the generic one decodes (streamproc.codecs.specialise); "interpreted": the
    # generic kernel only; "reference": fastavro, event by event (slow; for comparison).
    mode: Literal["specialised", "interpreted", "reference"] = "specialised"
    # Larger programs stay interpreted: compile time grows with them (benchmarks/README.md).
    max_instructions: int = Field(160, ge=0)
    kernel_cache: Path | None = None  # default: $STREAMPROC_KERNEL_CACHE or ~/.cache/...
    # At start-up, wait this long for the kernel of the input subject's latest schema.
    warm_timeout_s: float = Field(60.0, ge=0)


class MetricsSettings(_Strict):
    port: int | None = None  # None: no HTTP endpoint
    host: str = "127.0.0.1"
    snapshot_interval_s: float = Field(10.0, gt=0)


# --------------------------------------------------------------------- drift, alerts, rollout


DetectorName = Literal["cusum", "psi", "ks", "adwin", "kswin", "page_hinkley", "null"]
BinaryDetectorName = Literal["cusum", "ddm", "eddm", "hddm_a", "hddm_w", "fhddm", "adwin", "null"]


class DriftConfig(_Strict):
    """The ``drift:`` section (read by :mod:`streamproc.drift`); the defaults are the one
    default configuration the benchmark measures."""

    enabled: bool = True  # False: every monitor uses NullDetector
    detector: DetectorName = "cusum"  # input and prediction drift
    # System-wide budget: false alarms per million events, summed over all monitored
    # features of one model version. Thresholds are designed for budget * margin so that
    # estimation error in the reference does not push the real rate over the budget.
    false_alarms_per_million: float = Field(1.0, gt=0)
    calibration_margin: float = Field(0.5, gt=0, le=1)
    target_shift_sigma: float = Field(0.5, gt=0)  # mean shift the CUSUMs are tuned for
    target_variance_ratio: float = Field(2.0, gt=1)  # variance increase they are tuned for
    # Share of each feature's budget: (mean up, mean down, variance up).
    arm_weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
    # Hysteresis: a FIRING alert resolves after this many events without a new detection.
    recovery_events: int = Field(2000, ge=1)
    critical_shift_sigma: float = Field(1.0, gt=0)  # estimated shift that makes it CRITICAL
    critical_variance_ratio: float = Field(4.0, gt=1)
    # Reference profile built from the stream when none is stored with the model.
    reference_events: int = Field(10_000, ge=100)
    min_events: int = Field(1_000, ge=20)  # fewest reference rows a monitor accepts
    # Windowed detectors (psi, ks).
    window_events: int = Field(2_000, ge=50)
    psi_bins: int = Field(10, ge=2)
    ks_bins: int = Field(50, ge=2)
    # river detectors: constructor arguments, e.g. {"delta": 0.002} for adwin.
    river_params: dict[str, float | int | str | bool] = Field(default_factory=dict)
    # Prediction (score) drift: its own budget, one stream.
    score_false_alarms_per_million: float = Field(0.1, gt=0)
    # Accuracy drift.
    accuracy_detector: BinaryDetectorName = "cusum"
    accuracy_false_alarms_per_million: float = Field(0.1, gt=0)  # per million labels
    target_error_ratio: float = Field(1.5, gt=1)  # error rate p0 -> p0 * ratio
    reference_error_rate: float | None = Field(None, gt=0, lt=1)
    accuracy_warmup_labels: int = Field(5_000, ge=100)  # estimate p0 when not given
    accuracy_recovery_labels: int = Field(10_000, ge=1)
    label_retention: int = Field(100_000, ge=1)  # the last N predictions, for the label join
    # Data quality (tumbling windows).
    quality_window_events: int = Field(1_000, ge=1)
    quality_ratio: float = Field(3.0, ge=1)  # alert above max(ratio * ref, ref + margin)
    quality_margin: float = Field(0.01, ge=0)
    quality_critical_rate: float = Field(0.2, gt=0, le=1)
    quality_recovery_windows: int = Field(3, ge=1)
    # Input and prediction drift against a reference conditioned on the event time's hour of
    # day ("daily") or hour of the week ("weekly"), stored in the reference profile
    # (streamproc.drift.seasonal); "none": the whole reference, as before.
    seasonality: Literal["none", "daily", "weekly"] = "none"

    @model_validator(mode="after")
    def _check(self) -> DriftConfig:
        if any(w < 0 for w in self.arm_weights) or sum(self.arm_weights) <= 0:
            raise ValueError("arm_weights must be non-negative with a positive sum")
        if self.reference_events < self.min_events:
            raise ValueError("reference_events must be >= min_events")
        return self

    def design_arl(self, n_features: int, budget: float | None = None) -> float:
        """In-control events between false alarms that each feature's detector must reach."""
        b = self.false_alarms_per_million if budget is None else budget
        return 1e6 * max(n_features, 1) / (b * self.calibration_margin)


class AlertRules(_Strict):
    """The ``alerts:`` section: routing rules (streamproc.pipeline.alerting.AlertRouter).

    ``min_severity`` drops quieter alerts from the alerts topic (they are still counted);
    ``webhook`` receives each routed alert as JSON."""

    min_severity: Severity = Severity.INFO
    webhook: str | None = None
    webhook_timeout_s: float = 2.0


class GuardrailThresholds(BaseModel):
    """Limits a candidate must stay within; the defaults are conservative."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_events: int = Field(default=200, ge=1)  # candidate events before error rate is judged
    max_error_rate: float = Field(default=0.01, ge=0, le=1)  # allowed excess over stable
    min_latency_samples: int = Field(default=100, ge=1)
    max_p99_ratio: float = Field(default=1.5, ge=1)
    p99_slack_ms: float = Field(default=5.0, ge=0)
    max_p99_ms: float | None = Field(default=None, gt=0)  # absolute cap, whatever stable does
    min_labels: int = Field(default=100, ge=1)
    max_accuracy_drop: float = Field(default=0.05, ge=0, le=1)
    min_accuracy: float | None = Field(default=None, ge=0, le=1)
    drift_statistic: Literal["psi", "ks"] = "psi"
    min_drift_samples: int = Field(default=200, ge=10)
    max_psi: float = Field(default=0.25, gt=0)
    max_ks: float = Field(default=0.15, gt=0, le=1)

    @classmethod
    def from_mapping(cls, raw: dict[str, object] | None) -> GuardrailThresholds:
        """From a config section; :class:`ConfigError` on an unknown key or bad value."""
        try:
            return cls.model_validate(raw or {})
        except ValidationError as exc:
            raise ConfigError(f"invalid guardrail thresholds: {exc}") from exc


class RolloutSettings(_Strict):
    """The ``rollout:`` section, read by streamproc.pipeline.rollout_scorer.live_guard_settings.

    >>> r = RolloutSettings.model_validate({"guardrails": {"max_error_rate": 0.02}})
    >>> r.guardrails.max_error_rate, sorted(r.guardrails.model_fields_set), r.decide_interval_s
    (0.02, ['max_error_rate'], 1.0)
    """

    # Overrides of the live guard's thresholds, key by key: only the keys given here replace
    # the live defaults (streamproc.pipeline.rollout_scorer.LIVE_THRESHOLDS).
    guardrails: GuardrailThresholds = Field(default_factory=GuardrailThresholds)
    # How often the guard judges the candidate; a number (not a string, not a bool).
    decide_interval_s: float = Field(1.0, gt=0, strict=True)
    # Who may approve and promote (``User:NAME``: the authenticated principal, or an OS user
    # name where the cluster authenticates no one); empty: anyone.
    approvers: list[str] = Field(default_factory=list)

    @field_validator("guardrails", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        return {} if value is None else value  # `guardrails:` with nothing under it


class PersonalDataSettings(_Strict):
    """Fields of the input that hold personal data: a dead letter then never carries the
    event's raw value, and its key is hashed when ``key`` is set (streamproc.personal)."""

    fields: list[str] = Field(default_factory=list)
    key: bool = False  # the record key is personal (the demo keys events by account_id)
    hash_key_env: str = "STREAMPROC_PERSONAL_DATA_KEY"  # the HMAC key's variable


class OutputSettings(_Strict):
    # Predictions carry the model's inputs (a map of column name to value): training data
    # and an audit trail of every decision, at the cost of larger records.
    include_features: bool = False


class OutlierSettings(_Strict):
    """``insight.outliers``: per-event outlier scores against the reference profile and an
    alert when their share rises (streamproc.insight.outliers)."""

    enabled: bool = False
    quantile: float = Field(0.99, gt=0.5, lt=1)  # an outlier scores above this reference level
    alert_ratio: float = Field(3.0, gt=1)  # alert when the outlier share rises this many times
    false_alarms_per_million: float = Field(1.0, gt=0)
    recovery_events: int = Field(10_000, ge=1)


class ProbingSettings(_Strict):
    """``insight.probing``: keys sending near-duplicate inputs near the decision threshold
    (streamproc.insight.probing)."""

    enabled: bool = False
    band: float = Field(0.1, gt=0)  # |score - threshold| below this is near the threshold
    radius: float = Field(0.25, gt=0)  # RMS distance (robust sigma) of a near-duplicate
    horizon: float = Field(100.0, gt=1)  # the key's requests the suspicious count decays over
    min_suspicious: float = Field(10.0, gt=0)  # decayed count that raises the alert
    max_keys: int = Field(100_000, ge=10)  # keys tracked at most (least recently seen evicted)


class ExplanationSettings(_Strict):
    """``insight.explanations``: sampled attributions on a side topic, computed off the hot
    path (streamproc.insight.explain); at most once."""

    enabled: bool = False
    topic: str = ""  # default "<input>.explanations"
    share: float = Field(0.0, ge=0, le=1)  # a random share of the predictions
    min_score: float | None = None  # and every prediction scoring at least this
    keys: list[str] = Field(default_factory=list)  # and every prediction for these keys
    # auto: DeepSHAP where the model is a chain network the torch extra rebuilds (exact
    # additivity, no model calls), else Kernel SHAP (any backend)
    method: Literal["auto", "deep_shap", "kernel_shap", "integrated_gradients"] = "auto"
    backend: str = "onnxruntime"  # the explainer's own model instance (kernel_shap)
    background_rows: int = Field(16, ge=1)
    samples: int = Field(512, ge=8)  # Kernel SHAP coalitions
    queue_size: int = Field(1_024, ge=1)  # requests waiting; more are dropped and counted
    batch: int = Field(256, ge=1)  # events explained together (one call of the explainer)
    max_cpu_share: float = Field(0.25, gt=0, le=1)  # of one core, for the explainer thread
    # The explainer thread's nice value (Linux; 0: the pipeline's own priority). At 19 it
    # takes CPU time the pipeline's thread leaves, next to nothing of what it wants.
    nice: int = Field(19, ge=0, le=19)
    # Where the explainer runs: a child process (its own interpreter: the pipeline's thread
    # never waits for the GIL on its account) or a thread of the pipeline's process.
    isolation: Literal["process", "thread"] = "process"
    # process: how long the child lets requests gather before it explains them together
    linger_ms: float = Field(50.0, ge=0, le=10_000)


class InsightSettings(_Strict):
    """The ``insight:`` section: outliers, probing and explanations, each off by default."""

    outliers: OutlierSettings = Field(default_factory=OutlierSettings)
    probing: ProbingSettings = Field(default_factory=ProbingSettings)
    explanations: ExplanationSettings = Field(default_factory=ExplanationSettings)


class ServingTenant(_Strict):
    """One client of ``streamproc serve``: its API key (or bearer token) and rate limit.
    The key comes from exactly one of ``key`` (in the file: for tests), ``key_env`` (an
    environment variable) or ``key_file`` (a file holding it, e.g. a mounted secret)."""

    name: str
    key: SecretStr | None = None
    key_env: str | None = None
    key_file: Path | None = None
    rate_per_s: float | None = Field(None, gt=0)  # requests per second; None: unlimited
    burst: int | None = Field(None, ge=1)  # bucket size; default: max(1, rate_per_s)

    @model_validator(mode="after")
    def _one_key(self) -> ServingTenant:
        given = [k for k in ("key", "key_env", "key_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"tenant {self.name!r}: give exactly one of key, key_env, key_file")
        return self


class CacheSettings(_Strict):
    """The prediction cache (streamproc.serving.cache): off unless enabled."""

    enabled: bool = False
    max_entries: int = Field(100_000, ge=1)
    max_bytes: int = Field(64 * 2**20, ge=1)  # keys' input bytes + scores + overhead
    ttl_s: float = Field(60.0, gt=0)


class ServingSettings(_Strict):
    """The ``serving:`` section, read by ``streamproc serve`` (streamproc.serving)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Rows accepted but not yet answered (waiting, batched or scoring); a request that would
    # pass it gets 503 with Retry-After instead of queueing.
    max_queue_rows: int = Field(16_384, ge=1)
    max_request_rows: int = Field(4096, ge=1)
    max_body_bytes: int = Field(16 * 2**20, ge=1)  # a larger request body gets 413
    retry_after_s: int = Field(1, ge=1)  # the Retry-After of a 503
    # None: the pipeline's batching section (the stream's window policy).
    batching: BatchSettings | None = None
    tenants: list[ServingTenant] = Field(default_factory=list)  # empty: no authentication
    cache: CacheSettings = Field(default_factory=CacheSettings)


class TenantSettings(_Strict):
    """One tenant: the principal (``User:NAME``) and/or client id its clients connect with,
    and the Kafka client quotas on them (``streamproc quotas apply``); a rate left out has
    no quota of its own (an existing one is removed)."""

    name: str
    principal: str | None = None
    client_id: str | None = None
    producer_byte_rate: int | None = Field(None, gt=0)  # bytes/s, per broker
    consumer_byte_rate: int | None = Field(None, gt=0)
    request_percentage: float | None = Field(None, gt=0)  # of one request thread, per broker

    @model_validator(mode="after")
    def _check(self) -> TenantSettings:
        if not self.principal and not self.client_id:
            raise ValueError(f"tenant {self.name}: give principal (User:NAME) or client_id")
        if self.principal and not self.principal.startswith("User:"):
            raise ValueError(f"tenant {self.name}: principal must be User:NAME")
        return self


class PipelineConfig(_Strict):
    name: str
    model: str  # a model directory (model.yaml + model file), relative to the config file
    group_id: str = ""
    instance_id: str = ""
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    topics: TopicSettings
    batching: BatchSettings = Field(default_factory=BatchSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    decoding: DecodingSettings = Field(default_factory=DecodingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    alerts: AlertRules = Field(default_factory=AlertRules)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    personal_data: PersonalDataSettings = Field(default_factory=PersonalDataSettings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)
    insight: InsightSettings = Field(default_factory=InsightSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    # The input field that names an event's tenant: the processor counts events per tenant
    # (streamproc_tenant_events_total). ``tenants`` lists their quotas.
    tenant_field: str | None = None
    tenants: list[TenantSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _defaults(self) -> PipelineConfig:
        if not self.group_id:
            object.__setattr__(self, "group_id", f"streamproc-{self.name}")
        return self

    def with_overrides(self, **changes: Any) -> PipelineConfig:
        """A copy with top-level sections replaced (``kafka=..., batching=...``)."""
        return self.model_copy(update=changes)

    @property
    def explanations_topic(self) -> str:
        """Where ``insight.explanations`` go (default ``<input>.explanations``)."""
        return self.insight.explanations.topic or f"{self.topics.input}.explanations"


# Every setting the environment may give, as (variable, section, key). The CLI's resolver
# (streamproc.cli.resolve) reads the same table to say where each effective value came from.
ENV_SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("STREAMPROC_KAFKA_BOOTSTRAP", "kafka", "bootstrap"),
    ("STREAMPROC_KAFKA_SASL_PASSWORD", "kafka", "sasl_password"),
    ("STREAMPROC_KAFKA_OAUTH_CLIENT_SECRET", "kafka", "sasl_oauthbearer_client_secret"),
    ("STREAMPROC_SCHEMA_REGISTRY_URL", "registry", "url"),
    ("STREAMPROC_SCHEMA_REGISTRY_PASSWORD", "registry", "password"),
    ("STREAMPROC_METRICS_HOST", "metrics", "host"),
    ("STREAMPROC_CONTROL_TOPIC", "topics", "control"),
)


def _env_overrides(raw: dict[str, Any], env: os._Environ[str] | dict[str, str]) -> None:
    for var, section, key in ENV_SETTINGS:
        if env.get(var):
            raw.setdefault(section, {})[key] = env[var]


def read_raw(path: str | Path) -> dict[str, Any]:
    """The pipeline file as a mapping, before validation; the model path is made absolute
    (relative to the file). Nothing from the environment is in it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read pipeline config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if "model" in raw and not Path(str(raw["model"])).is_absolute():
        raw["model"] = str((path.parent / str(raw["model"])).resolve())
    return raw


def validate(raw: dict[str, Any], origin: str) -> PipelineConfig:
    """A :class:`PipelineConfig` from a raw mapping; errors name ``origin`` and the key path."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"{origin}: {problems}") from exc


def load_config(path: str | Path, env: dict[str, str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML file; the model path is resolved relative to it, and the
    environment variables of :data:`ENV_SETTINGS` override the file."""
    raw = read_raw(path)
    _env_overrides(raw, os.environ if env is None else env)
    return validate(raw, str(path))
