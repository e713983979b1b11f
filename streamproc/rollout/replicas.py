"""What each processor replica serves, as it reports it on ``<control topic>.replicas``.

Every replica publishes a :class:`ReplicaStatus` when it applies a deployment state and
then every few seconds (a heartbeat), keyed by ``<model>/<instance>`` on a compacted topic;
a replica that stops cleanly publishes a tombstone. ``streamproc status`` reads them, so an
operator sees what is actually served, not only what was asked for.

>>> from streamproc.rollout.state import Deploy, apply
>>> s = apply(None, Deploy("fraud", "1.0.0", at_ms=1_000))
>>> r = ReplicaStatus.of(s, s, pipeline="fraud", instance="replica-1", applied_ms=1_500,
...                     at_ms=2_000)
>>> decode(encode(r)) == r, r.key
(True, b'fraud/replica-1')
>>> r.describe(now_ms=4_000, stale_after_ms=15_000)
'replica-1: serving revision 1 (stable 1.0.0), seen 2s ago'
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from streamproc.errors import DeploymentError
from streamproc.rollout.state import DeploymentState

REPLICAS_SUFFIX = ".replicas"
REPLICAS_TOPIC_CONFIG = {"cleanup.policy": "compact"}


def replicas_topic(control_topic: str) -> str:
    return control_topic + REPLICAS_SUFFIX


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replica's report: the state it routes by and the state it was asked to apply
    (they differ when a candidate failed to load there)."""

    model: str
    pipeline: str
    instance: str
    revision: int  # of the state as published
    stable: str | None
    candidate: str | None  # serving traffic now (None: stable serves everything)
    candidate_percent: float
    shadow: bool
    requested_candidate: str | None  # what the published state asked for
    applied_ms: int  # when this replica switched to the revision it serves
    updated_ms: int  # when this report was made

    @classmethod
    def of(
        cls,
        serving: DeploymentState,
        requested: DeploymentState,
        *,
        pipeline: str,
        instance: str,
        applied_ms: int,
        at_ms: int,
    ) -> ReplicaStatus:
        return cls(
            model=serving.model,
            pipeline=pipeline,
            instance=instance,
            revision=requested.revision,
            stable=serving.stable,
            candidate=serving.candidate if serving.in_progress else None,
            candidate_percent=serving.candidate_percent,
            shadow=serving.shadow,
            requested_candidate=requested.candidate if requested.in_progress else None,
            applied_ms=applied_ms,
            updated_ms=at_ms,
        )

    @property
    def key(self) -> bytes:
        return f"{self.model}/{self.instance}".encode()

    def serving(self) -> str:
        """What this replica serves, in words."""
        if self.candidate is None:
            text = f"stable {self.stable}"
        elif self.shadow:
            text = f"stable {self.stable}, shadow {self.candidate}"
        else:
            text = f"stable {self.stable}, {self.candidate} at {self.candidate_percent:g}%"
        if self.requested_candidate and self.requested_candidate != self.candidate:
            text += f"; {self.requested_candidate} failed to load here"
        return text

    def describe(self, now_ms: int, stale_after_ms: int) -> str:
        age_s = max(0, now_ms - self.updated_ms) // 1000
        seen = f"seen {age_s}s ago"
        if now_ms - self.updated_ms > stale_after_ms:
            seen = f"SILENT for {age_s}s (stopped or stuck?)"
        return f"{self.instance}: serving revision {self.revision} ({self.serving()}), {seen}"


def encode(status: ReplicaStatus) -> bytes:
    return json.dumps(asdict(status), sort_keys=True, separators=(",", ":")).encode()


def decode(value: bytes) -> ReplicaStatus:
    try:
        data = json.loads(value)
        return ReplicaStatus(**data)
    except (ValueError, TypeError) as exc:
        raise DeploymentError(f"invalid replica report: {exc}") from exc
