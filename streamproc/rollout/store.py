"""Where deployment states live: the :class:`ControlStore` interface and an in-memory store.

Production uses the compacted Kafka control topic (``streamproc.kafka.control``); the
in-memory store keeps the same semantics for tests and local tools: every published state
goes through the control-record encoding, ``latest`` is the highest revision, and a
publish that does not advance the revision is refused.

>>> from streamproc.rollout.state import Deploy
>>> store = InMemoryControlStore()
>>> s = execute(store, Deploy("fraud", "1.0.0", at_ms=1))
>>> store.latest("fraud").stable, [h.revision for h in store.history("fraud")], store.names()
('1.0.0', [1], ['fraud'])
"""

from __future__ import annotations

from typing import Protocol

from streamproc.errors import DeploymentError
from streamproc.rollout.replicas import ReplicaStatus
from streamproc.rollout.state import DeploymentCommand, DeploymentState, apply, decode, encode

AUDIT_SUFFIX = ".audit"


def audit_topic(control_topic: str) -> str:
    """The append-only audit topic beside a control topic: every published state, kept.

    Compaction keeps only the newest snapshot per model on the control topic; the audit
    topic (``cleanup.policy=delete``, ``retention.ms=-1``) keeps them all, so the history
    of a deployment (who did what, when and why) survives compaction.

    >>> audit_topic("streamproc.control")
    'streamproc.control.audit'
    """
    return control_topic + AUDIT_SUFFIX


class ControlStore(Protocol):
    """Read and append deployment states (one full snapshot per record, keyed by model)."""

    def latest(self, name: str) -> DeploymentState | None:
        """The state with the highest revision, or None when the model was never deployed."""
        ...

    def history(self, name: str) -> list[DeploymentState]:
        """Every state still stored for the model, in ascending revision."""
        ...

    def publish(self, state: DeploymentState) -> None:
        """Append a state. May raise :class:`DeploymentError` if it is known to be stale."""
        ...

    def names(self) -> list[str]:
        """Every model with a stored state, sorted."""
        ...

    def replicas(self) -> list[ReplicaStatus]:
        """What each running replica reports it serves (see
        :mod:`streamproc.rollout.replicas`); a store that hears no replicas has none."""
        return []


def execute(store: ControlStore, command: DeploymentCommand) -> DeploymentState:
    """Apply ``command`` to the latest state and publish the result; return it."""
    state = apply(store.latest(command.model), command)
    store.publish(state)
    return state


class InMemoryControlStore(ControlStore):
    """A :class:`ControlStore` in a dict; states round-trip through the record encoding.
    Tests add replica reports to :attr:`reports`."""

    def __init__(self) -> None:
        self._records: dict[str, list[bytes]] = {}
        self.reports: list[ReplicaStatus] = []

    def latest(self, name: str) -> DeploymentState | None:
        records = self._records.get(name)
        return decode(records[-1]) if records else None

    def history(self, name: str) -> list[DeploymentState]:
        return [decode(r) for r in self._records.get(name, [])]

    def publish(self, state: DeploymentState) -> None:
        current = self.latest(state.model)
        if current is not None and state.revision <= current.revision:
            raise DeploymentError(
                f"{state.model}: revision {state.revision} is stale "
                f"(the store holds revision {current.revision})"
            )
        self._records.setdefault(state.model, []).append(encode(state))

    def names(self) -> list[str]:
        return sorted(self._records)

    def replicas(self) -> list[ReplicaStatus]:
        return list(self.reports)
